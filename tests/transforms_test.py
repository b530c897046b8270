"""Training-input transforms: mix-up and LFC/HFC-only training data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfc_jax import errors, optimizers, sharding, train, transforms
from tests.conftest import numpy_split, numpy_weights, tiny_config

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound


def _images(n=16, size=8, seed=0):
  return np.random.default_rng(seed).random((n, size, size, 3)).astype(np.float32)


# ------------------------------------------------------------------------ mix-up


@jax.jit
def _mixup_draws(keys, x, labels, alpha):
  """transforms.mixup of (x, labels) (5 classes) with each key, alpha traced (as in a
  run-parallel group's step): one program for every alpha and both tests below."""
  return jax.vmap(lambda k: transforms.mixup(k, x, labels, 5, alpha))(keys)


def _draws(alpha):
  """4,000 mix-ups of 16 random 2x2 images labelled 0..4: (x, labels, mixed images,
  mixed targets, lambdas)."""
  x, labels = _images(size=2), np.arange(16) % 5
  keys = jax.random.split(jax.random.key(0), 4000)
  return (x, labels, *jax.device_get(_mixup_draws(keys, x, labels, np.float32(alpha))))


@pytest.mark.slow
def test_mixup_is_a_convex_combination_with_the_drawn_lambda():
  x, labels, all_x, all_y, all_lam = _draws(1.0)
  onehot = np.eye(5)[labels]
  for mixed_x, mixed_y, lam in zip(all_x[:4], all_y[:4], all_lam[:4].astype(float)):
    assert 0.0 < lam < 1.0
    # Recover each row's partner j from the images, then check both mixes exactly.
    partner = (mixed_x - lam * x) / (1.0 - lam)
    dist = ((partner[:, None] - x[None]) ** 2).sum(axis=(2, 3, 4))
    perm = dist.argmin(axis=1)
    assert sorted(perm.tolist()) == list(range(16))      # a permutation of the batch
    np.testing.assert_allclose(mixed_x, lam * x + (1 - lam) * x[perm], atol=1e-6)
    np.testing.assert_allclose(mixed_y, lam * onehot + (1 - lam) * onehot[perm], atol=1e-6)
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.slow
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
  lams = _draws(alpha)[-1]
  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
  assert abs(lams.mean() - 0.5) < 0.02
  assert abs(lams.var() - 1 / (4 * (2 * alpha + 1))) < 0.01



@pytest.fixture(scope="module")
def setup():
  """An 8-device mesh, the model's functional and train state and the SGD optimiser of
  one config (`config`), and a random uint8 batch of 32 images with labels. The steps
  are donated: each test steps its own copy of the state."""
  config = tiny_config(**{"optim.name": "sgd", "optim.learning_rate": 0.05})
  mesh = sharding.make_mesh(8)
  tx = optimizers.make_optimizer(config.optim, 10, 1)
  model = numpy_weights(lambda: train.create_model(config, 10, 3, 32))
  functional, state = train.create_train_state(model, tx, 0, mesh)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 32).astype(np.int32)
  return config, mesh, tx, functional, state, images, labels


@pytest.mark.slow
def test_mixup_in_the_train_step_trains_on_soft_targets(setup):
  """alpha > 0 changes the step (soft targets), alpha = 0 is the plain step. On float
  images, so that the plain step is the program the LFC test below compiles."""
  _, mesh, tx, functional, state, images, labels = setup
  batch = sharding.put_batch(mesh, images.astype(np.float32) / 255.0, labels)
  losses = {}
  for alpha in (0.0, 1.0):
    step = train.make_train_step(functional, tx, mesh, rescale="none", mixup_alpha=alpha,
                                 num_classes=10)
    copy = jax.tree.map(jnp.copy, state)
    _, metrics = step(copy, *batch)
    losses[alpha] = float(metrics["loss"])
  assert np.isfinite(losses[1.0]) and abs(losses[1.0] - losses[0.0]) > 1e-4


# ------------------------------------------------------------ LFC / HFC training


@pytest.mark.parametrize("component", ["lfc", "hfc"])
def test_component_training_data_equal_the_split_of_the_originals(component):
  x = _images(n=16, size=32)
  lfc, hfc = numpy_split(x, 8.0)
  expected = lfc if component == "lfc" else hfc
  got = transforms.frequency_component(jnp.asarray(x), component, 8.0)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-6)
  # The same, per device with shard_map over 8 simulated devices.
  mesh = sharding.make_mesh(8)
  fn = jax.jit(transforms.make_component_fn(mesh, component, 8.0, inclusive=False,
                                            rescale="none"))
  placed = jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(sharding.DATA_AXIS)))
  np.testing.assert_allclose(np.asarray(fn(placed)), expected, atol=2e-6)


@pytest.mark.slow
def test_lfc_training_step_equals_a_step_on_numpy_lfc_images(setup):
  """The train step with train.input_component='lfc' trains on exactly the LFC."""
  config, mesh, tx, functional, state, images, labels = setup
  config = config.copy_and_resolve_references()
  lfc = numpy_split(images.astype(np.float32) / 255.0, 12.0)[0].astype(np.float32)
  config.train.input_component, config.train.input_radius = "lfc", 12.0
  on_lfc = train.make_config_train_step(config, functional, tx, mesh, 10, adversary=None)
  plain = train.make_train_step(functional, tx, mesh, rescale="none", num_classes=10)
  a, ma = on_lfc(jax.tree.map(jnp.copy, state), *sharding.put_batch(mesh, images, labels))
  b, mb = plain(jax.tree.map(jnp.copy, state), *sharding.put_batch(mesh, lfc, labels))
  np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
  for pa, pb in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(pa), np.asarray(pb), atol=1e-5)


def test_lfc_plus_hfc_is_the_original():
  x = jnp.asarray(_images(size=16))
  total = (transforms.frequency_component(x, "lfc", 5.0)
           + transforms.frequency_component(x, "hfc", 5.0))
  np.testing.assert_allclose(np.asarray(total), np.asarray(x), atol=2e-6)


@pytest.mark.parametrize("field,value,match", [
    ("input_component", "band", "train.input_component='band'"),
    ("input_radius", 40.0, "train.input_radius=40.0"),
    ("mixup_alpha", -1.0, "train.mixup_alpha=-1.0"),
])
def test_bad_transform_config_is_one_line(field, value, match):
  config = tiny_config()
  config.train.input_component = "lfc"
  config.train[field] = value
  with pytest.raises(errors.HfcError, match=match.replace("(", r"\(")) as e:
    transforms.check_config(config, 32)
  assert "\n" not in str(e.value)
