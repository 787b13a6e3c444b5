#!/usr/bin/env bash
# hart_jax on one GPU machine: one process driving all of its GPUs (or
# --gpus), with launch/env.sh's environment.
#
#   launch/gpu_host.sh -- --config=hart_0p7b_256:... --workdir=out/256
#   launch/gpu_host.sh --gpus=0,1 -- --config=tiny:stage=hart --workdir=out/tiny
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/lib.sh
. "$here/lib.sh"

usage() {
  cat <<'EOF_USAGE'
usage: launch/gpu_host.sh [OPTIONS] [--] FLAGS...

Runs python -m hart_jax.train FLAGS in the foreground as one process that
drives every local GPU (jax makes one device per GPU; config.mesh spreads
the run over them). Ctrl-C or SIGTERM saves the current step and stops.

Options (each also an environment variable; [default]):
  --gpus=LIST        HART_GPUS      GPUs to use, as CUDA_VISIBLE_DEVICES (0,1,2,3) [all]
  --python=PYTHON    HART_PYTHON    the Python with hart_jax[cuda] installed [python]
                     JAX_PLATFORMS  [cuda]: a jax without its CUDA plugin stops at once
                                    instead of training on the CPU
  --dry-run          HART_DRY_RUN=1 print every command instead of running it
  -h, --help
EOF_USAGE
}

gpus="${HART_GPUS:-}"
python="${HART_PYTHON:-python}"
while (( $# )); do
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
  shift
done
(( $# )) || die "no flags for hart_jax.train, e.g. -- --config=NAME --workdir=DIR (see --help)"

vars=(JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}")
if [[ -n "$gpus" ]]; then vars+=(CUDA_VISIBLE_DEVICES="$gpus"); fi
run . "$here/env.sh"
run_exec env "${vars[@]}" "$python" -m hart_jax.train "$@"
