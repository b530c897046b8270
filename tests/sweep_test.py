"""Sweeps: a config that expands into several runs, each in its own sub-workdir."""

import json
import os
import subprocess
import sys

import pytest

from configs import (fig3_shuffled_labels, fig4_batch_size, fig5_heuristics, fig6_bn_lfc,
                     optimizers_sweep, table1_lfc_hfc)
from hfc_jax import errors, main, presets
from hfc_jax.run import sweep
from tests.conftest import config_from_flags, tiny_config

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep_config(runs):
  return presets.set_sweep(tiny_config(), "generic", runs)


def test_expand_applies_each_runs_overrides_in_order():
  config = _sweep_config([("b", {"model": {"dropout": 0.5}}),
                          ("a", {"optim": {"name": "sgd", "learning_rate": 0.1}})])
  runs = sweep.expand(config)
  assert [name for name, _, _ in runs] == ["b", "a"]       # the order of sweep.runs
  (_, b, flat_b), (_, a, flat_a) = runs
  assert b.model.dropout == 0.5 and b.optim.name == config.optim.name
  assert a.optim.name == "sgd" and a.optim.learning_rate == 0.1 and a.model.dropout == 0.0
  assert flat_a == {"optim.name": "sgd", "optim.learning_rate": 0.1}
  assert not sweep.is_sweep(a) and not sweep.is_sweep(b)   # a run holds no sweep
  assert config.model.dropout == 0.0                        # the base is untouched


@pytest.mark.parametrize("runs,names,match", [
    ([("a", {"model": {"dropot": 0.5}})], None, "sweep.overrides.a.model.dropot"),
    ([("a", {"modle": {"dropout": 0.5}})], None, "no section 'modle'"),
    ([("a", {"train": {"epochs": "many"}})], None, "sweep.overrides.a.train.epochs='many'"),
    ([("a", {})], ("a", "b"), "'b' has no entry in sweep.overrides"),
    ([("a/b", {})], None, "'a/b' is not a valid run name"),
    ([("a", {})], ("a", "a"), "names a run twice"),
])
def test_bad_sweeps_are_one_line_errors(runs, names, match):
  config = _sweep_config(runs)
  if names:
    config.sweep.runs = names
  with pytest.raises(errors.HfcError, match=match) as e:
    sweep.expand(config)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("module,kind,count", [
    (fig5_heuristics, "heuristics", 7), (fig4_batch_size, "batch_size", 4),
    (optimizers_sweep, "optimizers", 5), (table1_lfc_hfc, "train_component", 8),
    (fig3_shuffled_labels, "shuffled_labels", 2), (fig6_bn_lfc, "bn_lfc", 2)])
@pytest.mark.parametrize("dataset", presets.DATASETS)
def test_experiment_configs_expand_for_every_data_set(module, kind, count, dataset):
  config = module.get_config(dataset)
  runs = sweep.expand(config)
  assert config.sweep.kind == kind and len(runs) == count
  if module is table1_lfc_hfc:
    assert {(c.train.input_component, c.train.input_radius) for _, c, _ in runs} == {
        (comp, float(r)) for comp in ("lfc", "hfc") for r in (4, 8, 12, 16)}
  if module is fig5_heuristics:
    by_name = {name: c for name, c, _ in runs}
    assert by_name["mixup_paper"].train.mixup_alpha == 0.5
    assert by_name["mixup_code"].train.mixup_alpha == 1.0
    assert by_name["bn_paper"].model.norm == "paper_bn"
    assert by_name["bn_standard"].model.norm == "batchnorm"
    assert by_name["vanilla"].model.norm == "none" and by_name["adversarial"].adv.enabled


@pytest.mark.slow
def test_sweep_runs_two_tiny_variants_end_to_end(tmp_path):
  workdir = tmp_path / "sweep"
  flags = ("--config.sweep.runs=('vanilla','mixup_code')",
           "--config.data.num_train=256", "--config.data.num_test=128",
           "--config.train.epochs=1", "--config.train.batch_size=64",
           "--config.eval.batch_size=128", "--config.eval.train_subset=128",
           "--config.tensorboard=False")
  # The first run in this process (the config these flags give); the second is the
  # command itself, which must find the same sweep and both its runs finished.
  main.run(config_from_flags(*flags, config="configs/fig5_heuristics.py", tiny=False),
           str(workdir))
  described = json.loads((workdir / "sweep.json").read_text())
  assert described["kind"] == "heuristics"
  assert [r["name"] for r in described["runs"]] == ["vanilla", "mixup_code"]
  assert described["runs"][1]["overrides"] == {"train.mixup_alpha": 1.0}
  for name, alpha in (("vanilla", 0.0), ("mixup_code", 1.0)):
    run_dir = workdir / name
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and records[0]["step"] == 256 // 64
    written = json.loads((run_dir / "config.json").read_text())
    assert written["train"]["mixup_alpha"] == alpha and written["sweep"]["runs"] == []
    assert os.listdir(run_dir / "checkpoints") == ["4"]       # keyed by step
  report = (workdir / "report" / "report.md").read_text()
  assert "sweep_panels_test.png" in report and "mixup_code" in report
  assert (workdir / "report" / "sweep_panels_test.png").stat().st_size > 1000
  # Running the same command resumes: both runs are finished, nothing retrains.
  command = [sys.executable, "-m", "hfc_jax.main", "--config=configs/fig5_heuristics.py",
             f"--workdir={workdir}", *flags]
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "images/s" not in again.stderr       # no training progress lines the second time
  assert again.stdout.count("is finished: it holds all 1 epochs") == 2


@pytest.mark.slow
def test_a_bad_override_fails_before_any_run(tmp_path):
  """In process (main_test runs a refusal's exit status 2 and its stderr line)."""
  config = config_from_flags("--config.sweep.runs=('vanilla','nope')",
                             config="configs/fig5_heuristics.py", tiny=False)
  with pytest.raises(errors.HfcError) as raised:
    main.run(config, str(tmp_path / "w"))
  assert str(raised.value).startswith("sweep.runs: 'nope'") and "\n" not in str(raised.value)
  assert not (tmp_path / "w").exists()
