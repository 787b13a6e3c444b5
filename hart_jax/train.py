r"""Training entry point: parses flags, then calls train_and_evaluate.

  python -m hart_jax.train --config=demo --workdir=out/demo
  python -m hart_jax.train --config=tiny:stage=hart --workdir=DIR \
      --config.train.total_steps=100

`--config` is a bundled config's name (configs/NAME.py) or a path to a .py
file, optionally followed by `:ARGS` for its get_config. Re-running with
the same workdir resumes from its newest checkpoint; Ctrl-C (or SIGTERM)
saves the current step first. `--dry_run` checks everything and exits.
"""

from absl import flags
import jax

from hart_jax import cli

_CONFIG = cli.define_config("config", help_text="Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.",
                               required=True)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Check the config, mesh, paths and data, print the "
    "run's header and exit, without compiling or writing anything.")
_DISCARD_UNREADABLE = flags.DEFINE_bool(
    "discard_unreadable_checkpoints", False, "When no checkpoint in the "
    "workdir can be restored, move them to checkpoints_damaged/ and start "
    "from step 0 (without it the run stops and names them).")
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
  del argv
  if _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  # Random numbers do not depend on how arrays are partitioned.
  jax.config.update("jax_threefry_partitionable", True)
  from hart_jax import trainer  # pylint: disable=g-import-not-at-top
  trainer.train_and_evaluate(
      _CONFIG.value, _WORKDIR.value, dry_run=_DRY_RUN.value,
      discard_unreadable_checkpoints=_DISCARD_UNREADABLE.value)


if __name__ == "__main__":
  cli.run(main)
