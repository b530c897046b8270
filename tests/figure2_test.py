"""The figure-2 analysis: the mask, the counts against NumPy, the mode end to end."""

import json
import os

import jax
import matplotlib.image
import numpy as np
import pytest

from hfc_jax import defaults, errors, main, optimizers, sharding, train
from hfc_jax.analysis import common, figure2
from hfc_jax.data import synthetic
from tests.conftest import numpy_split, run_main, tiny_config


def _embedded(**fields):
  """The embedded set of the default data config with `fields` changed."""
  return synthetic.from_config(defaults.complete({"data": fields}).data)


def test_mask_hand_computed():
  clean = np.array([0, 1, 2, 3, 4])
  lfc = np.array([[1, 1, 0, 3, 9],     # r0: differs at 0, 2, 4
                  [0, 2, 2, 0, 4]])    # r1: differs at 1, 3
  hfc = np.array([[0, 5, 2, 3, 4],     # r0: keeps at 0, 2, 3, 4
                  [7, 1, 2, 1, 4]])    # r1: keeps at 1, 2, 4
  mask = jax.jit(figure2.hfc_keeps_lfc_changes)(clean, lfc, hfc)
  np.testing.assert_array_equal(mask, [[True, False, True, False, True],
                                       [False, True, False, False, False]])
  preds = np.concatenate([clean[None], lfc, hfc])
  labels = np.array([0, 1, 0, 3, 4])
  out = figure2.summarise(preds, labels, (4, 8), num_examples=2)
  assert out["n"] == 5 and out["clean_correct"] == 4
  r0, r1 = out["radii"]
  assert (r0["count"], r0["count_correct"], r0["lfc_correct"], r0["hfc_correct"]) == (3, 2, 3, 3)
  assert (r1["count"], r1["count_correct"], r1["lfc_correct"], r1["hfc_correct"]) == (1, 1, 2, 2)
  assert [e["index"] for e in r0["examples"]] == [0, 2]
  assert r1["examples"] == [{"index": 1, "label": 1, "clean": 1, "lfc": 2, "hfc": 1}]


def _reference_predictions(functional, params, model_state, x, radii, batch_size):
  """(1 + 2R, N) predictions from the NumPy split, scored in the same batches of real
  images, unpadded (the batch-statistic norm makes a prediction depend on its batch;
  padding rows never enter it), and the smallest top-2 logit gap seen (float error
  could only flip a near tie)."""
  n = len(x)
  padded = np.zeros((-(-n // batch_size) * batch_size,) + x.shape[1:], np.float32)
  padded[:n] = x.astype(np.float32) / 255
  splits = [numpy_split(padded, r) for r in radii]
  variants = ([padded] + [s[0].astype(np.float32) for s in splits]
              + [s[1].astype(np.float32) for s in splits])
  logits_fn = jax.jit(functional.logits)
  preds, gap = [], np.inf
  for v in variants:
    logits = np.concatenate([
        np.asarray(logits_fn(params, model_state, v[i:min(i + batch_size, n)]))
        for i in range(0, n, batch_size)])
    top2 = np.sort(logits, axis=-1)[:, -2:]
    gap = min(gap, float(np.min(top2[:, 1] - top2[:, 0])))
    preds.append(np.argmax(logits, -1))
  return np.stack(preds), gap


@pytest.mark.parametrize("norm", ["paper_bn", "none"])
def test_counts_equal_numpy_computation_on_eight_devices(norm):
  config = tiny_config(**{"model.norm": norm})
  mesh = sharding.make_mesh(8)
  tx = optimizers.make_optimizer(config.optim, 1, 1)
  functional, state = train.create_train_state(train.create_model(config, 10, 3, 32), tx,
                                               config.seed, mesh)
  data = _embedded(seed=1, num_train=8, num_test=100, image_size=16)
  x, y = data["x_test"], data["y_test"]
  radii, batch = (2.0, 4.0, 6.0), 32          # 100 images: the last batch holds 4
  fn = figure2.make_predict_fn(functional.logits, mesh, radii=radii, inclusive=False,
                               rescale="none")
  preds = figure2.predictions(fn, state.params, state.model_state, x, mesh=mesh,
                              batch_size=batch)
  ref, gap = _reference_predictions(functional, state.params, state.model_state, x,
                                    radii, batch)
  assert gap > 1e-4
  np.testing.assert_array_equal(preds, ref)
  ours = figure2.summarise(preds, y, radii, num_examples=4)
  clean, lfc, hfc = ref[0], ref[1:4], ref[4:]
  for k, row in enumerate(ours["radii"]):
    direct = (hfc[k] == clean) & (lfc[k] != clean)
    assert row["count"] == int(direct.sum())
    assert row["count_correct"] == int((direct & (clean == y)).sum())
    assert row["lfc_correct"] == int((lfc[k] == y).sum())
    assert row["hfc_correct"] == int((hfc[k] == y).sum())
    assert row["n"] == 100
  assert sum(row["count"] for row in ours["radii"]) > 0   # the case is not vacuous


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("figure2") / "run")
  config = tiny_config(**{"data.num_train": 256, "data.num_test": 120, "train.epochs": 1,
                          "data.image_size": 16, "eval.radii": (4,),
                          "eval.train_subset": 64})
  train.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(8))
  return workdir, config


def _figure2_config(config):
  config = config.copy_and_resolve_references()
  config.mode = "figure2"
  config.figure2.radii = (4, 7)
  config.figure2.batch_size = 64               # 120 images: the last batch is padded
  config.figure2.grid_examples = 3
  return config


@pytest.mark.slow
def test_figure2_mode_writes_consistent_outputs(trained_workdir, capsys):
  workdir, config = trained_workdir
  results = main.run(_figure2_config(config), workdir)
  out = os.path.join(workdir, figure2.MODE)
  assert sorted(os.listdir(out)) == ["figure2.json", "figure2.md", "figure2.png", "provenance.json"]
  png = matplotlib.image.imread(os.path.join(out, "figure2.png"))
  assert png.ndim == 3 and min(png.shape[:2]) > 200 and png[..., :3].std() > 0.05
  on_disk = json.load(open(os.path.join(out, "figure2.json")))
  assert on_disk == json.loads(json.dumps(results))
  assert [row["radius"] for row in on_disk["radii"]] == [4.0, 7.0]
  # Recompute from the restored model: the split in the same padded batches.
  trained = common.restore(workdir)
  data = _embedded(seed=0, num_train=256, num_test=120, image_size=16)
  x, y = data["x_test"], data["y_test"]
  ref, _ = _reference_predictions(trained.functional, trained.params, trained.model_state,
                                  x, (4, 7), 64)
  for k, row in enumerate(on_disk["radii"]):
    direct = (ref[3 + k] == ref[0]) & (ref[1 + k] != ref[0])
    assert row["n"] == 120 and row["count_correct"] <= row["count"] <= row["n"]
    assert row["count"] == int(direct.sum())
    assert [e["index"] for e in row["examples"]] == list(np.flatnonzero(direct)[:3])
  assert on_disk["clean_correct"] == int((ref[0] == y).sum())
  table = open(os.path.join(out, "figure2.md")).read()
  assert f"| 7 | {on_disk['radii'][1]['count']} |" in table
  printed = capsys.readouterr().out
  assert "figure2 r=4:" in printed and "figure2 r=7:" in printed
  # At the run's eval batch size the counts are the recorded test accuracies.
  config = _figure2_config(config)
  config.figure2.radii, config.figure2.batch_size = (4,), 0
  again = main.run(config, workdir)
  record = trained.history[-1]
  assert again["batch_size"] == 128
  assert again["clean_correct"] / 120 == pytest.approx(record["test/clean"], abs=1e-6)
  assert again["radii"][0]["lfc_correct"] / 120 == pytest.approx(record["test/lfc_4"], abs=1e-6)
  assert again["radii"][0]["hfc_correct"] / 120 == pytest.approx(record["test/hfc_4"], abs=1e-6)
  # The grid: 3 columns per radius, one row per example; titles name the predictions.
  fig = figure2.plot_grid(x, results, figure2.CIFAR10_NAMES, inclusive=False)
  rows = max(len(r["examples"]) for r in results["radii"])
  assert rows > 0 and len(fig.axes) == 6 * rows
  first = next(r for r in results["radii"] if r["examples"])["examples"][0]
  titles = " ".join(ax.get_title() for ax in fig.axes)
  assert f"pred: {figure2.CIFAR10_NAMES[first['hfc']]}" in titles and "HFC" in titles


@pytest.mark.slow
def test_figure2_bad_input(tmp_path, trained_workdir):
  workdir, config = trained_workdir
  config = _figure2_config(config)
  config.figure2.radii = (4, 17)
  with pytest.raises(errors.HfcError,
                     match=r"figure2.radii=17 is out of range; allowed: \[1, 16\]"):
    main.run(config, workdir)
  config.figure2.radii = (4,)
  config.figure2.batch_size = -1   # any positive size runs on any mesh (eval_padding_test)
  with pytest.raises(errors.HfcError, match=r"figure2.batch_size=-1 is out of range"):
    main.run(config, workdir)
  empty = tmp_path / "empty"
  result = run_main(empty, "--config.mode=figure2", timeout=120)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith("hfc_jax: error:")]
  assert len(lines) == 1 and "holds no checkpoint" in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr and not empty.exists()


def test_class_names():
  def data(**fields):
    return defaults.complete({"data": fields}).data
  assert figure2.class_names(data(name="cifar10"), 10)[3] == "cat"
  fashion = data(name="idx", path="/usr/share/datasets/fashion-mnist")
  assert figure2.class_names(fashion, 10)[9] == "ankle boot"
  assert figure2.class_names(data(name="embedded"), 10) is None
