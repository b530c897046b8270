"""Evaluation batches on any device count: masked padding never enters a batch statistic."""

import functools
import importlib
import inspect
import json
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from hfc_jax import attacks, errors, evaluate, frequency, main, models, presets, sharding
from hfc_jax import validation
from hfc_jax import data as data_lib
from hfc_jax.data import pipeline
from hfc_jax.models import layers, preact_resnet
from hfc_jax.models.functional import Functional
from hfc_jax.run import sweep
from tests.conftest import config_from_flags, xla_flags_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAMES = ("small_cnn", "plain_cnn", "resnet18", "preact_resnet32")
# Every layer and norm of the default models, with few distinct kernel shapes (each costs
# compiles): small_cnn's are those of the default config's model
# (trained below), plain_cnn's convs and head reuse them, resnet18 and preact_resnet32
# are narrow (input_conv_test builds the same widths).
WIDTHS = {"small_cnn": (16, 32, 64, 64), "plain_cnn": (16, 32, 64, 64),
          "resnet18": (8, 8, 8, 8), "preact_resnet32": (8, 8, 8)}


def _paper_bn_model(name, seed=0):
  return Functional.split(models.create(name, num_classes=10, in_channels=3,
                                        norm="paper_bn", image_size=(8, 8), seed=seed,
                                        widths=WIDTHS[name]))


def _pad(x, extra, fill=0.0):
  """x (N, ...) with `extra` rows of `fill` appended, and the (N + extra,) mask."""
  pad = np.full((extra,) + x.shape[1:], fill, x.dtype)
  mask = np.r_[np.ones(len(x)), np.zeros(extra)].astype(np.float32)
  return np.concatenate([x, pad]), mask


# ---------------------------------------------------------------------------
# The masked norm and models
# ---------------------------------------------------------------------------
def test_masked_paper_bn_norm_equals_numpy_on_the_real_rows():
  x = np.random.default_rng(0).normal(2.0, 3.0, (7, 5, 5, 4)).astype(np.float32)
  mask = np.array([1, 0, 1, 1, 0, 1, 1], np.float32)
  x[mask == 0] = 100.0                       # padding far from the data
  real = x[mask > 0]
  mean = real.mean(axis=(0, 1, 2))
  var = ((real - mean) ** 2).mean(axis=(0, 1, 2))
  expected = (real - mean) / np.sqrt(var + layers.PAPER_BN_EPS)
  out = np.asarray(layers.PaperBatchNorm()(jnp.asarray(x), train=False, mask=mask))
  np.testing.assert_allclose(out[mask > 0], expected, atol=2e-6)
  unmasked = np.asarray(layers.PaperBatchNorm()(jnp.asarray(x), train=False))
  assert np.abs(unmasked[mask > 0] - expected).max() > 0.1   # the padding would matter


@pytest.mark.parametrize("name", [n if n == "small_cnn" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODEL_NAMES])
@pytest.mark.compile_bound
def test_masked_padded_logits_equal_the_unpadded_logits(name):
  functional, params, state = _paper_bn_model(name)
  x = np.random.default_rng(1).uniform(size=(6, 8, 8, 3)).astype(np.float32)
  padded, mask = _pad(x, 3)
  logits = jax.jit(functional.logits)
  plain = np.asarray(logits(params, state, x))
  masked = np.asarray(logits(params, state, padded, mask))
  # atol 5e-5: jaxlib 0.12 rounds resnet18's two batch-statistic passes differently
  # (measured 1.7e-5); the unmasked result below is 1e-3 or more away.
  np.testing.assert_allclose(masked[:6], plain, atol=5e-5, rtol=1e-5)
  # The old, unmasked result: the padding rows in the statistics (a mask of ones weights
  # every row alike, and runs the program already compiled).
  zero_padded = np.asarray(logits(params, state, padded, np.ones_like(mask)))
  assert np.abs(zero_padded[:6] - plain).max() > 1e-3


@pytest.mark.slow
@pytest.mark.compile_bound
def test_attack_gradients_through_a_padded_batch_equal_the_unpadded_ones():
  """Padding rows' logits carry no gradient: a loss summed over the padded batch gives
  the real rows the input gradient of the unpadded batch (the attacks' closures)."""
  # preact_resnet32: no max pool (small_cnn's pooling.max_pool_2x2 gradient differs
  # between eager and jit with batch statistics, padding or not). One block per stage
  # (its own constructor; the blocks are alike): a third of the program to compile.
  functional, params, state = Functional.split(preact_resnet.PreActResNet32(
      num_classes=10, in_channels=3, norm="paper_bn", widths=WIDTHS["preact_resnet32"],
      blocks_per_stage=1, rngs=nnx.Rngs(params=0)))
  x = np.random.default_rng(2).uniform(size=(6, 8, 8, 3)).astype(np.float32)
  labels = np.arange(6, dtype=np.int32)
  padded, mask = _pad(x, 2)
  gradient = jax.jit(lambda x, labels, mask: attacks.input_gradient(
      functools.partial(functional.logits, params, state, mask=mask), x, labels))
  grad = gradient(x, labels, None)
  padded_grad = gradient(padded, np.r_[labels, 0, 0].astype(np.int32), mask)
  np.testing.assert_allclose(np.asarray(padded_grad)[:6], grad, atol=1e-5, rtol=1e-4)


def test_running_batchnorm_and_identity_ignore_the_mask_in_eval():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3, 3, 2)), jnp.float32)
  mask = jnp.array([1.0, 1.0, 0.0, 0.0])
  norm = layers.make_norm("batchnorm", 2, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(norm(x, train=False, mask=mask), norm(x, train=False))
  np.testing.assert_array_equal(layers.Identity()(x, train=False, mask=mask), x)
  # In training (never padded by the pipeline) a mask would weight the statistics.
  masked, plain = (layers.make_norm("batchnorm", 2, rngs=nnx.Rngs(0)) for _ in range(2))
  np.testing.assert_allclose(masked(x, train=True, mask=mask)[:2], plain(x[:2], train=True),
                             atol=1e-6)
  np.testing.assert_allclose(masked.mean[...], plain.mean[...], atol=1e-7)


# ---------------------------------------------------------------------------
# The padded layout
# ---------------------------------------------------------------------------
def test_padded_batch_size_rounds_up_to_the_mesh():
  assert [sharding.padded_batch_size("eval.batch_size", 500, sharding.make_mesh(k))
          for k in (1, 2, 4, 8)] == [500, 500, 500, 504]
  with pytest.raises(errors.HfcError, match=r"^eval.batch_size=0 is out of range"):
    sharding.padded_batch_size("eval.batch_size", 0, sharding.make_mesh(8))


def test_eval_batches_score_every_image_once_in_batches_of_real_images():
  x = np.arange(900, dtype=np.uint8)[:, None, None, None] % 251
  y = np.arange(900, dtype=np.int32)
  for processes in (1, 2, 4):
    parts = [list(pipeline.eval_batches(x, y, batch_size=500, padded_size=504,
                                        process_index=p, process_count=processes))
             for p in range(processes)]
    assert all(len(p) == 2 and p[0][0].shape[0] == 504 // processes for p in parts)
    masks = [np.concatenate([p[s][2] for p in parts]) for s in range(2)]
    assert [m.sum() for m in masks] == [500, 400]           # real images per batch
    order = np.concatenate([np.concatenate([p[s][1] for p in parts])[masks[s] > 0]
                            for s in range(2)])
    np.testing.assert_array_equal(order, y)


# ---------------------------------------------------------------------------
# evaluate.variant_accuracies on 1, 2, 4, 8 devices and an unpadded reference
# ---------------------------------------------------------------------------
def _reference_predictions(functional, params, state, x, radii, batch_size):
  """(1 + 2R, N) predictions, each batch of real images scored alone, unpadded."""
  logits = jax.jit(functional.logits)
  split = jax.jit(frequency.split, static_argnums=1)
  preds = []
  for start in range(0, len(x), batch_size):
    xb = x[start:start + batch_size].astype(np.float32) / 255
    variants = [xb] + [np.asarray(split(xb, r)[0]) for r in radii]
    variants += [np.asarray(split(xb, r)[1]) for r in radii]
    preds.append([np.argmax(np.asarray(logits(params, state, v)), -1) for v in variants])
  return np.concatenate([np.stack(p) for p in preds], axis=1)


@pytest.mark.slow
def test_evaluate_is_the_same_on_any_mesh_and_equals_the_unpadded_reference():
  functional, params, state = _paper_bn_model("small_cnn", seed=3)
  rng = np.random.default_rng(4)
  x = rng.integers(0, 256, (900, 16, 16, 3), dtype=np.uint8)
  x[:450] //= 2                      # two populations: batch statistics differ
  radii = (4.0,)
  preds = _reference_predictions(functional, params, state, x, radii, 500)
  y = preds[0]     # labels = the reference's clean predictions: every flip shows
  expected = np.sum(preds == y, axis=1)

  def counts(logits_fn, k):
    mesh = sharding.make_mesh(k)
    fn = evaluate.make_eval_fn(logits_fn, mesh, radii=radii, inclusive=False,
                               rescale="none")
    scores = evaluate.variant_accuracies(fn, params, state, x, y, mesh=mesh, batch_size=500,
                                         radii=radii)
    return np.array([scores[n] for n in evaluate.variant_names(radii)]) * 900

  # 1 device; 4, where the 500-image batch divides (2 runs the same code); 8, where it is
  # padded to 504 rows.
  for k in (1, 4, 8):
    np.testing.assert_allclose(counts(functional.logits, k), expected, atol=1.001,
                               err_msg=f"{k} devices")
  # The old evaluation (zero padding inside the statistics) is off by more than that.
  unmasked = lambda p, s, v, mask=None: functional.logits(p, s, v)
  old = counts(unmasked, 1)
  assert np.abs(old - expected).max() > 10, old - expected


# ---------------------------------------------------------------------------
# Configs on 8 and 16 devices
# ---------------------------------------------------------------------------
def _stand_in_dataset(config):
  """A Dataset of the config's image shape, without loading anything (zero-copy views)."""
  size, channels = (28, 1) if config.data.name in ("idx", "fashion_mnist", "mnist") else (32, 3)
  x = np.broadcast_to(np.zeros((1, size, size, channels), np.uint8),
                      (50_000, size, size, channels))
  y = np.zeros(50_000, np.int32)
  return data_lib.Dataset(x, y, x[:10_000], y[:10_000], 10, config.data.name)


def _shipped_run_configs():
  """(label, run config) for every shipped config, data-set argument and sweep run."""
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.stem == "__init__":
      continue
    module = importlib.import_module(f"configs.{path.stem}")
    takes_arg = bool(inspect.signature(module.get_config).parameters)
    for arg in presets.DATASETS if takes_arg else (None,):
      config = module.get_config(arg) if takes_arg else module.get_config()
      runs = sweep.expand(config) if sweep.is_sweep(config) else [("", config, {})]
      for run, run_config, _ in runs:
        yield f"{path.stem}:{arg}/{run}", run_config


@pytest.mark.parametrize("devices", [1, 2, 4, 8, 16])
def test_every_shipped_config_passes_its_checks_on_any_device_count(devices):
  """Every config, data-set argument and sweep run is accepted on 1-16 devices: eval,
  figure-2 and robust batches are padded, and every training batch divides. 16 devices
  (more than this process simulates) are a stand-in mesh of that size."""
  if devices <= jax.device_count():
    mesh = sharding.make_mesh(devices)
  else:
    mesh = types.SimpleNamespace(devices=np.empty(devices, object), shape={"data": devices})
  for label, config in _shipped_run_configs():
    for field in ("eval.batch_size", "robust_eval.batch_size", "figure2.batch_size"):
      section, name = field.split(".")
      assert sharding.padded_batch_size(field, config[section][name], mesh) % devices == 0
    try:
      validation.check_with_data(config, _stand_in_dataset(config), mesh)
    except errors.HfcError as e:
      raise AssertionError(f"{label} on {devices} devices: {e}") from None


def test_default_eval_config_is_accepted_on_8_devices_and_a_bad_train_batch_is_not():
  config = default.get_config()
  dataset = _stand_in_dataset(config)
  mesh = sharding.make_mesh(8)
  validation.check_with_data(config, dataset, mesh)            # eval.batch_size=500 on 8 devices
  config.train.batch_size = 100
  with pytest.raises(errors.HfcError) as e:
    validation.check_with_data(config, dataset, mesh)
  assert str(e.value).startswith("train.batch_size=100 must be a positive multiple")
  assert "\n" not in str(e.value)


_MAIN_FLAGS = ("--config.data.num_train=256", "--config.data.num_test=300",
               "--config.train.epochs=1", "--config.train.batch_size=128",
               "--config.eval.train_subset=200", "--config.eval.radii=(4,)",
               "--config.tensorboard=False")


def _main(workdir, devices, *extra):
  env = xla_flags_env(devices)
  cmd = [sys.executable, "-m", "hfc_jax.main", "--config=configs/default.py",
         f"--workdir={workdir}", *_MAIN_FLAGS, *extra]
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return _last_record(workdir)


def _last_record(workdir):
  return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.compile_bound
def test_default_config_trains_on_16_devices_as_on_one(tmp_path):
  """16 simulated devices, 2 steps of 128 (eval batch 500 over 16: 304 physical rows
  for the 300 test images) give the 1-device scores."""
  on16 = _main(tmp_path / "d16", 16)
  # The 1-device run in this process (one of its 8 devices): the config of the same flags.
  main.run(config_from_flags(*_MAIN_FLAGS, "--config.num_devices=1", tiny=False),
           str(tmp_path / "d1"))
  on1 = _last_record(tmp_path / "d1")
  assert on16["test/clean"] == on1["test/clean"]
  for key in ("test/lfc_4", "test/hfc_4", "train_eval/clean", "train_eval/lfc_4"):
    assert on16[key] == pytest.approx(on1[key], abs=1.01 / 200), key   # 1 image at most
  assert on16["test/loss"] == pytest.approx(on1["test/loss"], rel=1e-5)
