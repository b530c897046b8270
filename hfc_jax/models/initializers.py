"""Kernel initialisers: JAX's variance scaling, drawn so that XLA:CPU compiles it fast.

`variance_scaling(scale, mode, distribution)` returns the very numbers of
`jax.nn.initializers.variance_scaling(scale, mode, distribution)` (what
`nnx.initializers.he_normal`, `glorot_uniform`, ... are), bit for bit, for float kernels
of any rank with the default axes (inputs -2, outputs -1, every other axis the receptive
field). Only the shape JAX's initialiser is called with differs: a lower-rank one with the
same fans (`drawn_shape`: the 2-D (fan_in, outputs) where only fan_in matters, else
(window, inputs, outputs)), and the result is reshaped. JAX's own arithmetic makes the
numbers, so they stay equal whichever JAX is installed (jax 0.12 scales its normal
draws in another order than 0.10).

Why: JAX's partitionable threefry (its default) gives element i of a draw of any shape
from counter i, so a draw of shape (3, 3, 16, 32) holds the numbers of a draw of shape
(144, 32) in the same order. Each kernel shape is a program of its own, and XLA:CPU
compiles the 4-D draw in about 0.5 s (0.8 s for a first conv's (3, 3, 3, C)), the 3-D
one in about 0.25-0.45 s and the 2-D one in about 0.15-0.25 s (jaxlib 0.10.2, 2 cores):
building small_cnn (He normal, 2-D draws) in a new process takes 2.5 s instead of 3.9
(docs/performance.md).
"""

import math

import jax
import jax.numpy as jnp

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def drawn_shape(shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
  """The lower-rank shape a kernel of `shape` is drawn as, with the fans `mode` reads:
  (fan_in, outputs) for 'fan_in'; (window, inputs, outputs) otherwise; `shape` itself
  when it has at most 2 axes."""
  if len(shape) <= 2:
    return shape
  if mode == "fan_in":
    return (math.prod(shape[:-1]), shape[-1])
  return (math.prod(shape[:-2]),) + shape[-2:]


def variance_scaling(scale: float, mode: str, distribution: str):
  """JAX's `variance_scaling(scale, mode, distribution)` initialiser, called on
  `drawn_shape(shape, mode)` and reshaped: the same numbers, bit for bit, with JAX's own
  arithmetic (whichever JAX is installed), compiled faster (module docstring)."""
  if mode not in MODES or distribution not in DISTRIBUTIONS:
    raise ValueError(f"variance_scaling: mode must be one of {MODES} and distribution one "
                     f"of {DISTRIBUTIONS}; got {mode!r}, {distribution!r}")
  jax_init = jax.nn.initializers.variance_scaling(scale, mode, distribution)

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    shape = tuple(int(s) for s in shape)   # JAX refuses a kernel of fewer than 2 axes
    return jax_init(key, drawn_shape(shape, mode), dtype).reshape(shape)

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
