# shellcheck shell=bash
# Environment for hart_jax runs: sourced by gpu_host.sh and slurm_gpu.sbatch,
# and sent inside every worker's command by tpu_vm.sh (so plain lines only:
# one `export` per line, which also makes a diff show exactly what changed).

# Compiled programs survive restarts (preemptions re-use them).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/hart_jax/xla}"
# Let XLA overlap collectives with compute on TPU (libtpu reads these; GPU
# and CPU runs ignore them).
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS:-} --xla_tpu_enable_async_collective_fusion=true"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS} --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS} --xla_tpu_overlap_compute_collective_tc=true"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS} --xla_enable_async_all_gather=true"
