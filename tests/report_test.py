"""`python -m hfc_jax.report` on synthetic workdirs: files, figure structure, tables, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from hfc_jax import defaults
from hfc_jax.reporting import plots, report
from hfc_jax.workdir import workdirs

RADII = (4, 8, 12, 16)
EPOCHS = 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def value(run: int, epoch: int, key: str) -> float:
  """A distinct, known accuracy in [0, 1] for every (run, epoch, key)."""
  code = sum(ord(c) * (i + 1) for i, c in enumerate(key)) % 97
  return round(0.05 + 0.2 * run + 0.02 * epoch + 0.001 * code, 4)


def records(run: int, radii=RADII, epochs=EPOCHS) -> list[dict]:
  recs = []
  for e in range(1, epochs + 1):
    rec = {"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "train_time_s": 2.0,
           "epoch_time_s": 2.5 + run, "test/loss": 1.0}
    for key in ["train_accuracy", "test/clean", "train_eval/clean"] + [
        f"{split}/{part}_{r:g}" for split in ("test", "train_eval")
        for part in ("lfc", "hfc") for r in radii]:
      rec[key] = value(run, e, key)
    recs.append(rec)
  if 8 in radii:
    recs[1]["test/hfc_8"] = None        # a null value is a gap, not a crash
  return recs


def write_run(path, recs, config=None):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for rec in recs:
      f.write(json.dumps(rec) + "\n")
  if config is not None:
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(config, f)


def write_sweep(path, name, kind, runs):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "sweep.json"), "w") as f:
    json.dump({"name": name, "kind": kind, "runs": runs}, f)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """A heuristics sweep (3 runs + 1 not started), a train_component sweep, a
  batch_size sweep and a single run dir."""
  root = tmp_path_factory.mktemp("report")
  heur = root / "heur"
  names = ["vanilla", "dropout", "mixup"]
  for i, name in enumerate(names):
    write_run(heur / name, records(i), {"model": {"norm": "none"}} if i else None)
  write_sweep(heur, "heuristics", "heuristics",
              [{"name": n, "workdir": n, "overrides": {}} for n in names + ["adv"]])
  comp = root / "comp"
  specs = [("hfc8", "hfc", 8, True), ("lfc16", "lfc", 16, True), ("orig", "original", None, True),
           ("lfc4", "lfc", 4, False)]     # lfc4: no config.json, only the overrides say
  for i, (name, component, radius, has_config) in enumerate(specs):
    config = {"train": {"input_component": component, "input_radius": radius}}
    write_run(comp / name, records(i), config if has_config else None)
  write_sweep(comp, "train on one component", "train_component", [
      {"name": n, "workdir": n,
       "overrides": {"train.input_component": c, "train.input_radius": r}}
      for n, c, r, _ in specs])
  batch = root / "batch"
  for i in range(2):
    write_run(batch / f"b{i}", records(i))
  write_sweep(batch, "batch", "batch_size",
              [{"name": f"batch {64 * (i + 1)}", "workdir": f"b{i}"} for i in range(2)])
  write_run(root / "single", records(2, radii=(4, 8)))
  return root


def panel_lines(ax):
  return {line.get_label(): line for line in ax.get_lines()}


def test_panel_figure_structure():
  runs = {"a": records(0), "b": records(1), "c": records(2, radii=(4, 12))}
  for split, extra in (("test", 2), ("train_eval", 1)):
    fig = plots.panel_figure(runs, split)
    assert len(fig.axes) == len(runs)
    colours = {}
    for ax, (name, recs) in zip(fig.axes, runs.items()):
      assert ax.get_title() == name
      assert ax.get_ylim() == (0.0, 1.0)
      radii = plots.radii(recs, split)
      assert len(ax.get_lines()) == 2 * len(radii) + extra
      lines = panel_lines(ax)
      for r in radii:
        lfc, hfc = lines[f"LFC r={r}"], lines[f"HFC r={r}"]
        assert lfc.get_linestyle() == "-" and hfc.get_linestyle() == "--"
        assert to_rgba(lfc.get_color()) == to_rgba(hfc.get_color())
        colours.setdefault(r, set()).add(to_rgba(lfc.get_color()))
        for line, part in ((lfc, "lfc"), (hfc, "hfc")):
          want = [rec[f"{split}/{part}_{r}"] for rec in recs]
          want = np.array([np.nan if v is None else v for v in want])
          np.testing.assert_array_equal(line.get_xdata(), np.arange(1, EPOCHS + 1))
          np.testing.assert_array_equal(line.get_ydata(), want)
      clean = lines[f"{split} clean"]
      assert to_rgba(clean.get_color()) == to_rgba("black")
      np.testing.assert_array_equal(clean.get_ydata(), [r[f"{split}/clean"] for r in recs])
      if split == "test":
        train = lines["train accuracy"]
        assert train.get_linestyle() == ":"
        np.testing.assert_array_equal(train.get_ydata(), [r["train_accuracy"] for r in recs])
    assert all(len(c) == 1 for c in colours.values())      # one colour per radius ...
    assert len({next(iter(c)) for c in colours.values()}) == len(RADII)   # ... all distinct
    assert np.isnan(panel_lines(fig.axes[0])["HFC r=8"].get_ydata()[1]) == (split == "test")


def test_overlay_figure():
  runs = {"x": records(0), "y": records(1)}
  fig = plots.overlay_figure(runs)
  (ax,) = fig.axes
  lines = ax.get_lines()
  assert len(lines) == 2 * len(runs)
  for i, recs in enumerate(runs.values()):
    test, train = lines[2 * i], lines[2 * i + 1]
    assert test.get_linestyle() == "-" and train.get_linestyle() == "--"
    assert to_rgba(test.get_color()) == to_rgba(train.get_color())
    np.testing.assert_array_equal(test.get_ydata(), [r["test/clean"] for r in recs])
    np.testing.assert_array_equal(train.get_ydata(), [r["train_accuracy"] for r in recs])
  assert to_rgba(lines[0].get_color()) != to_rgba(lines[2].get_color())


@pytest.fixture(scope="module")
def result(tree):
  dirs = [str(tree / d) for d in ("heur", "comp", "batch", "single")]
  return report.write_report(dirs, str(tree / "out"))


def is_png(path) -> bool:
  with open(path, "rb") as f:
    head = f.read(8)
  return os.path.getsize(path) > 1000 and head == PNG_SIGNATURE


def test_report_files_and_figures(result, tree):
  expected = {"heuristics_panels_test.png", "heuristics_panels_train_eval.png",
              "train_on_one_component_panels_test.png",
              "train_on_one_component_panels_train_eval.png",
              "batch_panels_test.png", "batch_panels_train_eval.png", "batch_curves.png",
              "runs_panels_test.png", "runs_panels_train_eval.png"}
  assert set(result["figures"]) == expected
  for name in expected:
    assert is_png(tree / "out" / name), name
  heur = result["figures"]["heuristics_panels_test.png"]
  assert [ax.get_title() for ax in heur.axes] == ["vanilla", "dropout", "mixup"]
  assert all(len(ax.get_lines()) == 2 * len(RADII) + 2 for ax in heur.axes)
  assert len(result["figures"]["batch_curves.png"].axes[0].get_lines()) == 4
  single = result["figures"]["runs_panels_train_eval.png"]
  assert [ax.get_title() for ax in single.axes] == ["single"]
  assert len(single.axes[0].get_lines()) == 2 * 2 + 1

  md = open(result["markdown"]).read()
  for name in expected:
    assert f"]({name})" in md
  assert "## heuristics" in md and "Kind: `heuristics`. Paper: Figure 5" in md
  assert "Paper: Table 1" in md and "Paper: Figure 4" in md
  assert "python -m hfc_jax.report --workdirs=" in md
  assert "Missing (no epoch recorded yet): `adv`" in md      # reported, no crash
  assert "| adv | missing |" in md


def test_report_json_final_numbers(result):
  summary = json.load(open(result["json"]))
  heur = summary["groups"][0]
  assert heur["kind"] == "heuristics" and heur["missing"] == ["adv"]
  dropout = heur["runs"]["dropout"]
  assert dropout["epochs"] == EPOCHS
  assert dropout["wall_time_s"] == pytest.approx(EPOCHS * 3.5)
  assert dropout["final"] == records(1)[-1]
  assert heur["runs"]["adv"]["missing"] is True
  assert summary["command"].startswith("python -m hfc_jax.report --workdirs=")


def test_final_table_values(result):
  group = result["groups"][0]
  md = report.final_table(group)
  lines = md.splitlines()
  assert lines[0] == ("| run | epochs | wall time | train acc | test clean | "
                      + " | ".join(f"LFC r={r}" for r in RADII) + " | "
                      + " | ".join(f"HFC r={r}" for r in RADII) + " |")
  last = records(2)[-1]
  want = ["mixup", "5", "22 s", f"{last['train_accuracy']:.4f}", f"{last['test/clean']:.4f}"]
  want += [f"{last[f'test/lfc_{r}']:.4f}" for r in RADII]
  want += [f"{last[f'test/hfc_{r}']:.4f}" for r in RADII]
  assert lines[4] == "| " + " | ".join(want) + " |"


def test_table1(result):
  group = result["groups"][1]
  rows = report.table1_rows(group)
  assert [(r["component"], r["radius"]) for r in rows] == [
      ("lfc", 4.0), ("lfc", 16.0), ("hfc", 8.0), ("original", None)]
  run_index = {"hfc8": 0, "lfc16": 1, "orig": 2, "lfc4": 3}
  for row in rows:
    last = records(run_index[row["run"]])[-1]
    assert row["train_accuracy"] == last["train_accuracy"]
    assert row["test_clean"] == last["test/clean"]
    if row["radius"] is not None:
      assert row["test_same"] == last[f"test/{row['component']}_{row['radius']:g}"]
  md = report.table1(group).splitlines()
  last = records(0)[-1]
  assert md[4] == (f"| hfc8 | HFC | 8 | {last['train_accuracy']:.4f} | "
                   f"{last['test/clean']:.4f} | {last['test/hfc_8']:.4f} |")
  assert md[5].startswith("| orig | original | - |") and md[5].endswith("| n/a |")
  assert "### Table 1" in open(result["markdown"]).read()


def test_metrics_reader_skips_a_partial_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps(records(0)[0]) + "\n" + '{"epoch": 2, "test/cl')
  assert workdirs.read_metrics(str(path)) == records(0)[:1]
  path.write_text('{"epoch": 1\n' + json.dumps(records(0)[0]) + "\n")
  with pytest.raises(report.errors.HfcError, match="--workdirs=.*line 1 is not JSON"):
    workdirs.read_metrics(str(path))


def test_main_in_process(tree, capsys):
  out = tree / "out_main"
  try:
    report.FLAGS(["report", f"--workdirs={tree / 'comp'}", f"--out={out}"])
    report.main(["report"])
  finally:
    report.FLAGS.unparse_flags()
  assert is_png(out / "train_on_one_component_panels_test.png")
  md = (out / "report.md").read_text()
  assert f"--workdirs={tree / 'comp'} --out={out}" in md
  assert "wrote" in capsys.readouterr().out


def _cli(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "hfc_jax.report", *args],
                        capture_output=True, text=True, timeout=60, cwd=cwd)


def test_subprocess_default_out(tree):
  proc = _cli(f"--workdirs={tree / 'heur'},{tree / 'single'}")
  assert proc.returncode == 0, proc.stderr
  out = tree / "heur" / "report"
  for name in ("heuristics_panels_test.png", "runs_panels_test.png", "report.md",
               "report.json"):
    assert (out / name).stat().st_size > 0
  assert is_png(out / "heuristics_panels_test.png")


def test_report_does_not_import_jax():
  code = "import sys, hfc_jax.reporting.report; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("make", ["absent", "empty"])
@pytest.mark.slow
def test_bad_workdirs_one_line_error(tmp_path, make):
  target = tmp_path / "nothing"
  if make == "empty":
    target.mkdir()
    (target / "notes.txt").write_text("hello")
  proc = _cli(f"--workdirs={target}")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"hfc_jax: error: --workdirs='{target}'")
  assert not (target / "report").exists()


@pytest.mark.slow
def test_replicated_sweeps_get_mean_and_sd(tmp_path):
  """The same sweep run with other seeds: one mean ± sd table over the replicas."""
  dirs = []
  for seed, model in [(0, "small_cnn"), (1, "small_cnn"), (2, "small_cnn"),
                      (0, "plain_cnn"), (1, "plain_cnn")]:
    sweep_dir = tmp_path / f"{model}_seed{seed}"
    for i, name in enumerate(["vanilla", "bn"]):
      recs = records(i)
      recs[-1]["test/clean"] = 0.5 + 0.1 * seed + 0.2 * i     # final values to average
      if model == "plain_cnn":
        recs[-1]["test/clean"] += 0.05
      write_run(sweep_dir / name, recs, {"seed": seed, "model": {"name": model}})
    write_sweep(sweep_dir, "heuristics", "heuristics",
                [{"name": n, "workdir": n, "overrides": {}} for n in ("vanilla", "bn")])
    dirs.append(str(sweep_dir))
  out = report.write_report(dirs, str(tmp_path / "out"))
  summary = json.loads(open(out["json"]).read())
  # Two sets: the seeds of each model; the models are never averaged together.
  (replicas, other) = summary["replicates"]
  assert other["sweeps"] == dirs[3:]
  np.testing.assert_allclose(other["final"]["bn"]["test/clean"], [0.75, 0.85])
  dirs = dirs[:3]
  out = report.write_report(dirs, str(tmp_path / "out"))
  summary = json.loads(open(out["json"]).read())
  (replicas,) = summary["replicates"]
  assert replicas["kind"] == "heuristics" and replicas["sweeps"] == dirs
  np.testing.assert_allclose(replicas["final"]["bn"]["test/clean"], [0.7, 0.8, 0.9])
  text = open(out["markdown"]).read()
  sd = np.std([0.5, 0.6, 0.7])                               # population sd: 0.0816
  assert f"| vanilla | 3 | {value(0, EPOCHS, 'train_accuracy'):.3f} ± 0.000 | " \
         f"0.600 ± {sd:.3f} |" in text
  assert "heuristics: mean ± sd over 3 sweeps" in text
  # A single sweep, or sweeps whose runs differ, get no replicate table.
  assert report.replicate_sets(report.collect(dirs[:1])) == []


def test_runs_differing_only_in_bookkeeping_are_replicates(tmp_path):
  """TensorBoard on or off, another checkpoint or logging interval: the same
  experiment, averaged; another number of epochs in the same config section is not."""
  configs = [
      {"seed": 0, "tensorboard": False, "train": {"epochs": 6, "log_every_steps": 25},
       "checkpoint": {"every_steps": 500}},
      {"seed": 1, "tensorboard": True, "train": {"epochs": 6, "log_every_steps": 10},
       "checkpoint": {"every_steps": 0}},
      {"seed": 2, "tensorboard": True, "train": {"epochs": 5, "log_every_steps": 25},
       "checkpoint": {"every_steps": 500}},
  ]
  dirs = []
  for i, config in enumerate(configs):
    sweep_dir = tmp_path / f"seed{i}"
    write_run(sweep_dir / "vanilla", records(0), config)
    write_sweep(sweep_dir, "heuristics", "heuristics",
                [{"name": "vanilla", "workdir": "vanilla", "overrides": {}}])
    dirs.append(str(sweep_dir))
  (replicas,) = report.replicate_sets(report.collect(dirs))
  assert [g.workdir for g in replicas] == dirs[:2]
  assert report.replicate_key(configs[0]) == report.replicate_key(configs[1])
  assert report.replicate_key(configs[0]) != report.replicate_key(configs[2])
  assert "epochs" in report.replicate_key(configs[0])


def test_each_table_says_which_commit_and_command_made_it(tmp_path):
  sweep_dir = tmp_path / "sweep"
  starts = {"vanilla": [("a" * 40, "cmd one")], "bn": [("a" * 40, "cmd one"),
                                                       ("b" * 40, "cmd two")]}
  for i, name in enumerate(starts):
    write_run(sweep_dir / name, records(i))
    with open(sweep_dir / name / "provenance.jsonl", "w") as f:
      for step, (commit, command) in enumerate(starts[name]):
        f.write(json.dumps({"step": step, "commit": commit, "dirty": False,
                            "versions": {"jax": "0.10.2"}, "command": command}) + "\n")
  write_sweep(sweep_dir, "heuristics", "heuristics",
              [{"name": n, "workdir": n, "overrides": {}} for n in starts])
  out = report.write_report([str(sweep_dir)], str(tmp_path / "out"))
  text = open(out["markdown"]).read()
  assert ("Made by commit aaaaaaa, jax 0.10.2, with `cmd one`; "
          "commit bbbbbbb, jax 0.10.2, with `cmd two`.") in text
  summary = json.loads(open(out["json"]).read())
  assert [s["commit"] for s in summary["groups"][0]["runs"]["bn"]["starts"]] == ["a" * 40,
                                                                              "b" * 40]


def test_runs_made_from_two_data_dirs_are_replicates(tmp_path):
  """The same experiment run on two machines, each reading CIFAR-10 from its own TFDS
  directory (data.data_dir has the role 'machine'), is averaged as one; another data
  set is not."""
  def config(seed, data_dir, name="cifar10"):
    full = defaults.get_config().to_dict()
    full["seed"], full["data"]["name"], full["data"]["data_dir"] = seed, name, data_dir
    return full
  configs = [config(0, "/home/a/tensorflow_datasets"), config(1, "gs://bucket/tfds"),
             config(2, "/data/tfds", name="cifar100")]
  dirs = []
  for i, run_config in enumerate(configs):
    sweep_dir = tmp_path / f"machine{i}"
    write_run(sweep_dir / "vanilla", records(i), run_config)
    write_sweep(sweep_dir, "heuristics", "heuristics",
                [{"name": "vanilla", "workdir": "vanilla", "overrides": {}}])
    dirs.append(str(sweep_dir))
  (replicas,) = report.replicate_sets(report.collect(dirs))
  assert [g.workdir for g in replicas] == dirs[:2]
  summary = json.loads(open(report.write_report(dirs, str(tmp_path / "out"))["json"]).read())
  (averaged,) = summary["replicates"]
  assert averaged["sweeps"] == dirs[:2]
  np.testing.assert_allclose(averaged["final"]["vanilla"]["test/clean"],
                             [records(0)[-1]["test/clean"], records(1)[-1]["test/clean"]])


def test_an_old_norm_name_is_the_same_experiment():
  """A run recorded with model.norm='batch_stats' (the name before 'paper_bn') is a
  replicate of one recorded with the current name; 'batchnorm' is another experiment."""
  def config(seed, norm):
    full = defaults.get_config().to_dict()
    full["seed"], full["model"]["norm"] = seed, norm
    return full
  assert report.replicate_key(config(0, "batch_stats")) == report.replicate_key(
      config(1, "paper_bn"))
  assert report.replicate_key(config(0, "batch_stats")) != report.replicate_key(
      config(1, "batchnorm"))
