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
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 128 + signal.SIGTERM   # 143


class Preempted(Exception):
  """The run stopped for a preemption after saving a checkpoint at `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by SIGTERM (preemption) at step {step}; checkpoint saved "
                     f"in {directory}; run the same command to resume from it.")
    self.step = step


class Watch:
  """Answers, after each train step, whether the run must stop for a preemption."""

  def __init__(self):
    self.distributed = jax.distributed.is_initialized()
    self._flag = threading.Event()
    self._previous = None
    if not self.distributed and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    self._flag.set()

  @property
  def requested(self) -> bool:
    """A SIGTERM has come to this process (single-process runs only)."""
    return self._flag.is_set()

  def reached(self, step: int) -> bool:
    """Whether to save at `step` (the number of steps taken) and stop; under
    jax.distributed every host must call this at every step, in order."""
    if self.distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def close(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
