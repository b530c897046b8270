"""Stopping for a preemption: every host at the same step, with a checkpoint there.

A preempted Cloud TPU or Spot VM gets SIGTERM and some seconds before it is gone. The
train loop asks `Watch.reached(step)` after every step; when it says yes, the trainer
saves a checkpoint at that step and raises `Preempted`, and `main` exits with status
`EXIT_PREEMPTED` (143, the shell's code for SIGTERM). Running the same command again
resumes at that step.

- Under `jax.distributed` (multi-host pods; any run started with --jax_distributed)
  JAX's coordination service catches SIGTERM on any host and agrees on a step that
  every host reaches (`multihost_utils.reached_preemption_sync_point`, what Orbax's
  `CheckpointManager.reached_preemption` calls), so all hosts save the same step.
  That step can be a few steps after the signal.
- A single process without it has no coordination service, so the signal is caught
  here: a SIGTERM handler sets a flag and the next step stops.

Ctrl-C (SIGINT) of a single process is handled the same way: the run stops after the
step in flight, saves a checkpoint there and exits 130; a second Ctrl-C interrupts at
once. (A KeyboardInterrupt raised at an arbitrary point, e.g. while 8 simulated CPU
devices were in an all-reduce, could leave XLA's threads deadlocked at exit.)
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 128 + signal.SIGTERM   # 143
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130


class Preempted(Exception):
  """The run stopped for a signal (SIGTERM: a preemption; SIGINT: Ctrl-C) after saving
  a checkpoint at `step`; `exit_status` is 143 or 130."""

  def __init__(self, step: int, directory: str, *, interrupted: bool = False):
    what = "Ctrl-C" if interrupted else "SIGTERM (preemption)"
    super().__init__(f"stopped by {what} at step {step}; checkpoint saved in {directory}; "
                     "run the same command to resume from it.")
    self.step = step
    self.exit_status = EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED


class Watch:
  """Answers, after each train step, whether the run must stop for a preemption."""

  def __init__(self):
    self.distributed = jax.distributed.is_initialized()
    self._flag = threading.Event()
    self.interrupted = False      # the signal was Ctrl-C
    self._previous = {}
    if not self.distributed and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT:
      self.interrupted = True
      signal.signal(signal.SIGINT, signal.default_int_handler)   # a second one: at once
    self._flag.set()

  @property
  def requested(self) -> bool:
    """A SIGTERM or Ctrl-C has come to this process (single-process runs only)."""
    return self._flag.is_set()

  def reached(self, step: int) -> bool:
    """Whether to save at `step` (the number of steps taken) and stop; under
    jax.distributed every host must call this at every step, in order."""
    if self.distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def stopped(self, step: int, directory: str) -> Preempted:
    """The exception that ends the run after the checkpoint at `step`."""
    return Preempted(step, directory, interrupted=self.interrupted)

  def close(self) -> None:
    """Puts back the signal handlers that were there before."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
