"""Where metrics go: `metrics.jsonl`, TensorBoard event files and the progress line.

TensorBoard files are written with tensorboardX, which needs no tensorflow (clu's
writers import it). Only process 0 writes. `metrics.jsonl` holds one JSON object per
finished epoch and is rewritten whole from the run's history each time an epoch's
checkpoint has been committed, so it never lists an epoch that no checkpoint holds.
Every file goes through `hfc_jax.fileio`, so a workdir may be local or `gs://...`
(object stores cannot append: whole files are written, which is also atomic).
"""

import io
import math

from absl import logging

from hfc_jax import fileio
from hfc_jax.workdir import layout


def json_scalar(value):
  """JSON-safe scalar: floats stay floats (NaN/inf, which json.loads accepts, become
  null), ints, strings and None stay as they are."""
  if isinstance(value, (int, str)) or value is None:
    return value
  value = float(value)
  return value if math.isfinite(value) else None


def is_writer() -> bool:
  """Whether this process writes files: process 0 (JAX is imported only here, so that
  reporting/report.py, which reads records without JAX, can use this module)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON to `path` atomically (process 0 only)."""
  if is_writer():
    layout.write_json(path, obj)


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


def _import_tensorboardx():
  """Imports tensorboardX without PyTorch: its writer imports torch, where installed, only
  to accept torch tensors (we pass floats), and that import costs about 2.7 s of every
  run's start on a CPU host with torch (the `torch` extra). Torch stays importable after."""
  import sys  # pylint: disable=g-import-not-at-top
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules["torch"] = None   # `import torch` raises ImportError while this is set
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return tensorboardX


def tensorboard_writer(logdir: str):
  """A tensorboardX SummaryWriter for a local or remote `logdir`."""
  tensorboardx = _import_tensorboardx()
  SummaryWriter, record_writer = tensorboardx.SummaryWriter, tensorboardx.record_writer
  for name in fileio.REMOTE_SCHEMES:
    record_writer.register_writer_factory(name, _ObjectEventFiles())
  return SummaryWriter(logdir, flush_secs=30)


class Recorder:
  """Writes per-epoch records and step progress for one workdir."""

  def __init__(self, workdir: layout.Workdir, *, tensorboard: bool = True, history=()):
    self.workdir = workdir
    self.active = is_writer()
    self._tb = None
    if self.active and tensorboard:
      self._tb = tensorboard_writer(workdir.tensorboard)
    self._sent = len(history)   # records already in TensorBoard (an earlier process)

  def write_history(self, history: list[dict]) -> None:
    """Rewrites metrics.jsonl to exactly `history` and sends TensorBoard the records
    it has not seen. Called once the checkpoint holding `history` is committed."""
    if not self.active:
      return
    self.workdir.write_metrics(history)
    if self._tb is not None:
      for record in history[self._sent:]:
        step = record.get("step", record.get("epoch", 0))
        for key, value in record.items():
          if key not in ("epoch", "step") and isinstance(value, (int, float)):
            self._tb.add_scalar(key, value, step)
      self._tb.flush()
    self._sent = max(self._sent, len(history))

  def log_epoch(self, record: dict, epochs: int) -> None:
    """Logs one epoch as a short summary; the full record is in metrics.jsonl."""
    if self.active:
      logging.info("%s", epoch_summary(record, epochs))

  def progress(self, step: int, total_steps: int, loss: float, accuracy: float,
               rate: float, seconds_per_step: float) -> None:
    """Logs `step, loss, accuracy, images/s, ETA` of the interval that ended at
    `step`; the ETA counts training steps only (each evaluation adds its own time)."""
    if self.active:
      eta = duration((total_steps - step) * seconds_per_step)
      logging.info("step %d/%d  loss %.4f  accuracy %.4f  %.0f images/s  ETA %s",
                   step, total_steps, loss, accuracy, rate, eta)
      if self._tb is not None and math.isfinite(rate):
        self._tb.add_scalar("train/images_per_second", rate, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def duration(seconds: float) -> str:
  """'42 s', '3.5 min', '2.1 h'."""
  if not math.isfinite(seconds):
    return "?"
  if seconds < 90:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def epoch_summary(record: dict, epochs: int) -> str:
  """One short line per epoch: train loss/accuracy, test clean accuracy, LFC and HFC
  test accuracy at each radius, and the epoch's time, e.g.
  `epoch 3/6  loss 0.232 acc 0.937 | test clean 0.935 | r: 4 8 12 16 | LFC 0.700 ...
  | HFC 0.900 ... | 8 s`."""
  def num(key):
    value = record.get(key)
    return "-" if value is None else f"{value:.3f}"
  radii = [k[len("test/lfc_"):] for k in record if k.startswith("test/lfc_")]
  parts = [f"epoch {record.get('epoch')}/{epochs}  loss {num('train_loss')} "
           f"acc {num('train_accuracy')}", f"test clean {num('test/clean')}"]
  if "test/pgd" in record:
    parts.append(f"PGD {num('test/pgd')}")
  if radii:
    parts += ["r: " + " ".join(radii),
              "LFC " + " ".join(num(f"test/lfc_{r}") for r in radii),
              "HFC " + " ".join(num(f"test/hfc_{r}") for r in radii)]
  parts.append(duration(record.get("epoch_time_s") or float("nan")))
  return " | ".join(parts)
