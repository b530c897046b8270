"""The host's view of training progress: the running sums of a partly trained epoch,
step metrics fetched late, and the divergence check every fetched step passes.

`EpochProgress` travels in step checkpoints (so a run resumed mid-epoch ends with the
same epoch means as one never stopped); `StepMetrics` fetches a log interval's metrics
only at the next log point, so the host never drains the queue of dispatched steps;
`check_finite` and `LossWatch` stop a diverged run before anything of it is saved.
"""

import collections
import dataclasses
import math
import time

import jax
import numpy as np

from hfc_jax import errors
from hfc_jax.workdir import records


@dataclasses.dataclass
class EpochProgress:
  """Running sums of the epoch being trained; they travel in step checkpoints, so a
  run resumed mid-epoch ends with the same epoch means as one that was never stopped.
  Sums are float64, added one step at a time in step order (never per interval), so
  they do not depend on where the run was stopped."""
  steps: int = 0            # steps of this epoch taken
  loss_sum: float = 0.0     # sum of the steps' batch-mean losses
  accuracy_sum: float = 0.0
  train_time_s: float = 0.0  # wall time spent in this epoch's steps (all processes)

  def add(self, losses: list[float], accuracies: list[float]) -> None:
    for loss, accuracy in zip(losses, accuracies):
      self.loss_sum += loss
      self.accuracy_sum += accuracy
    self.steps += len(losses)

  def means(self, steps_per_epoch: int) -> dict[str, float]:
    n = max(steps_per_epoch, 1)
    return {"train_loss": self.loss_sum / n, "train_accuracy": self.accuracy_sum / n}


class StepMetrics:
  """Step metrics are left on device until the NEXT log point, when they are long
  computed, so fetching them never drains the queue of dispatched steps; `flush`
  fetches everything (before a checkpoint and at the epoch end).

  The host runs at most `MAX_IN_FLIGHT` steps ahead of the devices: `add` waits for
  the step that many steps back. Enough to keep an accelerator busy, and it bounds
  the queue of dispatched programs: XLA:CPU's simulated devices deadlocked in an
  all-reduce with a log interval's worth (25) of steps in flight on 2 cores.
  """
  MAX_IN_FLIGHT = 4

  def __init__(self, progress: EpochProgress, recorder: records.Recorder, *,
               total_steps: int, batch_size: int, loss_watch: "LossWatch | None" = None):
    self.progress, self.recorder = progress, recorder
    self.loss_watch = loss_watch or LossWatch(0.0, 1)
    self.total_steps, self.batch_size = total_steps, batch_size
    self.ready = None       # (last step, metrics, seconds) of a finished interval
    self.fresh: list = []
    self.in_flight: collections.deque = collections.deque()
    self.since = time.perf_counter()   # when the current interval began

  def add(self, metrics) -> None:
    self.fresh.append(metrics)
    self.in_flight.append(metrics)
    if len(self.in_flight) > self.MAX_IN_FLIGHT:
      jax.block_until_ready(self.in_flight.popleft())

  def _close_interval(self, step: int):
    now = time.perf_counter()
    interval, self.fresh, self.since = (step, self.fresh, now - self.since), [], now
    return interval

  def mark(self, step: int) -> None:
    """A log point after `step`: logs the interval before it and holds this one."""
    self._drain(self.ready)
    self.ready = self._close_interval(step)

  def flush(self, step: int) -> None:
    self._drain(self.ready)
    self._drain(self._close_interval(step))
    self.ready = None

  def _drain(self, interval) -> None:
    if interval is None or not interval[1]:
      return
    step, metrics, seconds = interval
    self.record(step, jax.device_get(metrics), seconds)

  def record(self, step: int, fetched: list[dict], seconds: float) -> None:
    """Checks and records the host copies of one interval's step metrics, the last
    at `step`, taken in `seconds`; raises `errors.RunFailed` when they diverged."""
    check_finite(fetched, step - len(fetched) + 1)
    losses = [float(m["loss"]) for m in fetched]
    accuracies = [float(m["accuracy"]) for m in fetched]
    self.loss_watch.add(step, float(np.mean(losses)))
    self.progress.add(losses, accuracies)
    self.recorder.progress(step, self.total_steps, float(np.mean(losses)),
                           float(np.mean(accuracies)), len(losses) * self.batch_size / seconds,
                           seconds / len(losses))


STATE_PARTS = ("parameters", "optimiser state", "BatchNorm statistics")


def _diverged(step: int, what: str) -> errors.RunFailed:
  return errors.RunFailed(
      f"training diverged at step {step}: {what}; nothing from that step on was saved, "
      "the last checkpoint is kept (lower optim.learning_rate, or add "
      "optim.grad_clip_norm).", errors.EXIT_DIVERGED)


def check_finite(fetched: list[dict], first_step: int) -> None:
  """Stops the run at the first step whose loss, parameters, optimiser state or BatchNorm
  statistics are not finite (`train.nonfinite_parts`). Every checkpoint and epoch record
  comes after its steps' metrics were checked here, so no bad state is ever saved."""
  for step, m in enumerate(fetched, first_step):
    loss = float(m["loss"])
    bad = [part for part, flag in zip(STATE_PARTS, np.asarray(m["nonfinite"])) if flag]
    if not math.isfinite(loss):
      raise _diverged(step, f"the loss is {loss}")
    if bad:
      raise _diverged(step, f"inf or NaN in the {' and the '.join(bad)}")


class LossWatch:
  """Stops a run whose loss stays finite but huge: `train.divergence_loss` > 0 and the
  mean loss of `train.divergence_log_points` consecutive log intervals above it (a run
  that diverged to 1e27 and stopped learning without overflowing). Off at 0."""

  def __init__(self, threshold: float, patience: int):
    self.threshold, self.patience, self.above = float(threshold), int(patience), 0

  def add(self, step: int, mean_loss: float) -> None:
    if self.threshold <= 0:
      return
    self.above = self.above + 1 if mean_loss > self.threshold else 0
    if self.above >= self.patience:
      raise _diverged(step, f"the mean loss was above train.divergence_loss="
                      f"{self.threshold:g} for {self.above} log intervals in a row (now "
                      f"{mean_loss:.4g})")


def check_config(config) -> None:
  """One-line HfcErrors for the train.* fields of the training loop: its length,
  logging interval, prefetch depth, the smooth-kernel penalty weight and the
  divergence stop (`LossWatch`)."""
  tc = config.train
  errors.check_range("train.epochs", tc.epochs, 1, None, integer=True)
  errors.check_range("train.log_every_steps", tc.log_every_steps, 1, None, integer=True)
  errors.check_range("train.prefetch", tc.prefetch, 1, None, integer=True)
  errors.check_range("train.smooth_kernel_weight", tc.smooth_kernel_weight, 0)
  errors.check_range("train.divergence_loss", tc.divergence_loss, 0)
  errors.check_range("train.divergence_log_points", tc.divergence_log_points, 1, None,
                     integer=True)
