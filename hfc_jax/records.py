"""Where metrics go: `metrics.jsonl`, TensorBoard event files and the progress line.

TensorBoard files are written with tensorboardX, which needs no tensorflow (clu's
writers import it). Only process 0 writes. `metrics.jsonl` holds one JSON object per
finished epoch and is rewritten whole from the run's history each time an epoch's
checkpoint has been committed, so it never lists an epoch that no checkpoint holds.
Every file goes through `hfc_jax.fileio`, so a workdir may be local or `gs://...`
(object stores cannot append: whole files are written, which is also atomic).
"""

import io
import json
import logging as pylogging
import math
import os

import jax
from absl import logging

from hfc_jax import fileio, workdirs


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
  fileio.write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


class _ObjectEventFile:
  """A TensorBoard event file on an object store: kept in memory, rewritten whole on
  every flush (objects cannot be appended to). Event files of scalars stay small."""

  def __init__(self, path: str):
    self.path = path
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    fileio.write_bytes(self.path, self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _ObjectEventFiles:
  """tensorboardX writer factory for remote schemes, through fileio (epath)."""

  def open(self, path: str) -> _ObjectEventFile:
    return _ObjectEventFile(path)

  def directory_check(self, path: str) -> None:
    del path   # object stores have no directories to create


def tensorboard_writer(logdir: str):
  """A tensorboardX SummaryWriter for a local or remote `logdir`."""
  from tensorboardX import SummaryWriter, record_writer  # pylint: disable=g-import-not-at-top
  for name in fileio.REMOTE_SCHEMES:
    record_writer.register_writer_factory(name, _ObjectEventFiles())
  return SummaryWriter(logdir, flush_secs=30)


class Recorder:
  """Writes per-epoch records and step progress for one workdir."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, history=()):
    self.path = fileio.join(workdir, workdirs.METRICS)
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active and tensorboard:
      self._tb = tensorboard_writer(fileio.join(workdir, "tensorboard"))
    self._sent = len(history)   # records already in TensorBoard (an earlier process)

  def write_history(self, history: list[dict]) -> None:
    """Rewrites metrics.jsonl to exactly `history` and sends TensorBoard the records
    it has not seen. Called once the checkpoint holding `history` is committed."""
    if not self.active:
      return
    fileio.write_text(self.path, "".join(json.dumps(r) + "\n" for r in history))
    if self._tb is not None:
      for record in history[self._sent:]:
        step = record.get("step", record.get("epoch", 0))
        for key, value in record.items():
          if key not in ("epoch", "step") and isinstance(value, (int, float)):
            self._tb.add_scalar(key, value, step)
      self._tb.flush()
    self._sent = max(self._sent, len(history))

  def log_epoch(self, record: dict) -> None:
    """Logs one epoch's record as a line."""
    if not self.active:
      return
    summary = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items())
    logging.info("epoch %s: %s", record.get("epoch"), summary)

  def progress(self, step: int, total_steps: int, loss: float, accuracy: float,
               rate: float) -> None:
    """Logs `step, loss, accuracy, images/s` of the interval that ended at `step`."""
    if self.active:
      logging.info("step %d/%d  loss %.4f  accuracy %.4f  %.1f images/s",
                   step, total_steps, loss, accuracy, rate)
      if self._tb is not None and math.isfinite(rate):
        self._tb.add_scalar("train/images_per_second", rate, step)

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
