"""max_pool_2x2: nnx.max_pool's values and gradients bit for bit, with no scatter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hfc_jax import sharding
from hfc_jax.models import pooling
from tests.conftest import numpy_weights

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

_reference = functools.partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2),
                               padding="SAME")


def _relu_input(shape, dtype, seed=0):
  """ReLU of normal noise (many exact zeros); the second half of the batch is rounded
  to quarters, so that its windows often hold equal positive maxima."""
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  half = shape[0] // 2
  x[half:] = np.round(x[half:] * 4) / 4
  return jnp.asarray(np.maximum(x, 0), dtype)


SHAPES = [(4, 8, 8, 3), (4, 7, 7, 2), (2, 6, 5, 4), (2, 1, 1, 1)]
DTYPES = [jnp.float32, jnp.bfloat16]


def _case(shape, dtype):
  """The input of `shape` and `dtype`, and a random cotangent of the pooled output."""
  x = _relu_input(shape, dtype)
  out_shape = (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
  return x, jnp.asarray(np.random.default_rng(1).normal(size=out_shape), dtype)


@functools.cache
def _values_and_vjps():
  """{(shape, dtype name): ((value, vjp of g) of nnx.max_pool, the same of
  max_pool_2x2)} for every case, computed in one program."""
  def both(x, g):
    out = []
    for pool in (_reference, pooling.max_pool_2x2):
      y, vjp = jax.vjp(pool, x)
      out.append((y, vjp(g)[0]))
    return out
  keys = [(shape, jnp.dtype(dtype).name) for dtype in DTYPES for shape in SHAPES]
  cases = [_case(shape, dtype) for dtype in DTYPES for shape in SHAPES]
  return dict(zip(keys, jax.jit(lambda cases: [both(*c) for c in cases])(cases)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_and_gradient_equal_nnx_max_pool(shape, dtype):
  out_shape = (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
  (y_ref, dx_ref), (y, dx) = _values_and_vjps()[shape, jnp.dtype(dtype).name]
  assert y.shape == y_ref.shape == out_shape and dx.dtype == dx_ref.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))


def test_gradient_goes_to_the_first_maximum_in_row_major_order():
  # One window [[1, 3], [3, 2]]: the maximum 3 is tied; (0, 1) comes first.
  x = jnp.array([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
  dx = jax.jit(jax.grad(lambda x: 5.0 * pooling.max_pool_2x2(x).sum()))(x)
  np.testing.assert_array_equal(dx[0, ..., 0], [[0.0, 5.0], [0.0, 0.0]])


def test_compiled_gradient_on_8_devices_is_scatter_free_and_equal():
  mesh = sharding.make_mesh(8)
  x = sharding.put_batch(mesh, np.asarray(_relu_input((16, 16, 16, 8), jnp.float32)))[0]
  loss = lambda f, x: (f(x) ** 2).sum()
  grad = jax.jit(jax.grad(functools.partial(loss, pooling.max_pool_2x2)))
  hlo = grad.lower(x).compile().as_text()
  assert "scatter(" not in hlo   # neither scatter nor select-and-scatter ops
  want = jax.jit(jax.grad(functools.partial(loss, _reference)))(x)
  np.testing.assert_array_equal(np.asarray(grad(x)), np.asarray(want))



@pytest.mark.slow
def test_jitted_model_gradient_equals_nnx_max_pool_with_batch_statistics(monkeypatch):
  """Under jit XLA recomputes small_cnn's fused norm -> ReLU for the backward pass;
  comparing that recomputed input against the forward's maxima lost the gradient of
  most windows (0.16 off nnx.max_pool's). The backward now finds the maxima itself."""
  import optax  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from hfc_jax import models  # pylint: disable=g-import-not-at-top
  from hfc_jax.models import small_cnn  # pylint: disable=g-import-not-at-top
  from hfc_jax.models.functional import Functional  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(2).uniform(size=(6, 32, 32, 3)).astype(np.float32)
  labels = np.arange(6, dtype=np.int32)
  functional, params, state = Functional.split(numpy_weights(
      lambda: models.create("small_cnn", num_classes=10, in_channels=3, norm="paper_bn")))

  def loss(images):
    logits = functional.logits(params, state, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

  got = np.asarray(jax.jit(jax.grad(loss))(x))
  monkeypatch.setattr(small_cnn, "pooling", types.SimpleNamespace(
      max_pool_2x2=lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2), padding="SAME")))
  want = np.asarray(jax.jit(jax.grad(loss))(x))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.abs(want).max() > 1e-3
