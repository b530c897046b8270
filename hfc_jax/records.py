"""Where metrics go: `metrics.jsonl`, TensorBoard event files and the progress line.

TensorBoard files are written with tensorboardX, which needs no tensorflow (clu's
writers import it). Only process 0 writes. `metrics.jsonl` holds one JSON object per
finished epoch; on resume it is rewritten from the history stored in the checkpoint,
so it never lists an epoch that the checkpoint does not hold.
"""

import json
import logging as pylogging
import math
import os
import time

import jax
from absl import logging


def json_scalar(value):
  """JSON-safe scalar: floats stay floats (NaN/inf become null), ints stay ints."""
  if isinstance(value, (int, str)) or value is None:
    return value
  value = float(value)
  return value if math.isfinite(value) else None


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON to `path` atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=str)
    f.write("\n")
  os.replace(tmp, path)


class Recorder:
  """Writes per-epoch records and step progress for one workdir."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
    self._last_time = None
    self._last_step = None

  def reset(self, history: list[dict]) -> None:
    """Atomically rewrites metrics.jsonl to exactly `history` (used on start and resume)."""
    if not self.active:
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for record in history:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, self.path)

  def write_epoch(self, record: dict) -> dict:
    """Appends one epoch's record to metrics.jsonl and TensorBoard; returns it cleaned."""
    record = {k: json_scalar(v) for k, v in record.items()}
    if not self.active:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      step = record.get("step", record.get("epoch", 0))
      for key, value in record.items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()
    summary = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items())
    logging.info("epoch %s: %s", record.get("epoch"), summary)
    return record

  def progress(self, step: int, total_steps: int, loss: float, accuracy: float,
               images: int) -> None:
    """Logs `step, loss, accuracy, images/s` since the previous call."""
    now = time.perf_counter()
    rate = float("nan")
    if self._last_time is not None and now > self._last_time:
      rate = images / (now - self._last_time)
    self._last_time, self._last_step = now, step
    if self.active:
      logging.info("step %d/%d  loss %.4f  accuracy %.4f  %.1f images/s",
                   step, total_steps, loss, accuracy, rate)
      if self._tb is not None and math.isfinite(rate):
        self._tb.add_scalar("train/images_per_second", rate, step)

  def restart_clock(self) -> None:
    """Forgets the last progress time (after evaluation or compilation pauses)."""
    self._last_time = time.perf_counter()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class _DropLibraryInfo(pylogging.Filter):
  """Drops INFO-and-below records logged from inside the named libraries' files."""

  def __init__(self, libraries: tuple[str, ...]):
    super().__init__()
    self.markers = tuple(f"{os.sep}{lib}{os.sep}" for lib in libraries)

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno > pylogging.INFO or not any(
        m in record.pathname for m in self.markers)


def quiet_library_logs(libraries: tuple[str, ...] = ("orbax", "tensorflow_datasets")) -> None:
  """Keeps Orbax's per-save INFO chatter (dozens of lines per checkpoint) out of the
  run's log, leaving warnings and errors; our own progress lines stay."""
  handler = logging.get_absl_handler()
  handler.addFilter(_DropLibraryInfo(libraries))
