# Environment for hart_jax on TPU VMs; sourced by run_tpu.sh on every worker.
# One flag per line so a diff shows exactly what changed.

# Compiled programs survive restarts (preemptions re-use them).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/hart_jax/xla}"
# Let XLA overlap collectives with compute on TPU.
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS:-} --xla_tpu_enable_async_collective_fusion=true"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS} --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS} --xla_tpu_overlap_compute_collective_tc=true"
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS} --xla_enable_async_all_gather=true"
