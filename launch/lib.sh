# shellcheck shell=bash
# What the launch scripts share: --dry-run (print each command instead of
# running it) and one-line errors. Sourced, never run.

DRY_RUN="${HART_DRY_RUN:-0}"

# One command as a line that a shell (or Python's shlex.split) reads back
# as the same words: a word with anything but [A-Za-z0-9_./:=@,+%-] is
# single-quoted, so `~`, `$(...)` and globs stay as written.
quote_cmd() {
  local word words=() safe='^[A-Za-z0-9_./:=@,+%-]+$'
  for word in "$@"; do
    if [[ "$word" =~ $safe ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${words[*]}"
}

# Runs a command (in this shell: `run . env.sh` and `run export X=1` work),
# or prints it under --dry-run.
run() {
  if (( DRY_RUN )); then quote_cmd "$@"; else "$@"; fi
}

# Replaces this shell with the command (signals reach it directly).
run_exec() {
  if (( DRY_RUN )); then quote_cmd "$@"; else exec "$@"; fi
}

die() {
  echo "error: $*" >&2
  exit 2
}
