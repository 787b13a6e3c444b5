"""Runs `python -m hart_jax.X ...` as a user would, minus the import time.

Each CLI test would spend ~4 s of its few seconds importing jax, flax,
orbax and hart_jax. A zygote process imports them once (without starting
any jax backend) and forks a fresh child per command; the child sets the
command's environment, working directory and argv and runs the module as
`__main__`, exactly as `python -m` does, with stdout and stderr captured
to files. Backends start in the child, so per-command XLA_FLAGS (device
counts) apply.

  result = run_module("hart_jax.train", ["--config=tiny"], cwd, env)
  result.returncode, result.stdout, result.stderr
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[1]

# The zygote: reads one JSON request per line, forks, answers one JSON
# line per request.
_ZYGOTE = r"""
import json, os, runpy, signal, sys, time, traceback
import jax, flax, optax, orbax.checkpoint, grain  # the expensive imports
import hart_jax.trainer, hart_jax.pipeline, hart_jax.interop.official_tokenizer
for line in sys.stdin:
  req = json.loads(line)
  pid = os.fork()
  if pid == 0:
    try:
      os.environ.clear(); os.environ.update(req["env"])
      os.chdir(req["cwd"])
      out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(out, 1); os.dup2(err, 2)
      sys.argv = [req["module"]] + req["args"]
      code = 0
      try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None
                                                          else 1)
        if e.code is not None and not isinstance(e.code, int):
          print(e.code, file=sys.stderr)
      except BaseException:
        traceback.print_exc()
        code = 1
    finally:
      try:
        sys.stdout.flush(); sys.stderr.flush()
      finally:
        os._exit(code if "code" in dir() else 1)
  deadline = time.time() + req["timeout"]
  status = None
  while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      break
    time.sleep(0.02)
  else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
  code = (os.waitstatus_to_exitcode(status) if status is not None
          else -signal.SIGKILL)
  print(json.dumps({"returncode": code}), flush=True)
"""


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str
  stderr: str


class _Zygote:
  def __init__(self):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    self.proc = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env=env, cwd=REPO, text=True)

  def run(self, module, args, cwd, env, timeout) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
      out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
      self.proc.stdin.write(json.dumps(dict(
          module=module, args=list(args), cwd=str(cwd), env=env,
          stdout=out, stderr=err, timeout=timeout)) + "\n")
      self.proc.stdin.flush()
      answer = json.loads(self.proc.stdout.readline())
      with open(out) as f_out, open(err) as f_err:
        return Result(answer["returncode"], f_out.read(), f_err.read())


_zygote: Optional[_Zygote] = None


def run_module(module: str, args, cwd, devices: int = 1,
               timeout: int = 300) -> Result:
  """`python -m module *args` in `cwd` on `devices` CPU devices."""
  global _zygote
  if _zygote is None or _zygote.proc.poll() is not None:
    _zygote = _Zygote()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return _zygote.run(module, args, cwd, env, timeout)
