#!/usr/bin/env bash
# hart_jax on a Cloud TPU VM slice: create it, install hart_jax on every
# worker, train on all of them, follow the log, stop, delete.
#
#   launch/tpu_vm.sh --name=my-tpu --type=v4-32 --spot create
#   launch/tpu_vm.sh --name=my-tpu install
#   launch/tpu_vm.sh --name=my-tpu train -- --config=hart_0p7b_256:... --workdir=/mnt/shared/256
#   launch/tpu_vm.sh --name=my-tpu logs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=launch/lib.sh
. "$here/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh [OPTIONS] COMMAND [-- ARGS...]

Commands:
  create           queue the slice (gcloud compute tpus queued-resources create);
                   `status` shows when it is ACTIVE
  status           describe the queued resource
  install          on every worker: a venv with hart_jax[tpu], from a wheel built
                   here (pip wheel, copied with tpu-vm scp) or from --source=git+URL@REF
  train -- FLAGS   on every worker, in the background (nohup), with launch/env.sh:
                   python -m hart_jax.train --multihost FLAGS; one log per worker,
                   ~/DIR/logs/train.HOSTNAME.log
  logs             follow worker 0's log
  run -- COMMAND   run COMMAND on every worker (venv and launch/env.sh), in the foreground
  stop             SIGTERM the training processes: they save the current step and exit
                   (`train` again resumes)
  delete           delete the queued resource and its TPU VM (gcloud asks first)

Options (each also an environment variable; [default]):
  --name=NAME        HART_TPU_NAME     queued resource and TPU VM name [hart-jax]
  --zone=ZONE        HART_TPU_ZONE     [us-central2-b]
  --project=ID       HART_TPU_PROJECT  [gcloud's configured project]
  --type=TYPE        HART_TPU_TYPE     accelerator type [v4-32]
  --runtime=VERSION  HART_TPU_RUNTIME  TPU software version [tpu-ubuntu2204-base]
  --spot             HART_TPU_SPOT=1   spot (preemptible) capacity [0]
  --source=SOURCE    HART_SOURCE       `wheel`: build hart_jax's wheel from this checkout;
                                       or git+URL@REF, a repository the workers can read [wheel]
  --python=PYTHON    HART_TPU_PYTHON   Python (>= 3.11) on the workers, installed with apt
                                       when missing (Ubuntu 22.04 ships 3.10) [python3.11]
  --dir=DIR          HART_TPU_DIR      folder in each worker's home: venv, wheel, logs [hart_jax]
  --dry-run          HART_DRY_RUN=1    print every command instead of running it
  -h, --help

--workdir must be one folder that every worker sees at the same path (an
NFS/Filestore mount, or a bucket mounted with gcsfuse): hart_jax writes with
ordinary file I/O and every host writes its own shards of each checkpoint.
EOF
}

name="${HART_TPU_NAME:-hart-jax}"
zone="${HART_TPU_ZONE:-us-central2-b}"
project="${HART_TPU_PROJECT:-}"
accelerator="${HART_TPU_TYPE:-v4-32}"
runtime="${HART_TPU_RUNTIME:-tpu-ubuntu2204-base}"
spot="${HART_TPU_SPOT:-0}"
pkg_source="${HART_SOURCE:-wheel}"
python="${HART_TPU_PYTHON:-python3.11}"
dir="${HART_TPU_DIR:-hart_jax}"
subcommand=""
while (( $# )); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --type=*) accelerator="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --spot) spot=1 ;;
    --source=*) pkg_source="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dir=*) dir="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$subcommand" ]] || die "unexpected $1 (arguments go after --)"
       subcommand="$1" ;;
  esac
  shift
done
[[ -n "$subcommand" ]] || { usage >&2; exit 2; }
[[ "$pkg_source" == wheel || "$pkg_source" == git+*@* ]] \
  || die "--source must be wheel or git+URL@REF, not $pkg_source"

gcloud_flags=(--zone="$zone")
if [[ -n "$project" ]]; then gcloud_flags+=(--project="$project"); fi

# One shell command for every worker (gcloud runs them in parallel).
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" \
    --worker=all --command="$1"
}

# launch/env.sh as one line, so it travels inside the ssh command (the
# workers never get this checkout).
env_line() {
  grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$here/env.sh" \
    | paste -sd ';' - | sed 's/;/; /g'
}
# The start of every command that runs hart_jax on a worker.
prelude="set -e; cd ~; . $dir/.venv/bin/activate; $(env_line)"
# Per-worker file names: hostnames differ, and a shared home stays safe.
log="$dir/logs/train.\$(hostname)"

case "$subcommand" in
  create)
    flags=(--node-id="$name" "${gcloud_flags[@]}"
           --accelerator-type="$accelerator" --runtime-version="$runtime")
    if (( spot )); then flags+=(--spot); fi
    run gcloud compute tpus queued-resources create "$name" "${flags[@]}"
    ;;
  status)
    run gcloud compute tpus queued-resources describe "$name" \
      "${gcloud_flags[@]}"
    ;;
  install)
    if [[ "$pkg_source" == wheel ]]; then
      version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")"
      [[ -n "$version" ]] || die "no version in pyproject.toml"
      wheel="hart_jax-$version-py3-none-any.whl"
      build="$repo/build/launch_wheel"
      # Only hart_jax's own code: the workers resolve the dependencies.
      run rm -rf "$build"
      run python3 -m pip wheel -q --no-deps --wheel-dir="$build" "$repo"
      on_workers "cd ~ && mkdir -p $dir/dist && rm -f $dir/dist/*.whl"
      run gcloud compute tpus tpu-vm scp "$build/$wheel" "$name:$dir/dist/" \
        "${gcloud_flags[@]}" --worker=all
      spec="$dir/dist/${wheel}[tpu]"
    else
      spec="hart_jax[tpu] @ $pkg_source"
    fi
    get_python="command -v $python >/dev/null || { sudo apt-get update -q"
    get_python+=" && sudo apt-get install -y -q $python $python-venv; }"
    venv="$python -m venv $dir/.venv; . $dir/.venv/bin/activate"
    # Uninstall first: pip keeps an installed hart_jax of the same version.
    pip="pip install -q -U pip; pip uninstall -q -y hart_jax"
    on_workers "set -e; cd ~; $get_python; $venv; $pip; pip install -q $(quote_cmd "$spec")"
    ;;
  train)
    (( $# )) || die "train needs hart_jax.train's flags after --" \
      "(-- --config=NAME --workdir=DIR)"
    busy="if [ -f $log.pid ] && kill -0 \"\$(cat $log.pid)\" 2>/dev/null;"
    busy+=" then echo \"\$(hostname): already training\"; exit 1; fi"
    # All three streams redirected: the ssh session then ends at once and
    # the run outlives it.
    start="nohup python -m hart_jax.train --multihost $(quote_cmd "$@")"
    start+=" > $log.log 2>&1 < /dev/null & echo \$! > $log.pid"
    on_workers "$prelude; mkdir -p $dir/logs; $busy; $start; echo \"\$(hostname): started, log ~/$log.log\""
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" \
      --worker=0 --command="cd ~ && tail -n 100 -F $log.log"
    ;;
  run)
    (( $# )) || die "run needs a command after --"
    on_workers "$prelude; $(quote_cmd "$@")"
    ;;
  stop)
    stop="if [ -f $log.pid ] && kill -TERM \"\$(cat $log.pid)\" 2>/dev/null;"
    stop+=" then echo \"\$(hostname): stopping (saves first)\";"
    stop+=" else echo \"\$(hostname): not training\"; fi"
    on_workers "cd ~; $stop"
    ;;
  delete)
    run gcloud compute tpus queued-resources delete "$name" \
      "${gcloud_flags[@]}" --force
    ;;
  *) die "unknown command $subcommand (see --help)" ;;
esac
