"""Layers shared by the models: the normalisation choice, the input layers (frequency
filter, per-channel standardisation) and PyTorch's conv padding.

Every norm here is called as `norm(x, train=..., mask=...)` on NHWC activations, so the
models can swap them without knowing which one they hold. `mask` is an optional (N,) float
per-example weight (1 a real example, 0 a padding row of an evaluation batch); only the
norms that take statistics over the batch read it. The input layers take the images
(`Standardize` alone, the filter with `train`). None of them stores an `nnx.Rngs`.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax import defaults, errors, frequency

# 'paper_bn' is the paper's BN (batch statistics always, no running averages); it was
# called 'batch_stats', a name kept readable (`canonical_norm`) though Flax's
# 'batch_stats' collection is the running averages that 'batchnorm' keeps.
NORMS = ("none", "paper_bn", "batchnorm")
INPUT_FILTERS = ("none", "lowpass", "highpass")
PAPER_BN_EPS = 1e-3  # the paper's BN epsilon
BATCHNORM_MOMENTUM = 0.9  # running average: ra = 0.9 * ra + 0.1 * batch
BATCHNORM_EPS = 1e-5  # also PyTorch's BatchNorm2d default, so imported BN layers agree
PADDINGS = ("same", "torch")


class Identity(nnx.Module):
  """Norm 'none': returns its input unchanged."""

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    del train, mask
    return x


class PaperBatchNorm(nnx.Module):
  """Norm 'paper_bn': the paper's BN, always normalised by the current batch.

  Mean and variance are taken over N, H, W per channel, in train and eval alike;
  gamma = 1 and beta = 0 are fixed, so the layer has no parameters and no state.
  With a `mask`, the statistics are weighted by it: padding rows (weight 0) do not
  enter them, so a padded batch gives its real rows the outputs of the unpadded batch.
  """

  def __init__(self, epsilon: float = PAPER_BN_EPS):
    self.epsilon = epsilon

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    """Maps (N, H, W, C) to (N, H, W, C); statistics are computed in float32.

    `mask`: optional (N,) per-example weights (1 real, 0 padding).
    """
    del train
    x32 = x.astype(jnp.float32)
    mean, var = batch_moments(x32, mask)
    return ((x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))).astype(x.dtype)


def batch_moments(x: jnp.ndarray, mask: jnp.ndarray | None = None
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-channel mean and (biased) variance of float32 (N, H, W, C) over N, H, W.

  Two passes (the variance is the mean of squared deviations). With `mask` (N,), each
  row is weighted by it: mean = sum(mask x) / (sum(mask) H W), the variance likewise.
  Returns two (1, 1, 1, C) float32 arrays.
  """
  if mask is None:
    mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
    return mean, jnp.mean(jnp.square(x - mean), axis=(0, 1, 2), keepdims=True)
  weights = mask.astype(jnp.float32).reshape(-1, 1, 1, 1)
  total = jnp.maximum(jnp.sum(weights) * x.shape[1] * x.shape[2], 1e-12)
  mean = jnp.sum(weights * x, axis=(0, 1, 2), keepdims=True) / total
  var = jnp.sum(weights * jnp.square(x - mean), axis=(0, 1, 2), keepdims=True) / total
  return mean, var


class RunningBatchNorm(nnx.BatchNorm):
  """Norm 'batchnorm': trainable scale/bias; running averages are used when train=False.

  In evaluation the output of a row depends on that row alone, so `mask` is ignored;
  in training (batches are never padded) it weights the batch statistics.
  """

  def __call__(self, x: jnp.ndarray, *, train: bool,  # type: ignore[override]
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    if not train or mask is None:
      return super().__call__(x, use_running_average=not train)
    rows = jnp.broadcast_to(mask.reshape(-1, 1, 1, 1) > 0, x.shape)
    return super().__call__(x, use_running_average=False, mask=rows)


def canonical_norm(kind: str) -> str:
  """`kind`, or the current name of a renamed norm ('batch_stats' -> 'paper_bn')."""
  return defaults.renamed_value("model.norm", kind)


def depends_on_batch(kind: str) -> bool:
  """Whether norm `kind` makes an evaluated image's output depend on the other images
  of its batch ('paper_bn': it normalises with the batch's statistics)."""
  return canonical_norm(kind) == "paper_bn"


def make_norm(kind: str, num_features: int, *, dtype: Any = jnp.float32,
              rngs: nnx.Rngs) -> nnx.Module:
  """Returns the normalisation layer `kind` (one of NORMS, or an old name of one) for
  `num_features` channels."""
  kind = errors.check_choice("model.norm", canonical_norm(kind), NORMS)
  if kind == "none":
    return Identity()
  if kind == "paper_bn":
    return PaperBatchNorm()
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


class Standardize(nnx.Module):
  """Input layer without variables: (x - mean) / std per channel, or the identity.

  The normalisation of models that expect standardised inputs (torchvision's ImageNet
  mean and std, RobustBench's `mu`/`sigma` buffers) as part of the model, so that
  everything outside it (the frequency split, attacks, eps) works on [0, 1] images and
  perturbs before normalising, as RobustBench and Fourier heat maps do. `mean` and
  `std` are tuples of floats, one per channel or one for all; both empty: identity.
  """

  def __init__(self, mean: Sequence[float] = (), std: Sequence[float] = ()):
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Maps (N, H, W, C) to (N, H, W, C) (float32 when standardising)."""
    if not self.mean:
      return x
    mean = jnp.asarray(self.mean, jnp.float32)
    return (x.astype(jnp.float32) - mean) / jnp.asarray(self.std, jnp.float32)


def check_standardize(mean: Sequence[float], std: Sequence[float],
                      channels: int | None = None) -> None:
  """One-line HfcErrors for model.input_mean / model.input_std: both empty, or both of
  one length, 1 or `channels` (any while unknown), numbers, with std > 0."""
  mean, std = tuple(mean), tuple(std)
  if len(mean) != len(std):
    raise errors.HfcError(f"model.input_mean={mean!r} and model.input_std={std!r} must "
                          "have the same length (both () for no standardisation).")
  if channels is not None and len(mean) not in (0, 1, channels):
    raise errors.HfcError(f"model.input_mean={mean!r} has {len(mean)} values; the images "
                          f"have {channels} channels (give 1 or {channels}, or ()).")
  for i, (m, s) in enumerate(zip(mean, std)):
    errors.check_range(f"model.input_mean[{i}]", m, float("-inf"))
    errors.check_range(f"model.input_std[{i}]", s, 0, open_low=True)


def conv_padding(kind: str, kernel: int) -> str | tuple[tuple[int, int], tuple[int, int]]:
  """The `nnx.Conv` padding of a square `kernel` for padding `kind`: 'same' is XLA's
  SAME (at stride 2 on an even side its one padded row and column go after the image),
  'torch' is PyTorch's `padding=kernel // 2` on every side. The two agree at stride 1;
  at stride 2 they sample the image at different offsets, so weights trained in PyTorch
  need 'torch'."""
  kind = errors.check_choice("padding", kind, PADDINGS)
  if kind == "same":
    return "SAME"
  return ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Maps (N, H, W, C) to (N, C) by averaging over H and W in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def classifier_head(features: jnp.ndarray, dropout: nnx.Dropout, dense: nnx.Linear, *,
                    train: bool, rngs: nnx.Rngs | None) -> jnp.ndarray:
  """Dropout then the dense layer on (N, C) features; returns float32 logits (N, classes).
  `dropout.rate` may be a traced scalar (`apply_dropout`)."""
  features = apply_dropout(features, dropout.rate, train=train, rngs=rngs)
  return dense(features).astype(jnp.float32)


def apply_dropout(x: jnp.ndarray, rate, *, train: bool, rngs: nnx.Rngs | None
                  ) -> jnp.ndarray:
  """`nnx.Dropout(rate)(x, deterministic=not train, rngs=rngs)`, bit for bit (the same
  key from the 'dropout' stream, mask and scaling), with `rate` a float or a traced
  float32 scalar: one run's `model.dropout` in a run-parallel group
  (`hfc_jax.stacked`), where `nnx.Dropout`'s Python test of the rate cannot run."""
  traced = isinstance(rate, jax.Array)
  if not train or (not traced and rate == 0.0):
    return x
  if not traced and rate == 1.0:
    return jnp.zeros_like(x)
  if rngs is None:
    raise ValueError("dropout in training needs a 'dropout' key: pass rngs.")
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rngs["dropout"](), p=keep, shape=x.shape,
                              out_sharding=jax.typeof(x).sharding)
  return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
