#!/usr/bin/env bash
# Cloud TPU VMs and pod slices for hfc_jax, driven from a workstation with gcloud.
#
# Usage: launch/tpu_vm.sh COMMAND --project P --zone Z --name N [flags] [--config.FIELD=VALUE ...]
#
# Commands:
#   create  create the TPU (with --spot: a Spot queued resource) and wait until it is READY
#   setup   on every worker: uv, a Python 3.11 venv ~/hfc_venv, this checkout's HEAD
#           (git archive) or --repo in ~/hfc_jax, pip install -e '.[tpu,gcs]'
#   run     start --config on every worker (--jax_distributed) in the background, logging to
#           ~/hfc_run/run.log; each worker's launch/keep_running.sh resumes after exit 143
#   watch   keep the run going (Spot): poll every --poll s; when the TPU is PREEMPTED,
#           SUSPENDED, FAILED or missing, delete it, create it, set it up and start the
#           run again (it resumes from its last checkpoint in the bucket); also sets up
#           and starts a run that is not going; ends when the run ends
#   status  the TPU's state, and the run's on worker 0: running, stopped, its exit status,
#           idle (set up, never started) or new (not set up)
#   logs    follow ~/hfc_run/run.log of --worker (default 0)
#   stop    SIGTERM the run on every worker: it saves a checkpoint and exits 143
#   fetch   copy the workdir from the bucket into --dest (default workdirs/<its name>)
#   delete  delete the TPU (with --spot, its queued resource too) and wait until it is gone
#
# Flags (one set serves every command; each uses the ones it needs):
#   --project P            Google Cloud project
#   --zone Z               zone, e.g. us-central2-b
#   --name N               TPU name
#   --accelerator-type T   create, watch: e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16
#   --version V            runtime; default v2-alpha-tpuv5-lite for v5litepod-*, v2-alpha-tpuv5
#                          for v5p-*, v2-alpha-tpuv6e for v6e-*, else tpu-ubuntu2204-base
#   --spot                 Spot capacity through a queued resource; give it to every command
#   --repo URL             setup: git clone URL on the workers instead of copying this checkout
#   --ref REF              setup: the commit to copy or check out (default HEAD)
#   --python V             setup: the venv's Python (default 3.11; the images have 3.10)
#   --config FILE          run, watch: configs/X.py, relative to the repository root
#   --bucket B             run, watch, fetch: workdir gs://B/runs/NAME
#   --workdir DIR          instead of that, e.g. gs://B/runs/r18_seed1
#   --data-dir DIR         run, watch: tfds data, e.g. gs://B/tfds (--config.data.data_dir=DIR)
#   --config.FIELD=VALUE   run, watch: config overrides; words after -- go to main as well
#   --max-failures N       run, watch: retries of an unknown exit status per worker (default 2)
#   --max-restarts N       watch: recoveries (re-create, or set up and start) at most (default 10)
#   --poll S               seconds between state polls (default 60)
#   --timeout S            create, delete: stop waiting after S seconds (default 3600, 0: never)
#   --worker W             logs: the worker (default 0)
#   --dest DIR             fetch: the local copy
#   --dry-run              print every command, one per line, instead of running it
#   -h, --help             this text
#
# Data: the workers read tfds data sets from the bucket. Build them once, on any machine
# with network (TPU workers need not build anything):
#   pip install tensorflow tensorflow-datasets
#   tfds build cifar10 --data_dir=gs://BUCKET/tfds --file_format=array_record
# and pass --data-dir gs://BUCKET/tfds to run or watch.
#
# Example (docs/cloud.md has the whole walk-through):
#   T=(--project my-proj --zone us-central2-b --name hfc-v4 --accelerator-type v4-32 --spot)
#   launch/tpu_vm.sh watch "${T[@]}" --bucket my-bucket --config configs/cifar10_resnet18.py \
#       --data-dir gs://my-bucket/tfds --config.train.epochs=50
#
# Exit status: 0 done; 2 bad flags; 1 a command failed (watch: the run ended with a failure).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

project="" zone="" name="" accelerator_type="" version="" spot=0 repo="" ref="" python=3.11
config="" bucket="" workdir="" data_dir="" max_failures=2 max_restarts=10 poll=60 timeout=3600
worker=0 dest=""
extra=()

# ---- What runs on the workers: code in ~/hfc_jax, venv ~/hfc_venv, run files in ~/hfc_run.
script() {  # joins its arguments with '; ' into one command line
  local out=$1 step
  shift
  for step in "$@"; do out+="; $step"; done
  printf '%s' "$out"
}

# The $(...) in the single-quoted strings below are meant to run on the workers.
# shellcheck disable=SC2016
RUNNING='[ -f ~/hfc_run/pid ] && kill -0 "$(cat ~/hfc_run/pid)" 2>/dev/null'
# The run's state: new (not set up), stopped (by stop), its exit status (the loop writes
# it last), running, or idle (set up, never started).
PROBE=$(script 'if [ ! -f ~/hfc_run/setup_done ]; then echo new' \
  'elif [ -f ~/hfc_run/status ] && [ -f ~/hfc_run/stopped ]; then echo stopped' \
  'elif [ -f ~/hfc_run/status ]; then cat ~/hfc_run/status' "elif $RUNNING; then echo running" \
  'else echo idle' 'fi')
# shellcheck disable=SC2016
STOP=$(script "if $RUNNING; then touch ~/hfc_run/stopped" 'kill -TERM -- "-$(cat ~/hfc_run/pid)"' \
  'echo "stopping the run on $(hostname)"' 'fi')
LOGS='tail -n 100 -F ~/hfc_run/run.log'

setup_script() {  # $1: the commands that put the code into ~/hfc_jax
  local pip='python3 -m pip --version >/dev/null 2>&1 ||'
  pip+=' { sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip; }'
  script 'set -e' "$pip" 'python3 -m pip install --user --quiet --upgrade uv' "$1" 'cd ~/hfc_jax' \
    "[ -x ~/hfc_venv/bin/python ] || python3 -m uv venv --python $(q "$python") ~/hfc_venv" \
    "python3 -m uv pip install --quiet --python ~/hfc_venv/bin/python -e '.[tpu,gcs]'" \
    'mkdir -p ~/hfc_run' 'touch ~/hfc_run/setup_done'
}

start_script() {  # keep_running.sh + main, detached (setsid nohup); its pid in ~/hfc_run/pid
  local main=(--jax_distributed "--config=$config" "--workdir=$workdir") loop
  if [[ -n $data_dir ]]; then main+=("--config.data.data_dir=$data_dir"); fi
  loop="setsid nohup bash launch/keep_running.sh --max-failures $max_failures"
  loop+=" --status-file ~/hfc_run/status -- ~/hfc_venv/bin/python -m hfc_jax.main"
  loop+=" $(quote "${main[@]}" "${extra[@]}") >> ~/hfc_run/run.log 2>&1 < /dev/null &"
  script 'set -e' 'cd ~/hfc_jax' 'mkdir -p ~/hfc_run' \
    "if $RUNNING; then echo \"a run is going on \$(hostname) already\" >&2; exit 1; fi" \
    'rm -f ~/hfc_run/status ~/hfc_run/stopped' "$loop echo \$! > ~/hfc_run/pid"
}

# ---- gcloud
where() { WHERE=("--zone=$zone" "--project=$project"); }
vm() { run gcloud compute tpus tpu-vm "$1" "$name" "${WHERE[@]}" "${@:2}"; }
qr() { run gcloud compute tpus queued-resources "$1" "$name" "${WHERE[@]}" "${@:2}"; }
on_all() { vm ssh --worker=all --command "$1"; }

describe() {  # describe KIND FORMAT HEALTHY: sets STATE (NOT_FOUND, or UNKNOWN if gcloud fails)
  local cmd=(gcloud compute tpus "$1" describe "$name" "${WHERE[@]}" "--format=$2") out
  if (( DRY_RUN )); then quote "${cmd[@]}"; echo; STATE=$3; return 0; fi
  if out=$("${cmd[@]}" 2>&1); then STATE=${out##*$'\n'}
  elif [[ $out == *NOT_FOUND* || $out == *"not found"* ]]; then STATE=NOT_FOUND
  else log "describe failed: ${out##*$'\n'}"; STATE=UNKNOWN; fi
}
describe_qr() { describe queued-resources 'value(state.state)' ACTIVE; }
describe_vm() { describe tpu-vm 'value(state)' READY; }

# STATE: the TPU VM's (READY, PREEMPTED, ...); with --spot the queued resource's, unless ACTIVE.
tpu_state() {
  if (( spot )); then
    describe_qr
    [[ $STATE == ACTIVE ]] || return 0
  fi
  describe_vm
}

probe() {  # RUN: the run's state on worker 0 (see PROBE), unknown when ssh fails
  local cmd=(gcloud compute tpus tpu-vm ssh "$name" "${WHERE[@]}" --worker=0 --command "$PROBE") out
  if (( DRY_RUN )); then quote "${cmd[@]}"; echo; RUN=running; return 0; fi
  if out=$("${cmd[@]}" 2>/dev/null); then RUN=${out##*$'\n'}; else RUN=unknown; fi
}

wait_ready() {  # polls until READY; returns 1 on a dead state or after --timeout seconds
  local start=$SECONDS last=
  while :; do
    tpu_state
    if [[ $STATE != "$last" ]] && (( ! DRY_RUN )); then log "$name: $STATE"; last=$STATE; fi
    case $STATE in
      READY) return 0;;
      PREEMPTED|TERMINATED|SUSPENDING|SUSPENDED|FAILED|NOT_FOUND) return 1;;
    esac
    if (( timeout && SECONDS - start >= timeout )); then log "not READY after ${timeout}s"; return 1; fi
    sleep "$poll"
  done
}

wait_gone() {  # polls until the TPU (or queued resource) is gone; 1 after --timeout seconds
  local start=$SECONDS
  while :; do
    if (( spot )); then describe_qr; else describe_vm; fi
    if [[ $STATE == NOT_FOUND ]] || (( DRY_RUN )); then return 0; fi
    if (( timeout && SECONDS - start >= timeout )); then log "still there after ${timeout}s"; return 1; fi
    sleep "$poll"
  done
}

# ---- Commands. They return non-zero on failure, so that watch can carry on.
cmd_create() {
  require accelerator_type
  if (( spot )); then
    qr create --node-id="$name" --accelerator-type="$accelerator_type" \
      --runtime-version="${version:-$(default_version)}" --spot || return
  else
    vm create --accelerator-type="$accelerator_type" \
      --version="${version:-$(default_version)}" || return
  fi
  wait_ready || { log "$name did not become READY"; return 1; }
}

default_version() {
  case $accelerator_type in
    v5litepod-*) echo v2-alpha-tpuv5-lite;;
    v5p-*) echo v2-alpha-tpuv5;;
    v6e-*) echo v2-alpha-tpuv6e;;
    *) echo tpu-ubuntu2204-base;;
  esac
}

cmd_setup() {
  if [[ -n $repo ]]; then
    local get
    get="rm -rf ~/hfc_jax && git clone $(q "$repo") ~/hfc_jax"
    if [[ -n $ref ]]; then get+=" && git -C ~/hfc_jax checkout $(q "$ref")"; fi
    on_all "$(setup_script "$get")"
  else
    local tarball=${TMPDIR:-/tmp}/hfc_jax_$name.tar.gz
    if [[ -z $ref ]] && ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then
      log "warning: uncommitted changes are not copied: setup copies HEAD (commit them first)"
    fi
    run git -C "$ROOT" archive --format=tar.gz --output="$tarball" "${ref:-HEAD}" &&
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:hfc_jax.tar.gz" --worker=all "${WHERE[@]}" &&
    on_all "$(setup_script \
      "rm -rf ~/hfc_jax && mkdir ~/hfc_jax && tar -xzf ~/hfc_jax.tar.gz -C ~/hfc_jax")"
  fi
}

cmd_run() { on_all "$(start_script)"; }
cmd_logs() { vm ssh --worker="$worker" --command "$LOGS"; }
cmd_stop() { on_all "$STOP"; }

cmd_delete() {
  if (( spot )); then qr delete --force --quiet || return; else vm delete --quiet || return; fi
  wait_gone
}

cmd_status() {
  tpu_state
  if [[ $STATE == READY ]]; then probe; else RUN=-; fi
  if (( ! DRY_RUN )); then echo "$name: $STATE; run on worker 0: $RUN"; fi
}

cmd_fetch() {
  local to=${dest:-workdirs/${workdir##*/}}
  run mkdir -p "$to"
  run gcloud storage rsync --recursive "$workdir" "$to"
}

recover() {  # re-creates the TPU and starts the run again
  if [[ $STATE != NOT_FOUND ]]; then cmd_delete || return; fi
  cmd_create && cmd_setup && cmd_run
}

cmd_watch() {
  local restarts=0 said=
  require accelerator_type config
  if (( DRY_RUN )); then
    tpu_state; probe; echo "# when $name is preempted or missing:"; recover; return
  fi
  while :; do
    tpu_state
    case $STATE in
      READY)
        probe
        case $RUN in
          running|unknown) ;;
          0) log "the run finished (exit status 0)"; return 0;;
          stopped)
            [[ -n $said ]] || log "the run was stopped (stop): waiting; run starts it again"
            said=1;;
          new|idle|143)  # 143: the loop itself got SIGTERM, e.g. the VM was restarted
            next_restart "the run is not going ($RUN): starting it"
            if [[ $RUN == new ]]; then cmd_setup && cmd_run; else cmd_run; fi || log "starting failed";;
          *) log "the run ended with exit status $RUN; see: launch/tpu_vm.sh logs"; return 1;;
        esac;;
      PREEMPTED|TERMINATED|SUSPENDED|FAILED|NOT_FOUND)
        next_restart "$name is $STATE: re-creating it"
        recover || log "recovery failed; trying again";;
    esac
    sleep "$poll"
  done
}

next_restart() {  # counts one recovery (--max-restarts) and says why
  if (( restarts >= max_restarts )); then
    log "$1, but gave up after $max_restarts restarts (--max-restarts)"
    exit 1
  fi
  restarts=$((restarts + 1))
  log "$1 (restart $restarts of $max_restarts)"
}

# ---- Flags
parse() {
  split_flags "$@"; set -- "${ARGS[@]}"
  while (( $# )); do
    case $1 in
      -h|--help) usage; exit 0;;
      --dry-run) DRY_RUN=1; shift; continue;;
      --spot) spot=1; shift; continue;;
      --config.*) extra+=("$1"); shift; continue;;
      --) shift; extra+=("$@"); return;;
      --project) project=$(value "$@");;
      --zone) zone=$(value "$@");;
      --name) name=$(value "$@");;
      --accelerator-type) accelerator_type=$(value "$@");;
      --version) version=$(value "$@");;
      --repo) repo=$(value "$@");;
      --ref) ref=$(value "$@");;
      --python) python=$(value "$@");;
      --config) config=$(value "$@");;
      --bucket) bucket=$(value "$@");;
      --workdir) workdir=$(value "$@");;
      --data-dir) data_dir=$(value "$@");;
      --max-failures) max_failures=$(count "$@");;
      --max-restarts) max_restarts=$(count "$@");;
      --poll) poll=$(count "$@");;
      --timeout) timeout=$(count "$@");;
      --worker) worker=$(value "$@");;
      --dest) dest=$(value "$@");;
      *) die "unknown flag '$1' (see --help)";;
    esac
    shift 2
  done
}

main() {
  local commands="create, setup, run, watch, status, logs, stop, fetch or delete"
  (( $# )) || die "a command is needed: $commands (see --help)"
  case $1 in
    -h|--help) usage; exit 0;;
    create|setup|run|watch|status|logs|stop|fetch|delete) CMD=$1;;
    *) die "unknown command '$1': $commands (see --help)";;
  esac
  shift
  parse "$@"
  case $CMD in
    fetch) [[ -n $workdir ]] || require name;;
    *) require project zone name;;
  esac
  if [[ $CMD =~ ^(run|watch|fetch)$ ]]; then
    [[ -n $workdir || -n $bucket ]] || die "--bucket or --workdir is required for $CMD (see --help)"
    workdir=${workdir:-gs://${bucket#gs://}/runs/$name}
    workdir=${workdir%/}
  fi
  if [[ $CMD =~ ^(run|watch)$ ]]; then require config; fi
  where
  "cmd_$CMD"
}

main "$@"
