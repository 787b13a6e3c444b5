r"""Training entry point: parses flags, then calls train_and_evaluate.

  python -m hart_jax.train --config=configs/demo.py --workdir=/tmp/demo
  python -m hart_jax.train --config=configs/tiny.py:stage=hart \
      --workdir=DIR --config.train.total_steps=100

Re-running with the same workdir resumes from its newest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.",
                               required=True)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (TPU pods, GPU "
    "clusters); on a TPU pod or under SLURM it finds its peers itself.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost where the cluster is "
    "not detected: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --coordinator_address: how many processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --coordinator_address: this process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  # Safety rails: every host<->device transfer is explicit, and random
  # numbers do not depend on how arrays are partitioned.
  jax.config.update("jax_threefry_partitionable", True)
  from hart_jax import trainer  # pylint: disable=g-import-not-at-top
  logging.info("config:\n%s", _CONFIG.value)
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
