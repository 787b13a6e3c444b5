"""The launch scripts (launch/): what each prints under --dry-run, that
shellcheck passes on all of them, that the commands sent to TPU workers work
in a shell, and the SLURM path run for real: `slurm_gpu.sbatch --local 2`
starts two processes of 4 CPU devices with the variables srun would set,
and jax.distributed.initialize() finds its peers from those alone.

Nothing here reaches gcloud or SLURM: fake `gcloud`, `srun` and `sbatch`
come first on PATH and fail the test if called.
"""

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from tests.helpers import unavailable
from tests.train_test import _final_params

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
VERSION = re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(),
                    re.M).group(1)
WHEEL = f"hart_jax-{VERSION}-py3-none-any.whl"
ENV_LINES = [l for l in (LAUNCH / "env.sh").read_text().splitlines()
             if l.strip() and not l.lstrip().startswith("#")]


@pytest.fixture(name="env")
def _env(tmp_path):
  """A clean environment (no HART_*/SLURM_* settings) whose PATH starts
  with tools that must never run here."""
  fake_bin = tmp_path / "fake_bin"
  fake_bin.mkdir()
  for tool in ("gcloud", "srun", "sbatch"):
    path = fake_bin / tool
    path.write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/called\nexit 99\n")
    path.chmod(0o755)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("HART_", "SLURM_", "JAX_LOCAL_DEVICE_IDS",
                              "JAX_COORDINATOR", "JAX_PLATFORMS"))}
  env["PATH"] = f"{fake_bin}:{env['PATH']}"
  yield env
  assert not (tmp_path / "called").exists(), (tmp_path / "called").read_text()


def _script(name, *args, env, check=True):
  out = subprocess.run(["bash", str(LAUNCH / name), *args], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       check=False)
  if check:
    assert out.returncode == 0, out.stderr
  return out


def _dry_run(name, *args, env) -> list[list[str]]:
  """The commands the script prints, each split back into its words."""
  out = _script(name, "--dry-run", *args, env=env)
  return [shlex.split(line) for line in out.stdout.splitlines()]


def _ssh(name, worker, command, zone="us-central2-b", extra=()):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name,
          f"--zone={zone}", *extra, f"--worker={worker}",
          f"--command={command}"]


def _check_syntax(*ssh_commands):
  """Worker commands parse in a POSIX shell (a worker's login shell)."""
  for command in ssh_commands:
    remote = command[len("--command="):]
    out = subprocess.run(["sh", "-n", "-c", remote], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, f"{remote}\n{out.stderr}"


# --- tpu_vm.sh --------------------------------------------------------------


def test_tpu_vm_create_queues_a_resource(env):
  env.update(HART_TPU_ZONE="europe-west4-a", HART_TPU_TYPE="v5litepod-16")
  assert _dry_run("tpu_vm.sh", "--name=t1", "--project=p",
                  "--runtime=v2-alpha-tpuv5-lite", "--spot", "create",
                  env=env) == [[
      "gcloud", "compute", "tpus", "queued-resources", "create", "t1",
      "--node-id=t1", "--zone=europe-west4-a", "--project=p",
      "--accelerator-type=v5litepod-16",
      "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]]
  # Defaults, and no --spot unless asked.
  assert _dry_run("tpu_vm.sh", "create", env=env)[0][5:] == [
      "hart-jax", "--node-id=hart-jax", "--zone=europe-west4-a",
      "--accelerator-type=v5litepod-16",
      "--runtime-version=tpu-ubuntu2204-base"]


def test_tpu_vm_status_stop_logs_delete(env):
  q = ["gcloud", "compute", "tpus", "queued-resources"]
  assert _dry_run("tpu_vm.sh", "--name=t1", "status", env=env) == [
      q + ["describe", "t1", "--zone=us-central2-b"]]
  assert _dry_run("tpu_vm.sh", "--name=t1", "delete", env=env) == [
      q + ["delete", "t1", "--zone=us-central2-b", "--force"]]
  [logs] = _dry_run("tpu_vm.sh", "--name=t1", "logs", env=env)
  assert logs == _ssh("t1", 0, "cd ~ && tail -n 100 -F "
                      "hart_jax/logs/train.$(hostname).log")
  [stop] = _dry_run("tpu_vm.sh", "--name=t1", "stop", env=env)
  assert stop[:8] == _ssh("t1", "all", "")[:8]
  assert "kill -TERM" in stop[8]
  _check_syntax(logs[8], stop[8])


def test_tpu_vm_install_copies_a_wheel_not_the_checkout(env, tmp_path):
  cmds = _dry_run("tpu_vm.sh", "--name=t1", "install", env=env)
  build = f"{REPO}/build/launch_wheel"
  assert cmds[:2] == [
      ["rm", "-rf", build],
      ["python3", "-m", "pip", "wheel", "-q", "--no-deps",
       f"--wheel-dir={build}", str(REPO)]]
  assert cmds[3] == [
      "gcloud", "compute", "tpus", "tpu-vm", "scp", f"{build}/{WHEEL}",
      "t1:hart_jax/dist/", "--zone=us-central2-b", "--worker=all"]
  assert cmds[2][:8] == cmds[4][:8] == _ssh("t1", "all", "")[:8]
  install = cmds[4][8]
  _check_syntax(cmds[2][8], install)
  assert f"pip install -q 'hart_jax/dist/{WHEEL}[tpu]'" in install
  assert "python3.11 -m venv hart_jax/.venv" in install
  assert not any("--recurse" in c for c in cmds)
  # The printed build makes exactly the wheel that is copied, and it holds
  # the packages only (no .venv, tests or data).
  subprocess.run(cmds[1][:6] + ["--no-build-isolation",
                                f"--wheel-dir={tmp_path}", str(REPO)],
                 check=True, capture_output=True, timeout=120)
  names = zipfile.ZipFile(tmp_path / WHEEL).namelist()
  assert {n.split("/")[0] for n in names} == {
      "hart_jax", "configs", "pallas_kernels", f"hart_jax-{VERSION}.dist-info"}


def test_tpu_vm_install_from_a_git_ref(env):
  url = "git+https://github.com/example/hart_jax@v0.1.0"
  cmds = _dry_run("tpu_vm.sh", "--name=t1", f"--source={url}", "install",
                  env=env)
  assert len(cmds) == 1 and cmds[0][:8] == _ssh("t1", "all", "")[:8]
  assert f"pip install -q 'hart_jax[tpu] @ {url}'" in cmds[0][8]
  _check_syntax(cmds[0][8])
  assert _script("tpu_vm.sh", "--source=https://x", "install", env=env,
                 check=False).returncode == 2


def _fake_worker(home: pathlib.Path):
  """A worker's home after `install`: a venv whose python records its
  arguments and environment, then waits for SIGTERM."""
  venv_bin = home / "hart_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
  (venv_bin / "python").write_text(
      "#!/usr/bin/env bash\n"
      'printf "%s\\n" "$@" > "$HOME/args"; env > "$HOME/env"\n'
      'sleep 60 & trap \'echo TERM > "$HOME/term"; kill $!; exit 0\' TERM\n'
      "wait\n")
  (venv_bin / "python").chmod(0o755)


def _wait_for(path: pathlib.Path, timeout=20.0):
  deadline = time.time() + timeout
  while not path.exists():
    assert time.time() < deadline, f"{path} never appeared"
    time.sleep(0.1)


def test_tpu_vm_train_runs_in_the_background_with_env_sh(env, tmp_path):
  flags = ["--config=hart_0p7b_256:data=folder:/d", "--workdir=/mnt/runs/a",
           "--config.note=a b"]
  [cmd] = _dry_run("tpu_vm.sh", "--name=t1", "--zone=z", "train", "--",
                   *flags, env=env)
  assert cmd[:8] == _ssh("t1", "all", "", zone="z")[:8]
  remote = cmd[8][len("--command="):]
  for line in ENV_LINES:
    assert line in remote
  assert ("nohup python -m hart_jax.train --multihost "
          + shlex.join(flags) + " > hart_jax/logs/train.$(hostname).log 2>&1"
          " < /dev/null &") in remote

  # What every worker runs, run here in a fake home: it returns at once,
  # leaving the run in the background with its log and pid file.
  home = tmp_path / "home"
  _fake_worker(home)
  worker = dict(env, HOME=str(home))
  worker.pop("JAX_COMPILATION_CACHE_DIR", None)
  host = subprocess.run(["hostname"], capture_output=True, text=True,
                        check=True).stdout.strip()
  pid_file = home / "hart_jax" / "logs" / f"train.{host}.pid"
  try:
    out = subprocess.run(["bash", "-c", remote], env=worker, cwd=tmp_path,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert f"{host}: started" in out.stdout
    _wait_for(home / "env")
    assert (home / "args").read_text().splitlines() == [
        "-m", "hart_jax.train", "--multihost", *flags]
    run_env = (home / "env").read_text()
    assert f"JAX_COMPILATION_CACHE_DIR={home}/.cache/hart_jax/xla" in run_env
    assert "--xla_tpu_enable_async_collective_fusion=true" in run_env
    assert (home / "hart_jax" / "logs" / f"train.{host}.log").exists()
    # A second train on a busy worker is refused.
    again = subprocess.run(["bash", "-c", remote], env=worker, cwd=tmp_path,
                           capture_output=True, text=True, timeout=20)
    assert again.returncode == 1 and "already training" in again.stdout
    # stop sends SIGTERM (the run saves, then exits).
    [stop] = _dry_run("tpu_vm.sh", "stop", env=env)
    out = subprocess.run(["bash", "-c", stop[8][len("--command="):]],
                         env=worker, cwd=tmp_path, capture_output=True,
                         text=True, timeout=20)
    assert f"{host}: stopping" in out.stdout
    _wait_for(home / "term")
  finally:
    if (pid_file.exists() and not (home / "term").exists()
        and pid_file.read_text().strip()):
      os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_tpu_vm_run_and_usage_errors(env):
  [cmd] = _dry_run("tpu_vm.sh", "run", "--", "python", "-m",
                   "hart_jax.tokenize", "--help", env=env)
  assert cmd[8].endswith("; python -m hart_jax.tokenize --help")
  assert ". hart_jax/.venv/bin/activate" in cmd[8]
  for args in (["train"], ["bogus"], ["--nope", "create"], []):
    out = _script("tpu_vm.sh", "--dry-run", *args, env=env, check=False)
    assert out.returncode == 2, args


# --- gpu_host.sh ------------------------------------------------------------


def test_gpu_host_dry_run(env):
  flags = ["--config=hart_0p7b_256", "--workdir=out/256"]
  assert _dry_run("gpu_host.sh", "--gpus=0,1", "--", *flags, env=env) == [
      [".", f"{LAUNCH}/env.sh"],
      ["env", "JAX_PLATFORMS=cuda", "CUDA_VISIBLE_DEVICES=0,1", "python",
       "-m", "hart_jax.train", *flags]]
  env.update(HART_PYTHON="/opt/venv/bin/python", JAX_PLATFORMS="rocm")
  assert _dry_run("gpu_host.sh", *flags, env=env)[1] == [
      "env", "JAX_PLATFORMS=rocm", "/opt/venv/bin/python", "-m",
      "hart_jax.train", *flags]


def test_gpu_host_runs_the_trainer(env, tmp_path):
  """Not a dry run of the script: hart_jax.train's own --dry_run (checks
  config, mesh, paths; compiles nothing) on the CPU."""
  env.update(HART_PYTHON=sys.executable, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  out = _script("gpu_host.sh", "--config=tiny:stage=hart",
                f"--workdir={tmp_path / 'run'}", "--dry_run", env=env)
  assert "hart stage" in out.stdout + out.stderr
  assert not (tmp_path / "run").exists()


# --- slurm_gpu.sbatch -------------------------------------------------------


def test_slurm_sbatch_runs_one_process_per_node_with_srun(env):
  header = re.findall(r"^#SBATCH (\S+)", (LAUNCH / "slurm_gpu.sbatch")
                      .read_text(), re.M)
  assert {"--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"} <= set(
      header)
  env.update(SLURM_JOB_ID="42", SLURM_GPUS_ON_NODE="8",
             SLURM_CPUS_ON_NODE="96")
  flags = ["--config=hart_0p7b_256", "--workdir=/shared/256"]
  assert _dry_run("slurm_gpu.sbatch", *flags, env=env) == [
      [".", f"{LAUNCH}/env.sh"],
      # jax's SLURM detection alone would give each process GPU 0 only.
      ["export", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"],
      ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
       "--cpus-per-task=96", "python", "-m", "hart_jax.train", "--multihost",
       *flags]]
  # An explicit JAX_LOCAL_DEVICE_IDS is kept.
  env.update(JAX_LOCAL_DEVICE_IDS="0,1")
  assert _dry_run("slurm_gpu.sbatch", "--", *flags, env=env)[1][0] == "srun"
  # Outside a job, without --local: one line and status 2.
  out = _script("slurm_gpu.sbatch", *flags, env=dict(
      env, SLURM_JOB_ID=""), check=False)
  assert out.returncode == 2 and "not in a SLURM job" in out.stderr


def test_slurm_local_sets_what_jax_detects(env, monkeypatch):
  from jax._src.clusters import slurm_cluster  # pylint: disable=g-import-not-at-top
  lines = _dry_run("slurm_gpu.sbatch", "--local", "2", "--config=tiny",
                   "--workdir=w", env=env)
  assert lines[0] == [".", f"{LAUNCH}/env.sh"] and lines[-1] == ["wait"]
  tasks = lines[1:-1]
  assert len(tasks) == 2
  for i, task in enumerate(tasks):
    assert task[0] == "env" and task[-1] == "&"
    variables = dict(w.split("=", 1) for w in task[1:] if "=" in w
                     and not w.startswith("-"))
    assert task[len(variables) + 1:-1] == [
        "python", "-m", "hart_jax.train", "--multihost", "--config=tiny",
        "--workdir=w"]
    # jax writes its persistent cache from process 0 only: a warm one
    # would put the others far behind (past gloo's 30 s timeout).
    assert variables["JAX_ENABLE_COMPILATION_CACHE"] == "false"
    for name, value in variables.items():
      monkeypatch.setenv(name, value)
    cluster = slurm_cluster.SlurmCluster
    assert cluster.is_env_present()
    assert cluster.get_process_count() == 2
    assert cluster.get_process_id() == i
    port = variables["JAX_COORDINATOR_PORT"]
    assert cluster.get_coordinator_address(None, port) == f"localhost:{port}"


def test_every_script_has_help(env):
  for script in SCRIPTS:
    if script.name in ("env.sh", "lib.sh"):
      continue
    out = _script(script.name, "--help", env=env)
    assert out.stdout.startswith("usage:"), script.name
    assert "--dry-run" in out.stdout, script.name


def _shellcheck() -> str:
  """The shellcheck binary, installed from Debian when missing."""
  if shutil.which("shellcheck") is None:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for cmd in (["apt-get", "install", "-y", "-q", "shellcheck"],
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "shellcheck"]):
      try:
        subprocess.run(sudo + cmd, capture_output=True, timeout=300,
                       check=False)
      except (OSError, subprocess.TimeoutExpired):
        break
      if shutil.which("shellcheck"):
        break
  path = shutil.which("shellcheck")
  if path is None:
    unavailable("shellcheck is missing and `apt-get install shellcheck` "
                "did not work")
  return path


def test_shellcheck_passes():
  assert {p.name for p in SCRIPTS} >= {
      "env.sh", "lib.sh", "tpu_vm.sh", "gpu_host.sh", "slurm_gpu.sbatch"}
  out = subprocess.run([_shellcheck(), "-x", *map(str, SCRIPTS)], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode == 0, out.stdout + out.stderr
