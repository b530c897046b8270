r"""Writes the paper's figures and tables from run and sweep workdirs, re-running nothing.

  python -m hfc_jax.report --workdirs=workdirs/heuristics
  python -m hfc_jax.report --workdirs=workdirs/batch,workdirs/vanilla,workdirs/bn --out=/tmp/r

`--workdirs` mixes sweep dirs (holding sweep.json) and single run dirs (holding
metrics.jsonl); the single runs form one section, 'runs', each named by its basename.
Into `--out` (default `<first workdir>/report`) go one PNG per figure, `report.md`
(a section per sweep: its kind and paper figure, a final-epoch table, Table 1 for a
train_component sweep, the figures, and the command that made the report; and, for
sweeps given more than once, e.g. with other seeds, the final-epoch mean ± sd of each
run) and `report.json` (every run's final-epoch record, and the replicated values). Only metrics.jsonl, config.json and
sweep.json are read; JAX is never imported.

Bad input ends with one line on stderr ("hfc_jax: error: --workdirs=...") and exit 2.
"""

import json
import math
import os
import re
import shlex
import sys

import numpy as np
from absl import app, flags

from hfc_jax import defaults, errors, fileio
from hfc_jax.reporting import markdown, plots
from hfc_jax.workdir import provenance
from hfc_jax.workdir.layout import Workdir
from hfc_jax.workdir.records import duration, json_scalar
from hfc_jax.workdir.workdirs import KINDS, Group, Run, collect

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Comma-separated run and/or sweep workdirs.")
flags.DEFINE_string("out", None, "Output directory (default: <first workdir>/report).")

OVERLAY_KINDS = ("batch_size", "optimizers")
COMPONENT_ORDER = ("lfc", "hfc", "original")


# ---------------------------------------------------------------- Tables (Markdown)

def fmt(value, digits: int = 4) -> str:
  """An accuracy cell: 4 decimals, or 'n/a' for null/missing/NaN."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
    return "n/a"
  return f"{value:.{digits}f}"


def wall_time_s(run: Run) -> float:
  """Sum of the recorded `epoch_time_s`, seconds (null epochs count 0)."""
  return float(np.nansum(plots.series(run.records, "epoch_time_s")[1]))


def final_table(group: Group) -> str:
  """Final-epoch numbers of every run of `group`, one row each (missing runs say so):
  epochs, wall time, train accuracy, clean test accuracy, `test/pgd` when any run has
  it, then LFC and HFC test accuracy at every radius any run logged."""
  radii = sorted({r for run in group.runs for r in plots.radii(run.records)}, key=float)
  pgd = any("test/pgd" in rec for run in group.runs for rec in run.records)
  header = ["run", "epochs", "wall time", "train acc", "test clean"]
  header += ["test PGD"] * pgd
  header += [f"LFC r={r}" for r in radii] + [f"HFC r={r}" for r in radii]
  rows = []
  for run in group.runs:
    if run.missing:
      rows.append([run.name, "missing"] + [""] * (len(header) - 2))
      continue
    last = run.final
    row = [run.name, str(last.get("epoch", len(run.records))), duration(wall_time_s(run)),
           fmt(last.get("train_accuracy")), fmt(last.get("test/clean"))]
    row += [fmt(last.get("test/pgd"))] * pgd
    row += [fmt(last.get(f"test/lfc_{r}")) for r in radii]
    row += [fmt(last.get(f"test/hfc_{r}")) for r in radii]
    rows.append(row)
  return markdown.table(header, rows)


def table1_rows(group: Group) -> list[dict]:
  """Table 1's rows for the runs that have records: train component ('lfc', 'hfc',
  'original'; from config.json's train.input_component, else the sweep's override),
  radius (train.input_radius; None for 'original'), final train accuracy, clean test
  accuracy, and test accuracy on the same component at the same radius (None when that
  key was not logged). Sorted by component (LFC, HFC, original) then radius."""
  rows = []
  for run in group.present:
    component = str(run.setting("train.input_component") or "original").lower()
    radius = run.setting("train.input_radius")
    radius = None if component == "original" or radius is None else float(radius)
    same = None
    if radius is not None:
      same = run.final.get(f"test/{component}_{radius:g}")
    rows.append({"run": run.name, "component": component, "radius": radius,
                 "train_accuracy": run.final.get("train_accuracy"),
                 "test_clean": run.final.get("test/clean"), "test_same": same})
  order = {c: i for i, c in enumerate(COMPONENT_ORDER)}
  return sorted(rows, key=lambda r: (order.get(r["component"], len(order)), r["component"],
                                     math.inf if r["radius"] is None else r["radius"]))


def table1(group: Group) -> str:
  """Table 1 as Markdown (see `table1_rows`)."""
  header = ["run", "train on", "r", "train acc", "test acc (original)",
            "test acc (same component, same r)"]
  rows = [[r["run"], r["component"].upper() if r["component"] != "original" else "original",
           "-" if r["radius"] is None else f"{r['radius']:g}", fmt(r["train_accuracy"]),
           fmt(r["test_clean"]), fmt(r["test_same"])] for r in table1_rows(group)]
  return markdown.table(header, rows)


# ---------------------------------------------------------------- Figures

def group_figures(group: Group) -> list[tuple[str, str, object]]:
  """The figures of one group as (file suffix, caption, Figure), in report order:
  for shuffled_labels the training-image panels first (the paper's figure 3), then the
  test panels; for the others the test panels, the training-image panels when logged,
  and for batch_size / optimizers the overlay of train and test accuracy curves; last,
  when any run logged `eval.bands`, the band-pass accuracy of each run vs band."""
  runs = {run.name: run.records for run in group.present}
  if not runs:
    return []
  has_train_eval = any(plots.radii(recs, "train_eval") for recs in runs.values())
  test = ("panels_test", "LFC (solid) and HFC (dashed) accuracy on the test images per "
          "epoch; black: clean test accuracy, grey dotted: train accuracy.",
          plots.panel_figure(runs, "test"))
  figures = [test]
  if has_train_eval:
    train = ("panels_train_eval", "LFC (solid) and HFC (dashed) accuracy on a fixed "
             "subset of the training images (clean, eval mode) per epoch; black: clean.",
             plots.panel_figure(runs, "train_eval"))
    figures = [train, test] if group.kind == "shuffled_labels" else [test, train]
  if group.kind in OVERLAY_KINDS:
    figures.append(("curves", "Train accuracy (dashed) and clean test accuracy (solid) "
                    "per epoch, one colour per run.",
                    plots.overlay_figure(runs, title=group.name)))
  if any(plots.bands(recs) for recs in runs.values()):
    figures.append(("bands", "Test accuracy on band-pass images (only r1 <= dist < r2 of "
                    "the spectrum kept, `eval.bands`) at each run's last epoch, one colour "
                    "per run; dotted: clean test accuracy.", plots.band_figure(runs)))
  return figures


def slug(name: str) -> str:
  """A file-name-safe version of a group name."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "group"


# ---------------------------------------------------------------- The report

def command_line(workdirs: list[str], out: str | None) -> str:
  """The shell command that makes this report (what `main` was given)."""
  args = ["python", "-m", "hfc_jax.report", "--workdirs=" + ",".join(workdirs)]
  if out is not None:
    args.append(f"--out={out}")
  return " ".join(shlex.quote(a) for a in args)


def replicate_sets(groups: list[Group]) -> list[list[Group]]:
  """Sets of 2 or more sweeps of the same kind, with the same run names and the same
  run configs but for the seed and the fields that change none of their numbers
  (`defaults.REPLICATE_IGNORED`: TensorBoard, checkpoint interval, device count, data
  directory, analysis settings, ...), in order: the same experiment
  run again (other seeds, other machines). Sweeps of another model or data set are
  never averaged together."""
  sets: dict[tuple, list[Group]] = {}
  for group in groups:
    if group.workdir is not None:
      key = (group.kind, tuple(r.name for r in group.runs),
             tuple(replicate_key(r.config) for r in group.runs))
      sets.setdefault(key, []).append(group)
  return [gs for gs in sets.values() if len(gs) > 1]


def replicate_key(config: dict | None) -> str:
  """A run's config as canonical JSON without its top-level `seed` and the fields that
  change none of its numbers, old value names made current ('' when the config is
  unknown)."""
  if config is None:
    return ""
  kept = defaults.current_names(json.loads(json.dumps(config, default=str)))  # a copy
  for path in ("seed",) + defaults.REPLICATE_IGNORED:
    *parents, leaf = path.split(".")
    section = kept
    for name in parents:
      section = section.get(name) if isinstance(section, dict) else None
    if isinstance(section, dict):
      section.pop(leaf, None)
  return json.dumps(kept, sort_keys=True)


def _mean_sd(values: list[float]) -> str:
  if not values:
    return "n/a"
  mean = sum(values) / len(values)
  sd = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
  return f"{mean:.3f} ± {sd:.3f}"


def replicate_rows(groups: list[Group]) -> tuple[list[str], list[list[str]], dict]:
  """Final-epoch mean ± sd (population sd) per run over the sweeps `groups`: the
  Markdown header and rows, and {run: {metric: [values]}} for the JSON."""
  radii = sorted({r for g in groups for run in g.runs for r in plots.radii(run.records)},
                 key=float)
  metrics = ["train_accuracy", "test/clean"]
  if any("test/pgd" in run.final for g in groups for run in g.runs):
    metrics.append("test/pgd")
  metrics += [f"test/lfc_{r}" for r in radii] + [f"test/hfc_{r}" for r in radii]
  header = ["run", "sweeps"] + [m.replace("test/", "test ").replace("_", " ")
                                for m in metrics]
  rows, values = [], {}
  for i, name in enumerate(r.name for r in groups[0].runs):
    finals = [g.runs[i].final for g in groups if not g.runs[i].missing]
    values[name] = {m: [float(f[m]) for f in finals if json_scalar(f.get(m)) is not None]
                    for m in metrics}
    rows.append([name, str(len(finals))] + [_mean_sd(values[name][m]) for m in metrics])
  return header, rows, values


def _run_summary(run: Run) -> dict:
  return {"workdir": run.workdir, "missing": run.missing,
          "epochs": len(run.records), "wall_time_s": wall_time_s(run),
          "final": {k: json_scalar(v) for k, v in run.final.items()}, "starts": run.starts}


def made_by(group: Group) -> list[str]:
  """One entry per distinct (code, command) that started the group's runs: 'commit
  1a2b3c4, jax 0.10.2, with `python -m hfc_jax.main ...`'. Resumes that continued a run
  are listed too, so a run made by two commits shows both."""
  seen = []
  for run in group.runs:
    for start in run.starts:
      entry = f"{provenance.short(start)}, with `{start.get('command', '?')}`"
      if entry not in seen:
        seen.append(entry)
  return seen


def _section(group: Group, figure_files: list[tuple[str, str]]) -> list[str]:
  lines = [f"## {group.name}", "",
           f"Kind: `{group.kind}`. Paper: {KINDS.get(group.kind, KINDS['generic'])}."]
  if group.kind not in KINDS:
    lines[-1] += f" (Unknown sweep kind {group.kind!r}: shown as generic.)"
  if group.workdir:
    lines[-1] += f" Sweep dir: `{group.workdir}`."
  made = made_by(group)
  if made:
    lines += ["", "Made by " + "; ".join(made) + "."]
  if group.missing:
    lines += ["", "Missing (no epoch recorded yet): "
              + ", ".join(f"`{r.name}` ({r.workdir})" for r in group.missing) + "."]
  lines += ["", "### Final epoch", "", final_table(group)]
  if group.kind == "train_component" and group.present:
    lines += ["### Table 1", "", table1(group)]
  for filename, caption in figure_files:
    lines += [f"![{group.name}: {filename}]({filename})", "", caption, ""]
  return lines


def write_report(workdirs: list[str], out: str | None = None) -> dict:
  """Reads `workdirs`, writes the PNGs, report.md and report.json into `out`.

  Returns {'out': dir, 'markdown': path, 'json': path, 'groups': [Group, ...],
  'figures': {png file name: Figure}} so callers (tests) can inspect the figures.
  Raises HfcError naming --workdirs / --out for bad directories.
  """
  groups = collect(workdirs)
  out_dir = out if out is not None else Workdir(workdirs[0]).report
  out_dir = fileio.check_writable("--out", out_dir)
  command = command_line(list(workdirs), out)
  md = ["# hfc_jax report", "", f"Made by `{command}` (in `{os.getcwd()}`), from the "
        "runs' metrics.jsonl files alone.", ""]
  summary = {"command": command, "cwd": os.getcwd(), "groups": []}
  figures, used = {}, set()
  for group in groups:
    base = slug(group.name)
    while base in used:
      base += "_"
    used.add(base)
    files = []
    for suffix, caption, fig in group_figures(group):
      filename = f"{base}_{suffix}.png"
      plots.save(fig, fileio.join(out_dir, filename))
      figures[filename] = fig
      files.append((filename, caption))
    md += _section(group, files)
    entry = {"name": group.name, "kind": group.kind, "workdir": group.workdir,
             "paper": KINDS.get(group.kind, KINDS["generic"]),
             "figures": [f for f, _ in files], "missing": [r.name for r in group.missing],
             "runs": {run.name: _run_summary(run) for run in group.runs}}
    if group.kind == "train_component":
      entry["table1"] = [{k: json_scalar(v) for k, v in row.items()}
                         for row in table1_rows(group)]
    summary["groups"].append(entry)
  summary["replicates"] = []
  for replicas in replicate_sets(groups):
    header, rows, values = replicate_rows(replicas)
    names = ", ".join(f"`{g.workdir}`" for g in replicas)
    md += [f"## {replicas[0].kind}: mean ± sd over {len(replicas)} sweeps", "",
           f"Final epoch of the same runs in {names} (population standard deviation).",
           "", markdown.table(header, rows)]
    summary["replicates"].append({"kind": replicas[0].kind,
                                  "sweeps": [g.workdir for g in replicas],
                                  "final": values})
  paths = {"markdown": fileio.join(out_dir, "report.md"),
           "json": fileio.join(out_dir, "report.json")}
  fileio.write_text(paths["markdown"], "\n".join(md).rstrip("\n") + "\n")
  fileio.write_text(paths["json"], json.dumps(summary, indent=1, allow_nan=False, default=str))
  return {"out": out_dir, **paths, "groups": groups, "figures": figures}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    result = write_report(FLAGS.workdirs or [], FLAGS.out)
  except errors.HfcError as e:
    print(f"hfc_jax: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {result['markdown']} ({len(result['figures'])} figures)")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdirs")
  app.run(main)
