"""Two processes (4 CPU devices each, gloo collectives) train like one,
started through the SLURM launch script's local mode.

The reference runs in this process on 8 devices: the same stage, and each
step's global batch assembled from the two hosts' data shards in process
order, which is what the two-process run must do.
"""

import os
import pathlib
import signal
import subprocess
import sys

import flax
import jax
import numpy as np

from configs import tiny
from hart_jax import sharding
from hart_jax import trainer
from hart_jax.data import source_from_config
from hart_jax.data.pipeline import global_batch, make_dataset
from hart_jax.stages import hart_stage
from tests.train_test import _final_params

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
MESH = dict(data=2, fsdp=2, tensor=2)


def _two_process_run(workdir):
  """Started as on a cluster: launch/slurm_gpu.sbatch --local 2 gives
  each process the variables srun would, and jax.distributed finds its
  peers from them (gloo collectives on CPU)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             HART_PYTHON=sys.executable,
             # Unoptimised CPU code compiles 3-4x faster; the comparison
             # below holds to 1e-5 either way.
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
             "--xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true",
             # jax writes its compile cache from process 0 only: with a
             # warm cache process 1 lags behind and gloo's first
             # collective times out (30 s).
             JAX_ENABLE_COMPILATION_CACHE="false")
  proc = subprocess.Popen(
      ["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "--local", "2",
       f"--config=tiny:stage=hart,steps={STEPS}", f"--workdir={workdir}",
       "--verbosity=-1", "--config.sample.every=0"]
      + [f"--config.mesh.{k}={v}" for k, v in MESH.items()],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=600)
  finally:
    if proc.poll() is None:  # the wrapper's session: it and its tasks
      os.killpg(proc.pid, signal.SIGKILL)
  out = out.decode()
  assert proc.returncode == 0, out[-3000:]
  assert "(8 cpu devices, 2 processes)" in out
  assert max(int(n) for n in os.listdir(workdir / "checkpoints")) == STEPS


def _one_process_reference():
  config = tiny.get_config(f"stage=hart,steps={STEPS}")
  mesh = sharding.make_mesh(MESH)
  with jax.set_mesh(mesh):
    stage = hart_stage.build(config, mesh, sharding.DEFAULT_RULES,
                             jax.random.key(config.seed))
  source = source_from_config(config.data)
  shards = [iter(make_dataset(source, image_size=config.data.image_size,
                              batch_size=config.train.batch_size // 2,
                              seed=config.seed, shard_index=i,
                              shard_count=2)) for i in range(2)]
  state, compiled = stage.state, None
  for _ in range(STEPS):
    parts = [trainer._numeric(next(it)) for it in shards]  # pylint: disable=protected-access
    batch = global_batch({k: np.concatenate([p[k] for p in parts])
                          for k in parts[0]}, mesh,
                         sharding.batch_sharding(mesh))
    compiled = compiled or trainer.compile_step(stage, state, batch, mesh)
    state, _ = compiled(state, batch, stage.frozen)
  return flax.traverse_util.flatten_dict(jax.device_get(state.params))


def test_two_processes_train_like_one(tmp_path):
  _two_process_run(tmp_path / "run")
  step, got = _final_params(tmp_path / "run")
  assert step == STEPS
  want = _one_process_reference()
  assert set(got) == set(want)
  for path, value in want.items():
    np.testing.assert_allclose(got[path], value, rtol=1e-5, atol=1e-6,
                               err_msg="/".join(path))
