"""`Workdir`: one run directory, local or `gs://`, and every file name in it.

A run's workdir holds

  checkpoints/<step>/{state,meta}   Orbax checkpoints (`checkpointing`)
  unreadable_checkpoints/<step>     checkpoints set aside because they could not be read
  metrics.jsonl                     one JSON object per finished epoch (`records`)
  tensorboard/                      TensorBoard event files (`records`)
  config.json                       the full config of the latest start
  config_history.jsonl              one line per start that resumed with changes (`resume`)
  provenance.jsonl                  one line per start: code, versions, command (`provenance`)
  .lock                             the live run's lock (`hfc_jax.run.lock`)
  curves.png                        the accuracy-vs-epoch figure, written at the end
  <mode>/                           each study's output (`--config.mode=kernels` ...)

and a sweep's workdir holds `sweep.json`, `report/` and one run workdir per run.

Modules receive a `Workdir`, not a path string: the names above are known here only,
and a path is normalised once (`fileio.check`: local made absolute, `gs://` kept).
The small files are read and written here, through `hfc_jax.fileio`, so every write is
atomic (a reader sees the old file or the new one). Nothing here imports JAX: which
process writes is the caller's decision (process 0), and the report reads workdirs
without JAX.
"""

import dataclasses
import json
import os
from typing import Any

from hfc_jax import fileio


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A run (or sweep) directory. `Workdir.of('runs/x')` normalises a user's path;
  `str(workdir)` is that path; `os.fspath` works, so `fileio` takes it as a path."""
  path: str

  METRICS = "metrics.jsonl"
  CONFIG = "config.json"
  CONFIG_HISTORY = "config_history.jsonl"
  PROVENANCE = "provenance.jsonl"
  LOCK = ".lock"
  CHECKPOINTS = "checkpoints"
  UNREADABLE = "unreadable_checkpoints"
  TENSORBOARD = "tensorboard"
  CURVES = "curves.png"
  SWEEP = "sweep.json"
  REPORT = "report"

  @classmethod
  def of(cls, path: "Workdir | str | os.PathLike[str]", field: str = "workdir"
         ) -> "Workdir":
    """`path` as a Workdir (a Workdir is returned as it is). Raises a one-line HfcError
    naming `field` for an unknown scheme or a missing gs:// backend."""
    if isinstance(path, Workdir):
      return path
    return cls(fileio.check(field, path))

  def __str__(self) -> str:
    return self.path

  def __fspath__(self) -> str:
    return self.path

  @property
  def name(self) -> str:
    """The directory's last component ('vanilla' for 'gs://b/sweep/vanilla')."""
    return fileio.basename(self.path)

  def join(self, *parts: str) -> str:
    return fileio.join(self.path, *parts)

  def run(self, name: str) -> "Workdir":
    """The sub-workdir of run `name` of a sweep."""
    return Workdir(self.join(name))

  def study(self, mode: str) -> str:
    """Where study `mode` (`--config.mode`) writes its files."""
    return self.join(mode)

  # ----- Where each file is -------------------------------------------------
  metrics = property(lambda self: self.join(Workdir.METRICS))
  config = property(lambda self: self.join(Workdir.CONFIG))
  config_history = property(lambda self: self.join(Workdir.CONFIG_HISTORY))
  provenance = property(lambda self: self.join(Workdir.PROVENANCE))
  lock = property(lambda self: self.join(Workdir.LOCK))
  checkpoints = property(lambda self: self.join(Workdir.CHECKPOINTS))
  unreadable_checkpoints = property(lambda self: self.join(Workdir.UNREADABLE))
  tensorboard = property(lambda self: self.join(Workdir.TENSORBOARD))
  curves = property(lambda self: self.join(Workdir.CURVES))
  sweep = property(lambda self: self.join(Workdir.SWEEP))
  report = property(lambda self: self.join(Workdir.REPORT))

  # ----- What it is -----------------------------------------------------------
  def exists(self) -> bool:
    return fileio.is_dir(self.path)

  def is_sweep(self) -> bool:
    return fileio.is_file(self.sweep)

  def is_run(self) -> bool:
    """A run workdir: it has metrics.jsonl, or config.json (a run before its first
    epoch)."""
    return fileio.is_file(self.metrics) or fileio.is_file(self.config)

  def has_checkpoints(self) -> bool:
    return fileio.is_dir(self.checkpoints)

  # ----- Writing (atomic; call from process 0) ----------------------------------
  def create(self) -> None:
    """Creates the directory if needed and checks that it is writable (one-line
    HfcError naming `workdir` otherwise; see `fileio.check_writable`)."""
    fileio.check_writable("workdir", self.path)

  def write_json(self, name: str, obj: Any) -> None:
    """Writes `obj` as indented JSON to file `name` of the workdir (sorted keys; values
    JSON cannot hold, as numpy scalars, written with `str`)."""
    write_json(self.join(name), obj)

  def write_config(self, config: dict) -> None:
    self.write_json(Workdir.CONFIG, config)

  def write_sweep(self, spec: dict) -> None:
    self.write_json(Workdir.SWEEP, spec)

  def write_metrics(self, history: list[dict]) -> None:
    """Rewrites metrics.jsonl to exactly `history`, one JSON object per line."""
    fileio.write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in history))

  def append_start(self, record: dict) -> None:
    """Appends one start's provenance record to provenance.jsonl."""
    fileio.append_line(self.provenance, json.dumps(record))

  def append_config_change(self, entry: dict) -> None:
    """Appends one start's config changes to config_history.jsonl."""
    fileio.append_line(self.config_history, json.dumps(entry, default=str))

  # ----- Reading ----------------------------------------------------------------
  def read_json(self, name: str) -> Any:
    """File `name` parsed as JSON; OSError or json.JSONDecodeError when it cannot be."""
    return json.loads(fileio.read_text(self.join(name)))

  def read_lines(self, name: str) -> list[dict]:
    """The JSON lines of file `name` (empty when it does not exist)."""
    path = self.join(name)
    if not fileio.is_file(path):
      return []
    return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]

  def read_starts(self) -> list[dict]:
    """provenance.jsonl's records, oldest first (empty before the first start)."""
    return self.read_lines(Workdir.PROVENANCE)

  def read_config_history(self) -> list[dict]:
    """config_history.jsonl's records, oldest first."""
    return self.read_lines(Workdir.CONFIG_HISTORY)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON to `path` atomically (see `Workdir.write_json`)."""
  fileio.write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
