"""evaluate.accumulate and the per-epoch evaluator registry (hfc_jax/evaluators.py)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hfc_jax import adversarial, defaults, errors, evaluate, evaluators, optimizers
from hfc_jax import sharding, smoothness, train
from hfc_jax import data as data_lib
from hfc_jax.workdir.layout import Workdir
from tests.conftest import random_batch, tiny_config


# ---------------------------------------------------------------------------
# evaluate.accumulate
# ---------------------------------------------------------------------------
@jax.jit
def _masked_sums(images, labels, mask):
  """Per-batch sums over the real rows: pixel sum per channel (C,), label sum, rows."""
  x = images.astype(jnp.float32)
  return {"pixels": jnp.sum(x * mask[:, None, None, None], axis=(0, 1, 2)),
          "labels": jnp.sum(labels * mask), "count": jnp.sum(mask)}


def test_accumulate_equals_numpy_sums_over_padded_batches():
  """900 images in batches of 500 real ones on 8 devices (504 rows each, the last batch
  400 real + 104 padding rows): the sums over the real rows only, fetched as numpy."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (900, 4, 4, 3), dtype=np.uint8)
  y = rng.integers(0, 10, 900).astype(np.int32)
  mesh = sharding.make_mesh(8)
  placed = list(evaluate.eval_batches(x, y, mesh=mesh, batch_size=500))
  assert [b[0].shape[0] for b in placed] == [504, 504]
  assert [float(b[2].sum()) for b in placed] == [500.0, 400.0]
  with jax.transfer_guard("disallow"):    # no implicit transfer: one explicit fetch
    totals = evaluate.accumulate(_masked_sums, placed)
  assert all(isinstance(v, np.ndarray) for v in totals.values())
  np.testing.assert_array_equal(totals["pixels"], x.astype(np.float64).sum(axis=(0, 1, 2)))
  assert totals["labels"] == y.sum() and totals["count"] == 900


def test_accumulate_of_hand_computed_batches_and_extra_arguments():
  """Three batches with a per-batch key-like argument: 1 + 2 + 3 rows, 10 * index added."""
  fn = jax.jit(lambda v, k: {"sum": jnp.sum(v) + 10.0 * k, "n": jnp.float32(v.size)})
  batches = [(np.ones(1, np.float32), 0), (np.full(2, 2, np.float32), 1),
             (np.full(3, 3, np.float32), 2)]
  totals = evaluate.accumulate(fn, iter(batches))    # a generator works too
  assert float(totals["sum"]) == 1 + 4 + 9 + 10 * (0 + 1 + 2)
  assert float(totals["n"]) == 6
  with pytest.raises(ValueError, match="no batches"):
    evaluate.accumulate(fn, [])


# ---------------------------------------------------------------------------
# The registry and its check
# ---------------------------------------------------------------------------
def _eval_config(names):
  """An eval section as a hand-written or JSON-read config may have it (any type)."""
  return ml_collections.ConfigDict({**defaults.get_config().eval.to_dict(),
                                    "evaluators": names})


def test_default_list_and_old_configs_without_the_field():
  assert defaults.get_config().eval.evaluators == ("lfc_hfc", "attack", "smoothness")
  old = defaults.get_config().to_dict()
  del old["eval"]["evaluators"]
  assert defaults.complete(old).eval.evaluators == ("lfc_hfc", "attack", "smoothness")
  evaluators.check_evaluators(defaults.get_config().eval)
  assert list(evaluators.REGISTRY) == ["lfc_hfc", "clean", "attack", "smoothness"]


def test_an_unknown_or_repeated_evaluator_is_one_error_line_naming_the_field():
  allowed = "'lfc_hfc', 'clean', 'attack', 'smoothness'"
  with pytest.raises(errors.HfcError) as info:
    evaluators.check_evaluators(_eval_config(("lfc_hfc", "pgd")))
  assert str(info.value) == ("eval.evaluators=('lfc_hfc', 'pgd'): 'pgd' is not an "
                             f"evaluator; choose from: {allowed}.")
  for bad in ((), "lfc_hfc"):
    with pytest.raises(errors.HfcError, match=r"^eval.evaluators=.* must be a non-empty "
                                              rf"tuple .*{allowed}\.$"):
      evaluators.check_evaluators(_eval_config(bad))
  for bad in (("attack", "attack"), ("clean", "lfc_hfc")):
    with pytest.raises(errors.HfcError, match=r"^eval.evaluators=.* records a metric twice"):
      evaluators.check_evaluators(_eval_config(bad))


# ---------------------------------------------------------------------------
# The scorer
# ---------------------------------------------------------------------------
def _setup(config, mesh):
  """An untrained tiny model's state and two eval sets of 100 and 60 images."""
  model = train.create_model(config, 10, 3, 32)
  tx = optimizers.make_optimizer(config.optim, 10, 1)
  functional, state = train.create_train_state(model, tx, 0, mesh)
  eval_sets = {"test": random_batch(100, seed=1), "train_eval": random_batch(60, seed=2)}
  return functional, state, eval_sets


@pytest.mark.slow
def test_default_list_gives_the_metrics_of_the_fixed_scorer_in_order():
  """The keys (and their order) and values of the scorer the trainer had before the
  registry: variant accuracies and loss per set, then test/pgd, then smoothness."""
  mesh = sharding.make_mesh(8)
  config = tiny_config(**{"eval.radii": (4, 8), "eval.bands": ((0, 4),),
                          "eval.batch_size": 48, "eval.robust_subset": 50,
                          "eval.robust_steps": 2, "eval.robust_eps": 0.004})
  functional, state, eval_sets = _setup(config, mesh)
  record = train.make_scorer(config, functional, mesh, eval_sets, None)(state)
  per_set = ["clean", "lfc_4", "lfc_8", "hfc_4", "hfc_8", "band_0_4", "loss"]
  assert list(record) == ([f"test/{k}" for k in per_set] + [f"train_eval/{k}" for k in per_set]
                          + ["test/pgd", "first_conv_smoothness"])
  radii, bands = (4.0, 8.0), ((0.0, 4.0),)
  fn = evaluate.make_eval_fn(functional.logits, mesh, radii=radii, bands=bands,
                             inclusive=False, rescale="none")
  expected = {}
  for prefix, (x, y) in eval_sets.items():
    scores = evaluate.variant_accuracies(fn, state.params, state.model_state, x, y,
                                         mesh=mesh, batch_size=48, radii=radii, bands=bands)
    expected.update({f"{prefix}/{k}": v for k, v in scores.items()})
  robust = adversarial.robust_evaluator(config, None, functional, mesh, *eval_sets["test"])
  expected["test/pgd"] = robust(state.params, state.model_state)
  expected["first_conv_smoothness"] = float(smoothness.first_conv_penalty(state.params))
  assert record == expected
  assert 0 < record["test/pgd"] <= record["test/clean"] + 0.02   # 50 vs 100 images
  # Without adversarial training or eval.robust_subset, 'attack' adds nothing.
  config.eval.robust_subset = 0
  plain = train.make_scorer(config, functional, mesh, eval_sets, None)(state)
  assert list(plain) == [k for k in record if k != "test/pgd"]


def test_clean_alone_scores_the_clean_images_only():
  mesh = sharding.make_mesh(8)
  config = tiny_config(**{"eval.batch_size": 48, "eval.evaluators": ("clean",)})
  functional, state, eval_sets = _setup(config, mesh)
  record = train.make_scorer(config, functional, mesh, eval_sets, None)(state)
  assert list(record) == ["test/clean", "test/loss", "train_eval/clean", "train_eval/loss"]
  logits = jax.jit(functional.logits)
  for prefix, (x, y) in eval_sets.items():
    # Reference: each batch of 48 real images scored alone, unpadded, as one forward pass.
    hits = sum(np.sum(np.argmax(np.asarray(logits(state.params, state.model_state,
                                                  x[i:i + 48].astype(np.float32) / 255)),
                                -1) == y[i:i + 48]) for i in range(0, len(y), 48))
    assert record[f"{prefix}/clean"] == hits / len(y)


@pytest.mark.slow
def test_a_registered_evaluator_is_recorded_in_metrics_jsonl(tmp_path, monkeypatch):
  """A custom evaluator, registered in one function, runs each epoch after the listed
  ones; its metric is in the history and in metrics.jsonl, in list order."""
  calls = []

  def label_mean(ctx):
    _, y = ctx.eval_sets["test"]
    calls.append(len(y))
    return lambda state: {"test/label_mean": float(np.mean(y)),
                          "step_seen": int(state.step)}

  monkeypatch.setitem(evaluators.REGISTRY, "label_mean", label_mean)
  config = tiny_config(**{"train.epochs": 1, "eval.evaluators": ("clean", "label_mean")})
  workdir = str(tmp_path / "run")
  history = train.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(8))
  assert calls == [256]                       # built once per run, on the 256 test images
  lines = [json.loads(l) for l in open(Workdir.of(workdir).metrics)]
  for record in (history[-1], lines[-1]):
    scored = [k for k in record if "/" in k or k == "step_seen"]
    assert scored == ["test/clean", "test/loss", "train_eval/clean", "train_eval/loss",
                      "test/label_mean", "step_seen"]
    assert record["step_seen"] == 8 and "first_conv_smoothness" not in record
  y_test = data_lib.load(config.data).y_test
  assert lines[-1]["test/label_mean"] == pytest.approx(float(np.mean(y_test)))
