#!/usr/bin/env bash
# Runs a training command, and runs it again when it was stopped by SIGTERM.
#
# Usage: launch/keep_running.sh [--max-failures N] [--delay S] [--status-file F] -- COMMAND [ARG ...]
#
# Used by launch/tpu_vm.sh on every TPU worker and by launch/gpu_host.sh. What it does
# with the exit status of COMMAND (python -m hfc_jax.main ...):
#   0      finished (a finished run returns at once): stop, exit 0
#   2      bad input: stop, exit 2 (the same command would fail the same way)
#   3      training diverged (a non-finite loss or parameter; nothing bad was saved):
#          stop, exit 3 (resuming would diverge again at the same step)
#   130    Ctrl-C: stop, exit 130
#   143    stopped by SIGTERM after saving a checkpoint at the current step: run the
#          same command again at once, which resumes at that step (at most 100 times).
#          But when this loop got the SIGTERM too (the whole process group was
#          signalled: launch/tpu_vm.sh stop, a shutdown, SLURM ending the job), stop
#          and exit 143
#   other  a failure (1: an exception; 137: killed, e.g. out of memory; ...): run it
#          again after --delay seconds (default 60), at most --max-failures times in
#          all (default 2), then exit with that status
#
# --status-file F: write the final exit status to F (launch/tpu_vm.sh watch reads it).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MAX_RESUMES=100
max_failures=2 delay=60 status_file=
split_flags "$@"; set -- "${ARGS[@]}"
while (( $# )); do
  case $1 in
    -h|--help) usage; exit 0;;
    --) shift; break;;
    --max-failures) max_failures=$(count "$@");;
    --delay) delay=$(count "$@");;
    --status-file) status_file=$(value "$@");;
    *) die "unknown flag '$1' (see --help)";;
  esac
  shift 2
done
(( $# )) || die "no command given after -- (see --help)"

say() { echo "keep_running $(date -u +%Y-%m-%dT%H:%M:%SZ): $*" >&2; }

signalled=
trap 'signalled=SIGTERM' TERM
trap 'signalled=SIGINT' INT
resumes=0 failures=0
while :; do
  say "starting: $(quote "$@")"
  "$@" && status=0 || status=$?
  case $status in
    0|2|3|130) break;;
    143)
      [[ -z $signalled ]] || { say "exit status 143 and this loop got $signalled too: stopping"; break; }
      (( resumes++ < MAX_RESUMES )) || { say "resumed $MAX_RESUMES times already: stopping"; break; }
      say "exit status 143 (SIGTERM, checkpoint saved): resuming";;
    *)
      [[ -z $signalled ]] || break
      (( failures++ < max_failures )) || { say "failed $max_failures times already: stopping"; break; }
      say "exit status $status (a failure): retry $failures of $max_failures in ${delay}s"
      sleep "$delay"
      [[ -z $signalled ]] || break;;
  esac
done
say "exit status $status"
if [[ -n $status_file ]]; then echo "$status" > "$status_file"; fi
exit "$status"
