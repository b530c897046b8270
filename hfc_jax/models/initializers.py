"""Kernel initialisers: JAX's variance scaling, drawn so that XLA:CPU compiles it fast.

`variance_scaling(scale, mode, distribution)` returns the very numbers of
`jax.nn.initializers.variance_scaling(scale, mode, distribution)` (what
`nnx.initializers.he_normal`, `glorot_uniform`, ... are), bit for bit, for float kernels
of any rank with the default axes (inputs -2, outputs -1, every other axis the receptive
field). Only how the random numbers are drawn differs: as the 2-D array
(size / outputs, outputs), reshaped.

Why: JAX's partitionable threefry (its default) gives element i of a draw of any shape
from counter i, so a draw of shape (3, 3, 16, 32) holds the numbers of a draw of shape
(144, 32) in the same order. Each kernel shape is a program of its own, and XLA:CPU
compiles the 4-D draw in about 0.5 s (0.8 s for a first conv's (3, 3, 3, C)) but the
2-D one in about 0.15-0.25 s (jaxlib 0.10.2, 2 cores): building small_cnn in a new process
takes 2.5 s instead of 3.9 (docs/performance.md).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

# The standard deviation of a standard normal truncated to (-2, 2), as JAX divides by it.
_TRUNCATED_STDDEV = .87962566103423978
MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def fans(shape: tuple[int, ...]) -> tuple[float, float]:
  """(fan_in, fan_out) of a kernel: inputs on axis -2, outputs on axis -1, the product of
  the other axes (a conv's window) multiplying both, as JAX computes them."""
  receptive_field = math.prod(shape) / shape[-2] / shape[-1]
  return shape[-2] * receptive_field, shape[-1] * receptive_field


def variance_scaling(scale: float, mode: str, distribution: str):
  """An initialiser init(key, shape, dtype=float32) -> array of `shape` (at least 2-D):
  zero-mean numbers of variance scale / fan (module docstring), equal bit for bit to JAX's
  `variance_scaling` with the same arguments."""
  if mode not in MODES or distribution not in DISTRIBUTIONS:
    raise ValueError(f"variance_scaling: mode must be one of {MODES} and distribution one "
                     f"of {DISTRIBUTIONS}; got {mode!r}, {distribution!r}")

  def init(key: jax.Array, shape, dtype: Any = jnp.float32) -> jax.Array:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
      raise ValueError(f"variance_scaling: a kernel has at least 2 axes; got shape {shape}")
    fan_in, fan_out = fans(shape)
    denominator = {"fan_in": fan_in, "fan_out": fan_out,
                   "fan_avg": (fan_in + fan_out) / 2}[mode]
    variance = jnp.array(scale / denominator, dtype=dtype)
    drawn = (math.prod(shape[:-1]), shape[-1])
    if distribution == "truncated_normal":
      stddev = jnp.sqrt(variance) / jnp.array(_TRUNCATED_STDDEV, dtype)
      numbers = jax.random.truncated_normal(key, -2, 2, drawn, dtype)
    elif distribution == "normal":
      stddev = jnp.sqrt(variance)
      numbers = jax.random.normal(key, drawn, dtype)
    else:
      stddev = jnp.sqrt(3 * variance)
      numbers = jax.random.uniform(key, drawn, dtype, -1)
    return numbers.reshape(shape) * stddev

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
