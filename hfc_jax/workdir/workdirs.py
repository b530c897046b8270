"""Reading finished (or running) run and sweep workdirs, without JAX.

A run workdir (`layout.Workdir`) holds `metrics.jsonl` (one JSON object per finished
epoch, written by `records.Recorder`), `config.json` (the run's full config as a nested
dict; absent in old workdirs) and `provenance.jsonl` (the commit and command of each
start, see `hfc_jax.workdir.provenance`). A sweep workdir holds `sweep.json`:

  {"name": str, "kind": one of KINDS,
   "runs": [{"name": str, "workdir": path relative to the sweep dir,
             "overrides": {"dotted.key": value}}, ...]}

and its runs' sub-workdirs. A run with no epoch recorded yet is *missing*: listed, not
plotted. Problems with the directories a user named raise `HfcError` naming
`--workdirs`.
"""

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from absl import logging

from hfc_jax import errors, fileio
from hfc_jax.workdir.layout import Workdir

LOOSE_GROUP = "runs"   # the group that collects run dirs given directly

# Sweep kinds (sweep.json "kind", config sweep.kind): what report.py draws for each, and
# the figure or table of Wang et al. (CVPR 2020) it reproduces.
KINDS = {
    "heuristics": "Figure 5: vanilla, dropout, mix-up, BatchNorm, adversarial training",
    "batch_size": "Figure 4: batch size",
    "optimizers": "Section 3, optimisers (SGD, Adam, AdaGrad, AdaDelta, RMSprop; no figure)",
    "train_component": "Table 1: trained on LFC or HFC only, tested on original images",
    "shuffled_labels": "Figure 3: natural vs shuffled labels, LFC/HFC of training images",
    "bn_lfc": "Figure 6: BatchNorm vs none, trained on LFC data",
    "generic": "none (a plain comparison of runs)",
}


@dataclasses.dataclass
class Run:
  """One run: its records sorted by epoch (empty when missing), config and overrides."""
  name: str
  workdir: str
  records: list[dict]
  config: dict | None = None
  overrides: dict = dataclasses.field(default_factory=dict)
  starts: list[dict] = dataclasses.field(default_factory=list)  # provenance.jsonl lines

  @property
  def missing(self) -> bool:
    return not self.records

  @property
  def final(self) -> dict:
    """The last epoch's record ({} when missing)."""
    return self.records[-1] if self.records else {}

  def setting(self, dotted: str) -> Any:
    """`config.json`'s value at a dotted key ('train.input_radius'), else the sweep's
    override for it, else None."""
    node = self.config
    for part in dotted.split("."):
      if not isinstance(node, dict) or part not in node:
        return self.overrides.get(dotted)
      node = node[part]
    return node


@dataclasses.dataclass
class Group:
  """A sweep (or the loose runs given directly): what one report section shows."""
  name: str
  kind: str
  runs: list[Run]
  workdir: str | None = None

  @property
  def present(self) -> list[Run]:
    return [r for r in self.runs if not r.missing]

  @property
  def missing(self) -> list[Run]:
    return [r for r in self.runs if r.missing]


def _error(workdir: str, what: str) -> errors.HfcError:
  return errors.HfcError(f"--workdirs={workdir!r}: {what}")


def read_metrics(path: str, workdir: str = "") -> list[dict]:
  """The records of a metrics.jsonl, sorted by epoch ([] when the file is absent).

  A last line without its newline is a write in progress and is skipped; any other
  line that is not a JSON object raises HfcError.
  """
  if not fileio.is_file(path):
    return []
  lines = fileio.read_text(path).split("\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if number == len(lines):     # no newline after it: still being written
        continue
      raise _error(workdir or path, f"{path} line {number} is not JSON.") from None
    if not isinstance(record, dict):
      raise _error(workdir or path, f"{path} line {number} is not a JSON object.")
    records.append(record)
  return sorted(records, key=lambda r: r.get("epoch", 0) or 0)


def _read_json(workdir: Workdir, name: str) -> Any:
  try:
    return workdir.read_json(name)
  except (OSError, json.JSONDecodeError) as e:
    raise _error(workdir.path, f"cannot read {name} ({e}).") from None


def load_run(workdir: Workdir, name: str, overrides: dict | None = None) -> Run:
  """Reads one run workdir; a missing directory or file makes a missing run."""
  config = None
  if fileio.is_file(workdir.config):
    config = _read_json(workdir, Workdir.CONFIG)
    if not isinstance(config, dict):
      logging.warning("%s is not a JSON object; ignored", workdir.config)
      config = None
  return Run(name=name, workdir=workdir.path,
             records=read_metrics(workdir.metrics, workdir.path),
             config=config, overrides=dict(overrides or {}),
             starts=_read_starts(workdir))


def _read_starts(workdir: Workdir) -> list[dict]:
  """The run's `provenance.jsonl` records (empty for runs made before it existed)."""
  try:
    return workdir.read_starts()
  except (OSError, json.JSONDecodeError) as e:
    logging.warning("%s: cannot read %s (%s); ignored", workdir, Workdir.PROVENANCE, e)
    return []


def load_sweep(sweep_dir: Workdir) -> Group:
  """Reads sweep.json and every run it lists (runs not started yet are missing)."""
  spec = _read_json(sweep_dir, Workdir.SWEEP)
  if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list):
    raise _error(sweep_dir.path, "sweep.json has no 'runs' list.")
  runs = []
  for i, entry in enumerate(spec["runs"]):
    if not isinstance(entry, dict) or "workdir" not in entry:
      raise _error(sweep_dir.path, f"sweep.json runs[{i}] has no 'workdir'.")
    sub = sweep_dir.run(str(entry["workdir"]))
    name = str(entry.get("name") or sub.name)
    runs.append(load_run(sub, name, entry.get("overrides")))
  name = str(spec.get("name") or sweep_dir.name)
  return Group(name=name, kind=str(spec.get("kind", "generic")),
               runs=_unique_names(runs), workdir=sweep_dir.path)


def _unique_names(runs: list[Run]) -> list[Run]:
  """Appends ' (2)', ' (3)', ... to repeated run names so panels and keys stay apart."""
  seen: dict[str, int] = {}
  for run in runs:
    count = seen.get(run.name, 0) + 1
    seen[run.name] = count
    if count > 1:
      run.name = f"{run.name} ({count})"
  return runs


def collect(workdirs: Sequence[str]) -> list[Group]:
  """One Group per sweep dir, in the given order, then one 'runs' Group ('generic')
  holding every run dir given directly, each named by its directory's basename.

  Raises HfcError naming --workdirs for an empty list, a path that is not a directory,
  or a directory with neither sweep.json nor metrics.jsonl (nor config.json).
  """
  if not workdirs:
    raise errors.HfcError("--workdirs is empty; give one or more run or sweep directories.")
  groups, loose = [], []
  for given in workdirs:
    if not fileio.is_dir(given):
      raise _error(given, "no such directory.")
    workdir = Workdir(given)   # as given: the report names the directories as typed
    if workdir.is_sweep():
      groups.append(load_sweep(workdir))
    elif workdir.is_run():
      loose.append(load_run(workdir, workdir.name))
    else:
      raise _error(given, f"holds neither {Workdir.METRICS} nor {Workdir.SWEEP}; "
                   "not a run or sweep workdir.")
  if loose:
    groups.append(Group(name=LOOSE_GROUP, kind="generic", runs=_unique_names(loose)))
  return groups
