"""A run's life beyond the happy path: damaged checkpoints, a full disk,
Ctrl-C and SIGTERM, a finished run started again.

All with configs/tiny.py (1 device). The in-process runs go through
`trainer.train_and_evaluate`; the signal tests run the CLI as a user does.
"""

import contextlib
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from configs import tiny
from hart_jax import checkpointing
from hart_jax import trainer
from hart_jax.errors import CheckpointError
from tests.test_bad_input import tree_hashes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(steps, ckpt_every):
  config = tiny.get_config(f"stage=hart,steps={steps}")
  with config.unlocked():
    config.mesh.data = 1
    config.sample.every = 0
    config.train.ckpt_every = ckpt_every
  return config


def _damage(workdir, step):
  """Truncates the largest file of a checkpoint's state (its arrays)."""
  files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob(
      "*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:100])


def _steps_logged(workdir):
  return [json.loads(l)["step"] for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit())


def test_damaged_newest_checkpoint_costs_its_steps_once(tmp_path, caplog):
  trainer.train_and_evaluate(_config(6, 2), str(tmp_path))
  assert _checkpoints(tmp_path) == [2, 4, 6]
  _damage(tmp_path, 6)
  trainer.train_and_evaluate(_config(8, 2), str(tmp_path))
  assert "step 6" in caplog.text and "resuming from step 4" in caplog.text
  # Moved aside, not deleted; step 6 was trained and saved again.
  assert (tmp_path / "checkpoints_damaged" / "step_6" / "state").is_dir()
  assert _checkpoints(tmp_path) == [4, 6, 8]
  caplog.clear()
  # The second restart starts from the newest step: nothing lost again.
  trainer.train_and_evaluate(_config(10, 2), str(tmp_path))
  assert "unreadable" not in caplog.text
  assert _steps_logged(tmp_path) == list(range(1, 11))


def test_all_checkpoints_unreadable_stops_unless_told(tmp_path):
  trainer.train_and_evaluate(_config(2, 1), str(tmp_path))
  for step in (1, 2):
    _damage(tmp_path, step)
  # train.log is the run's append-only record: it gains the error.
  before = tree_hashes(tmp_path)
  before.pop("train.log")
  with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be "
                     r"restored: step 2 \(.*\); step 1 \(.*\)"):
    trainer.train_and_evaluate(_config(4, 1), str(tmp_path))
  after = tree_hashes(tmp_path)
  assert "can be restored" in (tmp_path / "train.log").read_text()
  after.pop("train.log")
  assert after == before
  trainer.train_and_evaluate(_config(2, 1), str(tmp_path),
                             discard_unreadable_checkpoints=True)
  assert sorted(p.name for p in (tmp_path / "checkpoints_damaged")
                .iterdir()) == ["step_1", "step_2"]
  assert _checkpoints(tmp_path) == [1, 2]


@contextlib.contextmanager
def _small_disk(path: pathlib.Path, megabytes: int):
  """A tmpfs of `megabytes` at `path`; None where mounting is not allowed."""
  path.mkdir()
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
       str(path)], capture_output=True).returncode == 0
  try:
    yield mounted
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_a_save_is_one_clear_error(tmp_path, monkeypatch):
  """The first checkpoint (14 MB) fits on a 24 MB disk, the second does
  not: one clear error, and the first still restores. Without the right
  to mount, the full disk is simulated at orbax's save."""
  with _small_disk(tmp_path / "disk", 24) as mounted:
    workdir = tmp_path / "disk" / "run"
    if not mounted:
      real_save, calls = ocp.CheckpointManager.save, []

      def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) > 1:
          raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)
      monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointError, match=r"disk full while .* the "
                       r"earlier ones \(2\) are intact"):
      trainer.train_and_evaluate(_config(4, 2), str(workdir))
    monkeypatch.undo()
    step, items = checkpointing.read_state_items(str(workdir), ("step",))
    assert step == 2 and int(items["step"]) == 2


def _cli(workdir, steps):
  return [sys.executable, "-m", "hart_jax.train",
          f"--config=tiny:stage=hart,steps={steps}", f"--workdir={workdir}",
          "--config.train.ckpt_every=1000", "--config.train.log_every=1",
          "--config.sample.every=0"]


def _stop_mid_run(workdir, steps, sig):
  """Starts the CLI, signals it after 10 logged steps, returns (rc, out,
  err)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(_cli(workdir, steps), env=env, cwd=workdir.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  metrics = workdir / "metrics.jsonl"
  logged = lambda: (len(metrics.read_text().splitlines())
                    if metrics.exists() else 0)
  # 10 steps of this run (a resumed run's file starts with the old rows).
  start = logged()
  while logged() < start + 10:
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def test_ctrl_c_and_sigterm_save_then_resume_without_duplicates(tmp_path):
  workdir = tmp_path / "run"
  rc, out, err = _stop_mid_run(workdir, 2000, signal.SIGINT)
  assert rc == 130, err[-2000:]
  assert "Traceback" not in err + out and "Event loop" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("stopped by SIGINT at step ") and "resume" in last
  stopped_at = int(last.split("at step ")[1].split()[0])
  assert _checkpoints(workdir) == [stopped_at]
  leftovers = [p.name for p in (workdir / "checkpoints").iterdir()
               if "tmp" in p.name]
  assert not leftovers
  # Preemption: SIGTERM saves too, and exits 0 (the scheduler restarts).
  rc, out, err = _stop_mid_run(workdir, 2000, signal.SIGTERM)
  assert rc == 0, err[-2000:]
  assert "resuming from step %d" % stopped_at in out
  stopped_again = int(err.strip().splitlines()[-1].split("at step ")[1]
                      .split()[0])
  assert _checkpoints(workdir)[-1] == stopped_again > stopped_at
  # Finishing: every step logged exactly once across the three runs.
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  total = stopped_again + 3
  done = subprocess.run(_cli(workdir, total), env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert _steps_logged(workdir) == list(range(1, total + 1))
  assert f"done: step {total} of {total}" in done.stdout
  # A finished run says so at once: no compile, no new event file.
  events = sorted(os.listdir(workdir / "tensorboard"))
  again = subprocess.run(_cli(workdir, total), env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0
  assert "already finished" in again.stdout
  assert sorted(os.listdir(workdir / "tensorboard")) == events
