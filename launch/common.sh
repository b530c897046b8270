# shellcheck shell=bash
# Shared by the launch/ scripts, which source it: messages, quoting, --dry-run, flag parsing.

PROG=${0##*/}
# shellcheck disable=SC2034  # ROOT: used by the scripts that source this file
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0

die() { echo "$PROG: error: $*" >&2; exit 2; }   # bad usage: one line, exit status 2
log() { echo "$PROG: $*" >&2; }

# The comment block under the #! line of the running script, without the '# '.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# $1 as one word that a POSIX shell reads back unchanged: as it is when it is plain,
# else in single quotes (a ' inside becomes '\''). Unlike printf %q, the same on every bash.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

quote() {  # all arguments, each as q prints it, joined by spaces
  local words=() word
  for word in "$@"; do words+=("$(q "$word")"); done
  printf '%s' "${words[*]}"
}

run() {  # runs a command, or under --dry-run prints it on one line
  if (( DRY_RUN )); then quote "$@"; echo; else "$@"; fi
}

# Sets ARGS to the arguments with every --flag=value split into --flag value, up to a
# lone --; --config.FIELD=VALUE overrides (a dot in the name) stay whole.
split_flags() {
  ARGS=()
  while (( $# )); do
    if [[ $1 == -- ]]; then ARGS+=("$@"); return; fi
    if [[ $1 =~ ^(--[a-z][a-z-]*)=(.*)$ ]]; then ARGS+=("${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
    else ARGS+=("$1"); fi
    shift
  done
}

value() {  # value FLAG NEXT: prints NEXT, the flag's value, or exits 2 when it has none
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"
  printf '%s' "$2"
}

count() {  # count FLAG NEXT: as value, for a whole number
  [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "$1 needs a whole number"
  printf '%s' "$2"
}

require() {  # require VAR...: exits 2 naming --var when one is empty (CMD: the subcommand)
  local var
  for var in "$@"; do
    [[ -n ${!var} ]] || die "--${var//_/-} is required${CMD:+ for $CMD} (see --help)"
  done
}
