"""Sweeps: one config, one command, several runs, each in a sub-workdir of its own.

A config is a sweep when `config.sweep.runs` names runs; `config.sweep.overrides.<run>`
holds a partial config (same nesting as the config) that differs for that run:

  config.sweep.kind = "heuristics"
  config.sweep.runs = ("vanilla", "dropout")
  config.sweep.overrides = ml_collections.ConfigDict({
      "vanilla": {}, "dropout": {"model": {"dropout": 0.5}}})

`python -m hfc_jax.main --config=that.py --workdir=W` then trains `W/vanilla` and
`W/dropout` one after the other, in the order of `runs`, and writes `W/sweep.json`
(the kind, and each run's sub-workdir and overrides as dotted keys), and at the
end the report of `python -m hfc_jax.report` into `W/report` (figures and tables).
With `sweep.group_size` > 1 or 'auto', runs that differ only in the seed and scalar
settings train together in one vmapped step (`hfc_jax.run.group`), each still in its
own sub-workdir, indistinguishable from a run trained alone. Every run resumes on its
own, so the same command
after an interruption continues where it stopped and skips finished runs. All
overrides are checked before the first run starts: an unknown field or a value of
the wrong type is a one-line error naming it.
"""

import copy
import re
from typing import Any

import jax
import ml_collections

from hfc_jax import defaults, errors, fileio
from hfc_jax.workdir import records, workdirs
from hfc_jax.workdir.layout import Workdir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  return bool(config.sweep.runs)


def flatten(partial: Any, prefix: str = "") -> dict[str, Any]:
  """{'model': {'dropout': 0.5}} -> {'model.dropout': 0.5} (ConfigDicts and dicts)."""
  if isinstance(partial, ml_collections.ConfigDict):
    partial = partial.to_dict()
  flat = {}
  for key, value in partial.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(flatten(value, name + "."))
    elif not isinstance(value, dict):
      flat[name] = value
  return flat


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any, field: str) -> None:
  """Sets config.<dotted> = value, or raises HfcError naming `field`."""
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise errors.HfcError(f"{field}: the config has no section {part!r} (in {dotted!r}).")
    node = node[part]
  if leaf not in node:
    raise errors.HfcError(f"{field}: the config has no field {dotted!r}.")
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise errors.HfcError(f"{field}={value!r}: wrong type for {dotted!r} ({e}).") from None


def expand(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict,
                                                             dict[str, Any]]]:
  """The runs of a sweep config: [(name, run config, flat overrides)], in order.

  Each run config is a copy of `config` with its overrides applied and no sweep.
  """
  sweep = config.sweep
  errors.check_choice("sweep.kind", sweep.kind, workdirs.KINDS)
  names = list(sweep.runs)
  for name in names:
    if not isinstance(name, str) or not _NAME.match(name):
      raise errors.HfcError(f"sweep.runs: {name!r} is not a valid run name (letters, "
                            "digits, '_', '.', '-'; it names a sub-workdir).")
    if name not in sweep.overrides:
      raise errors.HfcError(f"sweep.runs: {name!r} has no entry in sweep.overrides "
                            f"(has: {', '.join(sorted(sweep.overrides.keys())) or 'none'}).")
  if len(set(names)) != len(names):
    raise errors.HfcError(f"sweep.runs={tuple(names)!r} names a run twice.")
  base = copy.deepcopy(config)
  with base.unlocked():
    base.sweep = defaults.get_config().sweep   # a run is no sweep
  runs = []
  for name in names:
    run_config = copy.deepcopy(base)
    flat = flatten(sweep.overrides[name])
    for dotted, value in flat.items():
      if dotted.split(".")[0] == "sweep":
        raise errors.HfcError(f"sweep.overrides.{name}.{dotted}: a run cannot hold a sweep.")
      _set(run_config, dotted, value, f"sweep.overrides.{name}.{dotted}")
    runs.append((name, run_config, flat))
  return runs


def describe(config: ml_collections.ConfigDict, runs, workdir: Workdir) -> dict:
  """The JSON description written to <workdir>/sweep.json."""
  return {"kind": config.sweep.kind, "name": workdir.name,
          "runs": [{"name": name, "workdir": name, "overrides": flat}
                   for name, _, flat in runs]}


def run_sweep(config: ml_collections.ConfigDict, workdir: Workdir | str, train_fn, *,
              allow_changes: bool = False) -> dict:
  """Trains every run of the sweep with `train_fn(run_config, run_workdir)`, each run
  in its sub-workdir (a `Workdir`); with `sweep.group_size` other than 1, the runs that
  may share a step train together (`group.train_group`, `allow_changes` as for a
  resume), one group after another (`group.plan`).

  Returns {run name: its history}. `sweep.json` is written before the first
  run so that a report can be made while the sweep is still going.
  """
  from hfc_jax.run import group  # pylint: disable=g-import-not-at-top  (imports train)
  workdir, runs = Workdir.of(workdir), expand(config)
  groups = group.plan(config, runs)
  if records.is_writer():
    workdir.write_sweep(describe(config, runs, workdir))
  results = {}
  for members in groups:
    for i in members:
      name, _, flat = runs[i]
      summary = ", ".join(f"{k}={v!r}" for k, v in flat.items()) or "base config"
      together = f", together with {len(members) - 1} more" if len(members) > 1 else ""
      print(f"hfc_jax: sweep run {i + 1}/{len(runs)}: {name} ({summary}){together}",
            flush=True)
      fileio.makedirs(workdir.run(name).path)
    if len(members) == 1:
      name, run_config, _ = runs[members[0]]
      results[name] = train_fn(run_config, workdir.run(name))
      continue
    histories = group.train_group([runs[i][1] for i in members],
                                  [workdir.run(runs[i][0]) for i in members],
                                  run_devices=int(config.sweep.run_devices),
                                  allow_changes=allow_changes,
                                  fit_memory=config.sweep.group_size == "auto")
    results.update({runs[i][0]: h for i, h in zip(members, histories)})
  if jax.process_index() == 0:
    from hfc_jax.reporting import report  # pylint: disable=g-import-not-at-top
    written = report.write_report([workdir.path])
    print(f"hfc_jax: sweep report: {written['markdown']}", flush=True)
  return results
