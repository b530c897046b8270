"""Train step, data parallelism, evaluation and checkpoint resume."""

import jax
import numpy as np
import pytest

from hfc_jax import evaluate, frequency, models, optimizers, sharding, train
from hfc_jax.analysis import common
from hfc_jax.models.functional import Functional
from tests.conftest import random_batch, tiny_config


def _run_steps(mesh, num_steps, norm="batchnorm", dropout=0.3):
  config = tiny_config()
  config.model.norm, config.model.dropout = norm, dropout
  # SGD, not Adam: with BatchNorm the conv biases get gradients that are float noise
  # around 0, which Adam would blow up to full-size steps of random sign.
  config.optim.name, config.optim.learning_rate = "sgd", 0.05
  model = train.create_model(config, 10, 3, 32)
  tx = optimizers.make_optimizer(config.optim, 10, 1)
  functional, state = train.create_train_state(model, tx, 0, mesh)
  step = train.make_train_step(functional, tx, mesh, rescale="none")
  images, labels = sharding.put_batch(mesh, *random_batch())
  losses = []
  for _ in range(num_steps):
    with jax.transfer_guard("disallow"):   # the step itself copies nothing host<->device
      state, metrics = step(state, images, labels)
    losses.append(float(metrics["loss"]))
  return state, losses, images


@pytest.mark.slow
def test_train_steps_lower_the_loss_on_a_fixed_batch():
  _, losses, _ = _run_steps(sharding.make_mesh(1), 8)
  assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_parameters():
  assert jax.device_count() == 8
  state1, losses1, _ = _run_steps(sharding.make_mesh(1), 3)
  state8, losses8, images8 = _run_steps(sharding.make_mesh(8), 3)
  assert len(images8.sharding.device_set) == 8
  assert images8.addressable_shards[0].data.shape[0] == 32 // 8
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  flat1 = jax.tree.leaves(jax.device_get(state1.params))
  flat8 = jax.tree.leaves(jax.device_get(state8.params))
  for a, b in zip(flat1, flat8):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(jax.device_get(state1.model_state)),
                  jax.tree.leaves(jax.device_get(state8.model_state))):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_eval_step_equals_direct_per_variant_computation():
  model = models.create("small_cnn", num_classes=10, in_channels=3, norm="paper_bn")
  functional, params, model_state = Functional.split(model)
  images, labels = random_batch(24, seed=3)
  mask = np.ones(24, np.float32)
  mask[-4:] = 0
  radii = (4.0, 12.0)
  mesh = sharding.make_mesh(8)
  eval_fn = evaluate.make_eval_fn(functional.logits, mesh, radii=radii,
                                  inclusive=False, rescale="none")
  out = jax.device_get(eval_fn(params, model_state, *sharding.put_batch(
      mesh, images, labels, mask)))
  x = images.astype(np.float32) / 255
  variants = [x]
  for r in radii:
    variants.append(np.asarray(frequency.split(x, r)[0]))
  for r in radii:
    variants.append(np.asarray(frequency.split(x, r)[1]))
  # The 4 masked rows stay out of the batch statistics: the real rows score as alone.
  expected = [np.sum(np.argmax(functional.logits(params, model_state, v[:20]), -1)
                     == labels[:20]) for v in variants]
  np.testing.assert_allclose(out["correct"], expected)
  assert out["count"] == 20
  assert evaluate.variant_names(radii) == ["clean", "lfc_4", "lfc_12", "hfc_4", "hfc_12"]


@pytest.mark.slow
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
  mesh = sharding.make_mesh(2)
  full = train.train_and_evaluate(tiny_config(), str(tmp_path / "full"), mesh=mesh)
  # Stop after epoch 1 by asking for one epoch first (the schedule is constant, so
  # the two-epoch run that follows sees the same learning rates); tests/main_test.py
  # kills a real process instead.
  train.train_and_evaluate(tiny_config(**{"train.epochs": 1}), str(tmp_path / "resumed"),
                           mesh=mesh)
  resumed = train.train_and_evaluate(tiny_config(), str(tmp_path / "resumed"), mesh=mesh)
  assert [r["epoch"] for r in resumed] == [1, 2]
  assert resumed[-1]["test/clean"] == pytest.approx(full[-1]["test/clean"], abs=1e-6)
  p_full = _restore_params(tmp_path / "full")
  p_res = _restore_params(tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_res)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _restore_params(workdir):
  trained = common.restore(str(workdir))
  assert trained.history[-1]["epoch"] == 2
  return trained.params


def test_bad_values_raise_one_line_errors():
  from hfc_jax import errors
  config = tiny_config(**{"eval.radii": (4, 40)})
  with pytest.raises(errors.HfcError, match=r"eval.radii=40.*\[1, 32\]"):
    train.train_and_evaluate(config, "/tmp/unused_never_created", mesh=sharding.make_mesh(8))
  config = tiny_config(**{"train.batch_size": 60})
  with pytest.raises(errors.HfcError, match=r"train.batch_size=60 must be a positive multiple"):
    train.train_and_evaluate(config, "/tmp/unused_never_created", mesh=sharding.make_mesh(8))
  with pytest.raises(errors.HfcError, match=r"optim.name='lamb'.*'sgd', 'adam'"):
    optimizers.make_optimizer(tiny_config(**{"optim.name": "lamb"}).optim, 1, 1)


@pytest.mark.slow
def test_smooth_kernel_penalty_lowers_the_first_conv_roughness(tmp_path):
  """train.smooth_kernel_weight adds the smooth-kernel penalty to the loss: the same
  run with it ends with a smoother first conv (its per-epoch metric), and the metric
  equals the penalty of the restored kernel."""
  mesh = sharding.make_mesh(8)
  overrides = {"train.epochs": 1, "optim.learning_rate": 0.01}
  plain = train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "plain"),
                                   mesh=mesh)
  smooth = train.train_and_evaluate(
      tiny_config(**overrides, **{"train.smooth_kernel_weight": 1.0}),
      str(tmp_path / "smooth"), mesh=mesh)
  rough, smoothed = plain[-1]["first_conv_smoothness"], smooth[-1]["first_conv_smoothness"]
  assert smoothed < 0.8 * rough, (smoothed, rough)   # measured: 0.5x
  from hfc_jax import smoothness  # pylint: disable=g-import-not-at-top
  kernel = common.restore(str(tmp_path / "smooth")).params["first_conv"]["kernel"]
  assert smoothed == pytest.approx(float(smoothness.smoothness_penalty(kernel)), rel=1e-5)
