"""Train step, data parallelism, evaluation and checkpoint resume."""

import jax
import numpy as np
import pytest

from hfc_jax import evaluate, frequency, models, optimizers, sharding, train
from hfc_jax.analysis import common
from hfc_jax.models.functional import Functional
from tests.conftest import numpy_weights, random_batch, tiny_config

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound


# One model, optimiser and batch size for every step and run of this module, so that each
# program (the train step on 1 and on 8 devices, the per-epoch evaluation) compiles once:
# BatchNorm with dropout (the device-count test checks their statistics and keys), and
# SGD, not Adam: with BatchNorm the conv biases get gradients that are float noise
# around 0, which Adam would blow up to full-size steps of random sign. The runs train 8
# steps of 32 images per epoch and score 128 test and 128 training images at one radius.
SETTINGS = {"model.norm": "batchnorm", "model.dropout": 0.3, "optim.name": "sgd",
            "optim.learning_rate": 0.05, "train.batch_size": 32, "data.num_train": 256,
            "data.num_test": 128, "eval.train_subset": 128, "eval.radii": (4,)}


def _config(**overrides):
  return tiny_config(**SETTINGS, **overrides)


def _run_steps(mesh, num_steps):
  """`num_steps` train steps on one fixed batch of the runs' size (32 images)."""
  config = _config()
  model = train.create_model(config, 10, 3, 32)
  tx = optimizers.make_optimizer(config.optim, 10, 1)
  functional, state = train.create_train_state(model, tx, 0, mesh)
  step = train.make_train_step(functional, tx, mesh, rescale="none")
  images, labels = sharding.put_batch(mesh, *random_batch(config.train.batch_size))
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
  functional, params, model_state = Functional.split(numpy_weights(
      lambda: models.create("small_cnn", num_classes=10, in_channels=3, norm="paper_bn")))
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
  logits = jax.jit(functional.logits)   # one compile for the five variants
  expected = [np.sum(np.argmax(logits(params, model_state, v[:20]), -1) == labels[:20])
              for v in variants]
  np.testing.assert_allclose(out["correct"], expected)
  assert out["count"] == 20
  assert evaluate.variant_names(radii) == ["clean", "lfc_4", "lfc_12", "hfc_4", "hfc_12"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs of `_config` on 8 devices (the train step of `_run_steps`): 'full' trained for
  2 epochs; 'resumed' stopped after epoch 1 by asking for one epoch first (the schedule
  is constant, so the two-epoch run that follows sees the same learning rates;
  tests/main_test.py kills a real process instead); 'smooth' 1 epoch with the
  smooth-kernel penalty. Returns (root, histories: name -> the returned history)."""
  root = tmp_path_factory.mktemp("train_runs")
  mesh = sharding.make_mesh(8)
  histories = {
      "full": train.train_and_evaluate(_config(), str(root / "full"), mesh=mesh),
      "stopped": train.train_and_evaluate(_config(**{"train.epochs": 1}),
                                          str(root / "resumed"), mesh=mesh),
      "smooth": train.train_and_evaluate(
          _config(**{"train.epochs": 1, "train.smooth_kernel_weight": 1.0}),
          str(root / "smooth"), mesh=mesh)}
  return root, histories


@pytest.mark.slow
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(runs):
  root, histories = runs
  mesh = sharding.make_mesh(8)
  resumed = train.train_and_evaluate(_config(), str(root / "resumed"), mesh=mesh)
  full = histories["full"]
  assert [r["epoch"] for r in histories["stopped"]] == [1]
  assert [r["epoch"] for r in resumed] == [1, 2]
  assert resumed[-1]["test/clean"] == pytest.approx(full[-1]["test/clean"], abs=1e-6)
  p_full = _restore_params(root / "full")
  p_res = _restore_params(root / "resumed")
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
def test_smooth_kernel_penalty_lowers_the_first_conv_roughness(runs):
  """train.smooth_kernel_weight adds the smooth-kernel penalty to the loss: the same
  run with it ends with a smoother first conv (its per-epoch metric), and the metric
  equals the penalty of the restored kernel. The run without it is 'stopped' (the
  same config and epoch, before its resume)."""
  root, histories = runs
  rough = histories["stopped"][-1]["first_conv_smoothness"]
  smoothed = histories["smooth"][-1]["first_conv_smoothness"]
  assert histories["smooth"][-1]["epoch"] == histories["stopped"][-1]["epoch"] == 1
  assert smoothed < 0.8 * rough, (smoothed, rough)   # measured: 0.23x
  from hfc_jax import smoothness  # pylint: disable=g-import-not-at-top
  kernel = common.restore(str(root / "smooth")).params["first_conv"]["kernel"]
  assert smoothed == pytest.approx(float(smoothness.smoothness_penalty(kernel)), rel=1e-5)


def test_independent_programs_on_simulated_cpu_devices_run_one_at_a_time(monkeypatch):
  """`sharding.one_at_a_time_on_cpu` waits for outputs spread over several CPU devices
  (XLA:CPU can interleave two in-flight programs' collectives and abort after 40 s)
  and only for those; `evaluate.accumulate` waits once per batch and still sums."""
  waited = []
  monkeypatch.setattr(jax, "block_until_ready", lambda tree: waited.append(tree) or tree)
  eight, one = sharding.make_mesh(8), sharding.make_mesh(1)
  on_eight = {"a": sharding.put_replicated(np.ones(3, np.float32), eight), "n": 2}
  assert sharding.one_at_a_time_on_cpu(on_eight) is on_eight and waited == [on_eight]
  sharding.one_at_a_time_on_cpu({"a": sharding.put_replicated(np.ones(3, np.float32), one)})
  sharding.one_at_a_time_on_cpu(np.ones(3))
  assert len(waited) == 1
  batches = [sharding.put_batch(eight, np.full((8, 2), k, np.float32)) for k in range(3)]
  totals = evaluate.accumulate(jax.jit(lambda x: {"sum": x.sum(0)}), batches)
  np.testing.assert_array_equal(totals["sum"], [24.0, 24.0])   # 8 * (0 + 1 + 2)
  assert len(waited) == 1 + 3
