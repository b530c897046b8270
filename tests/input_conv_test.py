"""input_conv: lax's convolution with the input gradient as a matmul plus col2im."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hfc_jax import attacks, sharding
from hfc_jax.models import functional, input_conv, preact_resnet, resnet, small_cnn

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

_NHWC = ("NHWC", "HWIO", "NHWC")


def _numpy_input_gradient(dy, w, pads, image_hw):
  """float64 loops over the kernel taps: dx_pad[n, h + i, w + j, c] += dy[n, h, w] . w[i, j, c]."""
  dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
  (top, bottom), (left, right) = pads
  n, out_h, out_w, _ = dy.shape
  kh, kw, cin, _ = w.shape
  padded = np.zeros((n, image_hw[0] + top + bottom, image_hw[1] + left + right, cin))
  for i in range(kh):
    for j in range(kw):
      padded[:, i:i + out_h, j:j + out_w, :] += dy @ w[i, j].T
  return padded[:, top:top + image_hw[0], left:left + image_hw[1], :]


def _arrays(x_shape, w_shape, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.random(x_shape), jnp.float32),
          jnp.asarray(rng.normal(size=w_shape) * 0.3, jnp.float32))


def _vjps(conv_fn, padding, x, w, dy):
  """(y, dx, dw) of conv_fn(x, w) at cotangent dy."""
  fn = lambda x, w: conv_fn(x, w, (1, 1), padding, dimension_numbers=_NHWC)
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(dy))


CASES = [  # (padding, x shape, w shape, the explicit pads it means)
    ("SAME", (4, 8, 8, 3), (3, 3, 3, 16), ((1, 1), (1, 1))),
    ("VALID", (2, 7, 9, 1), (3, 3, 1, 5), ((0, 0), (0, 0))),
    (((2, 0), (1, 3)), (2, 6, 6, 3), (5, 5, 3, 4), ((2, 0), (1, 3))),
    ("SAME", (3, 5, 5, 2), (1, 1, 2, 6), ((0, 0), (0, 0))),
    ("SAME", (2, 6, 6, 3), (4, 2, 3, 4), ((1, 2), (0, 1))),   # even kernel: more pad below
]


@pytest.mark.parametrize("padding,x_shape,w_shape,pads", CASES)
def test_input_gradient_equals_numpy_and_lax(padding, x_shape, w_shape, pads):
  x, w = _arrays(x_shape, w_shape)
  y_ref = jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)
  dy = jnp.asarray(np.random.default_rng(1).normal(size=y_ref.shape), jnp.float32)
  y, dx, dw = jax.jit(functools.partial(_vjps, input_conv.conv_general_dilated, padding))(
      x, w, dy)
  _, dx_lax, dw_lax = _vjps(jax.lax.conv_general_dilated, padding, x, w, dy)
  np.testing.assert_array_equal(y, y_ref)            # lax's forward
  np.testing.assert_array_equal(dw, dw_lax)          # lax's kernel gradient
  want = _numpy_input_gradient(dy, w, pads, x_shape[1:3])
  np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, dx_lax, rtol=1e-5, atol=1e-5)
  assert dx.dtype == jnp.float32


@pytest.mark.parametrize("padding,x_shape,w_shape,pads", CASES[:3])
def test_forward_mode_and_patch_conv_equal_lax(padding, x_shape, w_shape, pads):
  x, w = _arrays(x_shape, w_shape)
  x_dot, w_dot = _arrays(x_shape, w_shape, seed=2)

  @functools.partial(jax.jit, static_argnums=0)   # one program per conv, not one per op
  def derivatives(fn, x, w, x_dot, w_dot):
    call = lambda x, w: fn(x, w, (1, 1), padding, dimension_numbers=_NHWC)
    y, y_dot = jax.jvp(call, (x, w), (x_dot, w_dot))
    # forward over reverse: a Hessian-vector product with respect to the image
    loss = lambda x: jnp.sum(jnp.sin(call(x, w)))
    return y, y_dot, jax.jvp(jax.grad(loss), (x,), (x_dot,))[1]

  y, y_dot, hvp = derivatives(input_conv.conv_general_dilated, x, w, x_dot, w_dot)
  y_lax, y_dot_lax, hvp_lax = derivatives(jax.lax.conv_general_dilated, x, w, x_dot, w_dot)
  np.testing.assert_array_equal(y, y_lax)
  np.testing.assert_allclose(y_dot, y_dot_lax, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(input_conv.patch_conv(x, w, pads), y_lax, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(hvp, hvp_lax, rtol=1e-4, atol=1e-4)


def test_bfloat16_gradient_is_accumulated_in_float32():
  x, w = _arrays((2, 8, 8, 3), (3, 3, 3, 32))
  x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  dy = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 32)), jnp.bfloat16)
  _, dx, _ = _vjps(input_conv.conv_general_dilated, "SAME", x16, w16, dy)
  want = _numpy_input_gradient(dy.astype(jnp.float32), w16.astype(jnp.float32),
                               ((1, 1), (1, 1)), (8, 8))
  assert dx.dtype == jnp.bfloat16
  # one rounding to bfloat16 at the end: within half a bf16 spacing (2^-9 relative)
  np.testing.assert_allclose(np.asarray(dx, np.float64), want, rtol=2.0 ** -8, atol=1e-6)


def _uses_matmul_route(conv_fn, x, w, **call) -> bool:
  return "custom_jvp_call" in str(jax.make_jaxpr(lambda x: conv_fn(x, w, **call))(x))


@pytest.mark.parametrize("kwargs", [
    {"window_strides": (2, 2)},
    {"rhs_dilation": (2, 2)},
    {"dimension_numbers": ("NCHW", "OIHW", "NCHW")},
    {"padding": ((-1, 1), (1, 1))},
    {"preferred_element_type": jnp.float32},
])
def test_other_convolutions_are_left_to_lax(kwargs):
  call = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": _NHWC, **kwargs}
  nchw = call["dimension_numbers"][0] == "NCHW"
  x, w = _arrays((2, 3, 8, 8) if nchw else (2, 8, 8, 3), (4, 3, 3, 3) if nchw else (3, 3, 3, 4))
  assert not _uses_matmul_route(input_conv.conv_general_dilated, x, w, **call)
  ours = jax.grad(lambda x: input_conv.conv_general_dilated(x, w, **call).sum())(x)
  theirs = jax.grad(lambda x: jax.lax.conv_general_dilated(x, w, **call).sum())(x)
  np.testing.assert_array_equal(ours, theirs)


def test_a_stride_one_nhwc_convolution_takes_the_matmul_route():
  x, w = _arrays((2, 8, 8, 3), (3, 3, 3, 4))
  call = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": _NHWC}
  assert _uses_matmul_route(input_conv.conv_general_dilated, x, w, **call)
  assert not _uses_matmul_route(jax.lax.conv_general_dilated, x, w, **call)


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in its equations' params."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def _make_model(name):
  """Narrow models (eval_padding_test builds the same widths): few distinct kernel shapes,
  each of which costs compiles."""
  rngs = nnx.Rngs(0)
  if name == "small_cnn":
    return small_cnn.SmallCNN(num_classes=10, in_channels=3, norm="paper_bn",
                              widths=(8, 8, 8, 8), rngs=rngs)
  if name == "resnet18":
    return resnet.ResNet18(num_classes=10, in_channels=3, widths=(8, 8, 8, 8),
                           stage_blocks=(1, 1, 1, 1), rngs=rngs)
  return preact_resnet.PreActResNet32(num_classes=10, in_channels=3, widths=(8, 8, 8),
                                      blocks_per_stage=1, rngs=rngs)


def _image_gradient(model, images, labels, mesh):
  fn, params, state = functional.Functional.split(model)
  grad = jax.jit(lambda p, s, x, y: attacks.input_gradient(
      functools.partial(fn.logits, p, s), x, y))
  images, labels = sharding.put_batch(mesh, images, labels)
  return grad, (params, state, images, labels)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "preact_resnet32"])
@pytest.mark.slow
def test_models_use_it_for_the_image_gradient_on_8_devices(name):
  """The attack's image gradient has no 3-channel transposed convolution, and equals
  the gradient of the same model with lax's convolution everywhere."""
  mesh = sharding.make_mesh(8)
  rng = np.random.default_rng(0)
  images = rng.random((16, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  model = _make_model(name)
  grad, args = _image_gradient(model, images, labels, mesh)
  jaxpr = jax.make_jaxpr(grad)(*args).jaxpr
  conv_outputs = [eqn.outvars[0].aval.shape for eqn in _equations(jaxpr)
                  if eqn.primitive.name == "conv_general_dilated"]
  assert conv_outputs and all(shape[-1] != 3 for shape in conv_outputs)
  got = grad(*args)
  model.first_conv.conv_general_dilated = jax.lax.conv_general_dilated
  plain_grad, plain_args = _image_gradient(model, images, labels, mesh)
  want = plain_grad(*plain_args)
  scale = float(jnp.abs(want).max())
  assert scale > 0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def _parameter_gradient(model, images, labels):
  fn, params, state = functional.Functional.split(model)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      fn.apply(p, state, images, train=True)[0], labels).mean()
  return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
@pytest.mark.slow
def test_plain_training_gradients_are_bit_identical(name):
  """A plain train step never asks for the image gradient: its parameter gradients are
  those of the model with lax's convolution, bit for bit."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((8, 16, 16, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  model = _make_model(name)
  got = _parameter_gradient(model, images, labels)
  model.first_conv.conv_general_dilated = jax.lax.conv_general_dilated
  want = _parameter_gradient(model, images, labels)
  assert float(jnp.abs(want["first_conv"]["kernel"]).max()) > 0
  jax.tree.map(np.testing.assert_array_equal, got, want)
