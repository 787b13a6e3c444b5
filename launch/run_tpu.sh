#!/usr/bin/env bash
# Runs one hart_jax command on every worker of a TPU VM slice.
#
#   launch/run_tpu.sh TPU_NAME ZONE -- python -m hart_jax.tokenize --help
#
# Copies this checkout to each worker, installs it (pinned stack, TPU jax),
# sources launch/env.sh and runs the command from the checkout's root.
set -euo pipefail
if [[ $# -lt 4 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 3
repo="$(cd "$(dirname "$0")/.." && pwd)"
remote_dir="hart_jax"

gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all \
  "$repo" "$tpu:~/$remote_dir"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "
  set -e
  cd ~/$remote_dir
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]==0.10.2'
  . launch/env.sh
  $(printf '%q ' "$@")
"
