#!/usr/bin/env bash
# Runs hfc_jax on the GPUs of one host, or of several, and resumes it after SIGTERM.
#
# Usage: launch/gpu_host.sh --config FILE --workdir DIR [flags] [--config.FIELD=VALUE ...] [-- FLAG ...]
#
# One host: every local GPU, data parallel over one mesh axis. Several hosts (one process
# each, joined by --jax_distributed), either
#   under SLURM: --slurm, from a batch script; srun starts one task per node and JAX reads
#   the cluster from SLURM's variables. Save this as run.sbatch and `sbatch run.sbatch`:
#       #!/bin/bash
#       #SBATCH --nodes=2
#       #SBATCH --ntasks-per-node=1
#       #SBATCH --gpus-per-node=8
#       #SBATCH --signal=TERM@120
#       launch/gpu_host.sh --slurm --config=configs/cifar10_resnet18.py --workdir=/shared/runs/r18
#   (the SIGTERM 120 s before the time limit makes every process save a checkpoint and exit
#   143; submit the same script again, or let SLURM requeue it, and it resumes), or
#   by hand: the same command on every host, each with its own --process-id (0 on HOST0):
#       launch/gpu_host.sh --coordinator HOST0:1234 --num-processes 2 --process-id 0 --config=...
#
# Flags:
#   --config FILE          configs/X.py (required)
#   --workdir DIR          run directory, on a shared file system for several hosts (required)
#   --data-dir DIR         tfds data (--config.data.data_dir=DIR)
#   --config.FIELD=VALUE   config overrides; words after -- go to python -m hfc_jax.main too
#   --install              first: PYTHON -m pip install -e '<this checkout>[cuda]'
#   --python PYTHON        the interpreter (default: python)
#   --slurm                srun --ntasks-per-node=1 ... --jax_distributed (inside sbatch/salloc)
#   --coordinator HOST:PORT, --num-processes N, --process-id I   several hosts by hand
#   --max-failures N       retries of an unknown exit status (default 2)
#   --dry-run              print every command, one per line, instead of running it
#   -h, --help             this text
#
# The run goes through launch/keep_running.sh, which runs it again when it exits 143
# (SIGTERM after a checkpoint) and stops on 0, 2 (bad input) and 130 (Ctrl-C).
# XLA_PYTHON_CLIENT_PREALLOCATE=false unless set: XLA takes GPU memory as it needs it
# rather than 75% up front.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config="" workdir="" data_dir="" install=0 python=python slurm=0 coordinator=""
num_processes="" process_id="" max_failures=2
extra=()

parse() {
  split_flags "$@"; set -- "${ARGS[@]}"
  while (( $# )); do
    case $1 in
      -h|--help) usage; exit 0;;
      --dry-run) DRY_RUN=1; shift; continue;;
      --install) install=1; shift; continue;;
      --slurm) slurm=1; shift; continue;;
      --config.*) extra+=("$1"); shift; continue;;
      --) shift; extra+=("$@"); return;;
      --config) config=$(value "$@");;
      --workdir) workdir=$(value "$@");;
      --data-dir) data_dir=$(value "$@");;
      --python) python=$(value "$@");;
      --coordinator) coordinator=$(value "$@");;
      --num-processes) num_processes=$(count "$@");;
      --process-id) process_id=$(count "$@");;
      --max-failures) max_failures=$(count "$@");;
      *) die "unknown flag '$1' (see --help)";;
    esac
    shift 2
  done
}

main() {
  parse "$@"
  require config workdir
  local main=("--config=$config" "--workdir=$workdir") launcher=()
  if [[ -n $data_dir ]]; then main+=("--config.data.data_dir=$data_dir"); fi
  if [[ -n $coordinator$num_processes$process_id ]]; then
    [[ -n $coordinator && -n $num_processes && -n $process_id ]] ||
      die "--coordinator, --num-processes and --process-id go together"
    (( ! slurm )) || die "--slurm and --coordinator exclude each other"
    main=(--jax_distributed "--coordinator_address=$coordinator" "--num_processes=$num_processes"
          "--process_id=$process_id" "${main[@]}")
  elif (( slurm )); then
    [[ -n ${SLURM_JOB_ID:-} ]] ||
      die "--slurm runs inside a SLURM allocation (sbatch or salloc): SLURM_JOB_ID is not set"
    launcher=(srun --ntasks-per-node=1)
    main=(--jax_distributed "${main[@]}")
  fi
  if (( install )); then run "$python" -m pip install -e "${ROOT}[cuda]"; fi
  run env "XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}" "${launcher[@]}" \
    bash "$ROOT/launch/keep_running.sh" --max-failures "$max_failures" -- \
    "$python" -m hfc_jax.main "${main[@]}" "${extra[@]}"
}

main "$@"
