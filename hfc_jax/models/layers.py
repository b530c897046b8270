"""Layers shared by the models: the normalisation choice and the frequency input filter.

Every layer here is called as `layer(x, train=...)` on NHWC activations, so the models
can swap them without knowing which one they hold. None of them stores an `nnx.Rngs`.
"""

from typing import Any

import jax.numpy as jnp
from flax import nnx

from hfc_jax import errors, frequency

NORMS = ("none", "batch_stats", "batchnorm")
INPUT_FILTERS = ("none", "lowpass", "highpass")
BATCH_STATS_EPS = 1e-3  # the paper's BN epsilon
BATCHNORM_MOMENTUM = 0.9  # running average: ra = 0.9 * ra + 0.1 * batch
BATCHNORM_EPS = 1e-5


class Identity(nnx.Module):
  """Norm 'none': returns its input unchanged."""

  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    del train
    return x


class BatchStatsNorm(nnx.Module):
  """Norm 'batch_stats': the paper's BN, always normalised by the current batch.

  Mean and variance are taken over N, H, W per channel, in train and eval alike;
  gamma = 1 and beta = 0 are fixed, so the layer has no parameters and no state.
  """

  def __init__(self, epsilon: float = BATCH_STATS_EPS):
    self.epsilon = epsilon

  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Maps (N, H, W, C) to (N, H, W, C); statistics are computed in float32."""
    del train
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2), keepdims=True)
    return ((x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))).astype(x.dtype)


class RunningBatchNorm(nnx.BatchNorm):
  """Norm 'batchnorm': trainable scale/bias; running averages are used when train=False."""

  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:  # type: ignore[override]
    return super().__call__(x, use_running_average=not train)


def make_norm(kind: str, num_features: int, *, dtype: Any = jnp.float32,
              rngs: nnx.Rngs) -> nnx.Module:
  """Returns the normalisation layer `kind` (one of NORMS) for `num_features` channels."""
  errors.check_choice("model.norm", kind, NORMS)
  if kind == "none":
    return Identity()
  if kind == "batch_stats":
    return BatchStatsNorm()
  return RunningBatchNorm(num_features, momentum=BATCHNORM_MOMENTUM, epsilon=BATCHNORM_EPS,
                          dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class FrequencyFilter(nnx.Module):
  """Input layer without parameters: keeps the LFC ('lowpass') or HFC ('highpass') of x.

  The split is `hfc_jax.frequency` (disc of radius `radius` in the centred spectrum);
  'none' passes the images through. It is differentiable, so PGD attacks see it.
  """

  def __init__(self, kind: str = "none", radius: float = 0.0, *, inclusive: bool = False):
    self.kind = errors.check_choice("model.input_filter", kind, INPUT_FILTERS)
    self.radius = float(errors.check_range("model.filter_radius", radius, 0))
    self.inclusive = inclusive

  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """Maps (N, H, W, C) images to (N, H, W, C) float32 images."""
    del train
    if self.kind == "lowpass":
      return frequency.lowpass(x, self.radius, inclusive=self.inclusive)
    if self.kind == "highpass":
      return frequency.highpass(x, self.radius, inclusive=self.inclusive)
    return x


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Maps (N, H, W, C) to (N, C) by averaging over H and W in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def classifier_head(features: jnp.ndarray, dropout: nnx.Dropout, dense: nnx.Linear, *,
                    train: bool, rngs: nnx.Rngs | None) -> jnp.ndarray:
  """Dropout then the dense layer on (N, C) features; returns float32 logits (N, classes)."""
  features = dropout(features, deterministic=not train, rngs=rngs)
  return dense(features).astype(jnp.float32)
