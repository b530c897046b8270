"""The paper's model: CIFAR pre-activation ResNet-32 (n = 5), as the original code builds it.

conv3x3(16) stem -> 3 stages x 5 pre-activation basic blocks at 16/32/64 channels,
stride 2 in the first block of stages 2 and 3 -> norm -> ReLU -> global average pool ->
dropout -> dense. A block is norm-relu-conv3x3-norm-relu-conv3x3 plus the shortcut.
Option-A shortcuts: where the shape changes, the block input is 2x2 average pooled with
stride 2 and its channels are zero-padded equally on both sides (as in the TensorFlow
CIFAR ResNet the original code builds on). Convs have no bias; conv and dense kernels
use Xavier (Glorot uniform) init. The default norm is 'none', the paper's "vanilla".
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import initializers, input_conv, layers

WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 5  # n = 5 gives 6n + 2 = 32 layers
_XAVIER = initializers.glorot_uniform()


def conv3x3(in_features: int, out_features: int, stride: int, *, dtype: Any,
            rngs: nnx.Rngs, on_image: bool = False) -> nnx.Conv:
  """A bias-free 3x3 SAME conv with Xavier init; `on_image` for the stem (see input_conv)."""
  conv_fn = input_conv.conv_general_dilated if on_image else jax.lax.conv_general_dilated
  return nnx.Conv(in_features, out_features, (3, 3), strides=stride, padding="SAME",
                  use_bias=False, dtype=dtype, kernel_init=_XAVIER,
                  conv_general_dilated=conv_fn, rngs=rngs)


def option_a_shortcut(x: jnp.ndarray, out_features: int, stride: int) -> jnp.ndarray:
  """Maps (N, H, W, C) to (N, ceil(H / stride), ceil(W / stride), out_features), no params."""
  if stride != 1:
    x = nnx.avg_pool(x, (stride, stride), strides=(stride, stride), padding="SAME",
                     count_include_pad=False)
  extra = out_features - x.shape[-1]
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class PreActBlock(nnx.Module):
  """Pre-activation basic block: norm-relu-conv-norm-relu-conv + option-A shortcut."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, norm: str,
               dtype: Any, rngs: nnx.Rngs):
    self.norm1 = layers.make_norm(norm, in_features, dtype=dtype, rngs=rngs)
    self.conv1 = conv3x3(in_features, out_features, stride, dtype=dtype, rngs=rngs)
    self.norm2 = layers.make_norm(norm, out_features, dtype=dtype, rngs=rngs)
    self.conv2 = conv3x3(out_features, out_features, 1, dtype=dtype, rngs=rngs)
    self.out_features = out_features
    self.stride = stride

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    """Maps (N, H, W, in) to (N, ceil(H / stride), ceil(W / stride), out); `mask` (N,)
    goes to the norms."""
    y = self.conv1(jax.nn.relu(self.norm1(x, train=train, mask=mask)))
    y = self.conv2(jax.nn.relu(self.norm2(y, train=train, mask=mask)))
    return y + option_a_shortcut(x, self.out_features, self.stride).astype(y.dtype)


class PreActResNet32(nnx.Module):
  """Pre-activation ResNet-32; `first_conv` is the (3, 3, in_channels, 16) stem conv."""

  def __init__(self, *, num_classes: int, in_channels: int, norm: str = "none",
               dropout: float = 0.0, input_filter: str = "none", filter_radius: float = 0.0,
               dtype: Any = jnp.float32, widths: Sequence[int] = WIDTHS,
               input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
               blocks_per_stage: int = BLOCKS_PER_STAGE, rngs: nnx.Rngs):
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.standardize = layers.Standardize(input_mean, input_std)
    self.first_conv = conv3x3(in_channels, widths[0], 1, dtype=dtype, rngs=rngs,
                              on_image=True)
    blocks, width = [], widths[0]
    for stage, out in enumerate(widths):
      for i in range(blocks_per_stage):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(PreActBlock(width, out, stride, norm=norm, dtype=dtype, rngs=rngs))
        width = out
    self.blocks = nnx.List(blocks)
    self.final_norm = layers.make_norm(norm, width, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(width, num_classes, dtype=dtype, kernel_init=_XAVIER, rngs=rngs)

  def __call__(self, x: jnp.ndarray, *, train: bool, rngs: nnx.Rngs | None = None,
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Maps (N, H, W, in_channels) images in [0, 1] to float32 logits (N, num_classes).

    `mask`: optional (N,) float, 1 for real rows, 0 for padding (kept out of batch statistics).
    """
    x = self.first_conv(self.standardize(self.input_filter(x, train=train)))
    for block in self.blocks:
      x = block(x, train=train, mask=mask)
    x = jax.nn.relu(self.final_norm(x, train=train, mask=mask))
    return layers.classifier_head(layers.global_avg_pool(x), self.dropout, self.head,
                                  train=train, rngs=rngs)
