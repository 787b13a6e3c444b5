"""Ctrl-C and SIGTERM during a training loop: finish the step, save, stop.

The first SIGINT (Ctrl-C) or SIGTERM (how TPU VMs and spot machines are
preempted) only sets a flag: the loop checks it between steps, so the
donated state is never half-updated, and then saves and stops. A second
Ctrl-C abandons at once (KeyboardInterrupt); the newest complete
checkpoint is kept and a half-written one is cleaned up by the next run.
"""

import signal
import threading
from typing import Optional


class StopRequests:
  """Context manager; `.signal_name` is "SIGINT" / "SIGTERM" once asked."""

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "StopRequests":
    # Signal handlers can only be set from the main thread (a notebook or
    # a test may run the loop elsewhere: then the defaults stay).
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
