"""Kernel initialisers: JAX's variance scaling, cut from a few shared draws so that XLA:CPU
compiles few programs.

`variance_scaling(scale, mode, distribution)` returns the very numbers of
`jax.nn.initializers.variance_scaling(scale, mode, distribution)` (what
`nnx.initializers.he_normal`, `glorot_uniform`, `lecun_normal`, ... are), bit for bit, for
float kernels of any rank with the default axes (inputs -2, outputs -1, every other axis
the receptive field).

Why: JAX's partitionable threefry (its default) gives element i of a draw of any shape
from counter i, so the numbers of a (3, 3, 16, 32) kernel are the first 4,608 of a 1-D
draw of 65,536, in order. JAX draws each kernel shape with a program of its own, which
XLA:CPU compiles in 0.2-0.8 s (jaxlib 0.10.2, 2 cores): about 1.7 s of the 2.6 s it took
to build small_cnn in a new process, and more for the models with a dozen kernel shapes.
Here every kernel is cut from a 1-D draw whose length is `draw_size(kernel size)`, a
power of two of at least 2**16: one draw program per length serves every kernel, model
and test of a process (and the persistent compilation cache serves it to the next one).
Drawing up to twice the numbers costs little (2**22 numbers: about 60 ms on the CPU).

The scaling is JAX's own arithmetic, op for op (`variance_scaling`), applied to the whole
1-D draw: every op after the draw is elementwise, so the kernel's numbers are those JAX
computes on the kernel's shape. `tests/initializers_test.py` checks that on the installed
JAX (jax 0.12 scales its normal draws in another order than 0.10; both are written here).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
MIN_DRAW = 2 ** 16
# jax >= 0.12 draws a scaled normal as (sqrt(2) * scale) * erf_inv(uniform), where 0.10
# scales sqrt(2) * erf_inv(uniform) (jax.random.normal): the roundings differ.
# Asked of JAX's own module (private: jax.nn.initializers does not export the helper).
try:
  from jax._src.nn import initializers as _jax_initializers  # pylint: disable=g-import-not-at-top
  _JAX_SCALES_ERF_INV = hasattr(_jax_initializers, "_scaled_normal")
except ImportError:
  _JAX_SCALES_ERF_INV = False


def draw_size(size: int) -> int:
  """The length of the 1-D draw a kernel of `size` numbers is cut from: the smallest power
  of two that holds it, at least MIN_DRAW."""
  return max(MIN_DRAW, 1 << (int(size) - 1).bit_length())


def fans(shape: tuple[int, ...]) -> tuple[float, float]:
  """(fan_in, fan_out) of a kernel, as `jax.nn.initializers` computes them with the default
  axes: inputs x receptive field and outputs x receptive field, in floats."""
  if len(shape) < 2:
    raise ValueError(f"variance_scaling: a kernel needs at least 2 axes (inputs, outputs); "
                     f"got shape {shape}")
  receptive_field = math.prod(shape) / shape[-2] / shape[-1]
  return shape[-2] * receptive_field, shape[-1] * receptive_field


def _variance(scale: float, mode: str, shape: tuple[int, ...], dtype) -> jax.Array:
  fan_in, fan_out = fans(shape)
  denominator = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
                 "fan_geo_avg": (fan_in * fan_out) ** 0.5}[mode]
  return jnp.array(scale / denominator if denominator != 0 else 0, dtype=dtype)


def _scaled_draw(key: jax.Array, size: int, distribution: str, variance: jax.Array,
                 dtype) -> jax.Array:
  """JAX's scaled draw of `distribution` at `variance`, for a 1-D shape of `size`."""
  shape = (size,)
  if distribution == "truncated_normal":
    # constant: the standard deviation of a standard normal truncated to (-2, 2)
    stddev = jnp.sqrt(variance) / jnp.array(.87962566103423978, dtype)
    return jax.random.truncated_normal(key, -2, 2, shape, dtype) * stddev
  if distribution == "uniform":
    return jax.random.uniform(key, shape, dtype, -1) * jnp.sqrt(3 * variance)
  if not _JAX_SCALES_ERF_INV:
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(variance)
  lo = np.nextafter(np.array(-1., dtype), np.array(0., dtype), dtype=dtype)
  u = jax.random.uniform(key, shape, dtype, lo, np.array(1., dtype))
  return (jnp.array(np.sqrt(2), dtype) * jnp.sqrt(variance)) * jax.lax.erf_inv(u)


def variance_scaling(scale: float, mode: str, distribution: str):
  """JAX's `variance_scaling(scale, mode, distribution)` initialiser: the same numbers, bit
  for bit, cut from a 1-D draw of `draw_size(kernel size)` (module docstring)."""
  if mode not in MODES or distribution not in DISTRIBUTIONS:
    raise ValueError(f"variance_scaling: mode must be one of {MODES} and distribution one "
                     f"of {DISTRIBUTIONS}; got {mode!r}, {distribution!r}")

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    drawn = _scaled_draw(key, draw_size(size), distribution,
                         _variance(scale, mode, shape, dtype), dtype)
    return jax.lax.slice(drawn, (0,), (size,)).reshape(shape)

  return init


def he_normal():
  """He (Kaiming) normal: truncated normal of variance 2 / fan_in (`nnx.initializers.he_normal`)."""
  return variance_scaling(2.0, "fan_in", "truncated_normal")


def glorot_uniform():
  """Xavier (Glorot) uniform: variance 2 / (fan_in + fan_out) (`nnx.initializers.glorot_uniform`)."""
  return variance_scaling(1.0, "fan_avg", "uniform")


def lecun_normal():
  """LeCun normal: truncated normal of variance 1 / fan_in (`nnx.initializers.lecun_normal`,
  the default kernel initialiser of nnx.Conv and nnx.Linear)."""
  return variance_scaling(1.0, "fan_in", "truncated_normal")
