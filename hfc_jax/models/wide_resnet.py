"""Wide ResNet (Zagoruyko & Komodakis, BMVC 2016) as RobustBench defines it.

RobustBench's `WideResNet` (robustbench/model_zoo/architectures/wide_resnet.py, from the
TRADES code), the architecture of most of its CIFAR models (WRN-28-10, 34-10, 34-20,
70-16, ...): WRN-`depth`-`width_factor` has n = (depth - 4) / 6 blocks per stage.

conv3x3(16) stem -> 3 stages of n pre-activation basic blocks at 16k, 32k, 64k channels
(k = width_factor), stride 2 in the first block of stages 2 and 3 -> norm -> ReLU ->
global average pool -> dropout -> dense (with bias). A block, with a = relu(norm1(x)):

  in == out channels:  x + conv2(relu(norm2(conv1(a))))
  otherwise:           conv1x1(a) + conv2(relu(norm2(conv1(a))))   (the 1x1 conv has the
                                                                   block's stride)

so where the shape changes the shortcut starts from the activated input, not from x
(RobustBench's `equalInOut`, which compares the widths only: at its widths every stride-2
block widens, so the two agree there). Convs have no bias, He-normal (fan-out) kernels, and
PyTorch's padding (one pixel on every side of a 3x3 conv, at stride 2 too). RobustBench
pools with `avg_pool2d(8)`, which is the global average at 32x32, the size it is used at.
WRN-28-10 with 10 classes and norm='batchnorm' has 36,479,194 parameters.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import initializers, layers, resnet

WIDTHS = (16, 16, 32, 64)   # stem and stages 1-3 at width factor 1 (stages are times k)
DEPTH = 28
WIDTH_FACTOR = 10


def blocks_per_stage(depth: int) -> int:
  """n = (depth - 4) / 6 for a WRN of `depth` (10, 16, 22, 28, 34, ..., 70)."""
  return (depth - 4) // 6


class WideBlock(nnx.Module):
  """RobustBench's pre-activation `BasicBlock` (without its in-block dropout)."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, norm: str,
               dtype: Any, rngs: nnx.Rngs):
    self.norm1 = layers.make_norm(norm, in_features, dtype=dtype, rngs=rngs)
    self.conv1 = resnet.torch_conv(in_features, out_features, 3, stride, dtype=dtype, rngs=rngs)
    self.norm2 = layers.make_norm(norm, out_features, dtype=dtype, rngs=rngs)
    self.conv2 = resnet.torch_conv(out_features, out_features, 3, 1, dtype=dtype, rngs=rngs)
    # RobustBench tests the widths only; at its widths a stride-2 block always widens.
    self.equal_in_out = in_features == out_features and stride == 1
    if not self.equal_in_out:
      self.shortcut = resnet.torch_conv(in_features, out_features, 1, stride,
                                        dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    """Maps (N, H, W, in) to (N, ceil(H / stride), ceil(W / stride), out); `mask` (N,)
    goes to the norms."""
    a = jax.nn.relu(self.norm1(x, train=train, mask=mask))
    y = self.conv2(jax.nn.relu(self.norm2(self.conv1(a), train=train, mask=mask)))
    return y + (x if self.equal_in_out else self.shortcut(a))


class WideResNet(nnx.Module):
  """WRN-depth-width_factor; `first_conv` is the (3, 3, in_channels, 16) stem conv.

  `widths`: (stem, stage 1, stage 2, stage 3) at width factor 1; the stages are
  multiplied by `width_factor`. `depth` must be 6n + 4, n >= 1 (`check_depth`).
  """

  takes_depth = True   # models.create passes model.depth and model.width_factor

  def __init__(self, *, num_classes: int, in_channels: int, norm: str = "batchnorm",
               dropout: float = 0.0, input_filter: str = "none", filter_radius: float = 0.0,
               dtype: Any = jnp.float32, widths: Sequence[int] = WIDTHS,
               input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
               depth: int = DEPTH, width_factor: int = WIDTH_FACTOR, rngs: nnx.Rngs):
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.standardize = layers.Standardize(input_mean, input_std)
    self.first_conv = resnet.torch_conv(in_channels, widths[0], 3, 1, dtype=dtype, rngs=rngs,
                                        on_image=True)
    blocks, width = [], widths[0]
    for stage, base in enumerate(widths[1:]):
      for i in range(blocks_per_stage(depth)):
        stride = 2 if stage > 0 and i == 0 else 1
        out = base * width_factor
        blocks.append(WideBlock(width, out, stride, norm=norm, dtype=dtype, rngs=rngs))
        width = out
    self.blocks = nnx.List(blocks)
    self.final_norm = layers.make_norm(norm, width, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(width, num_classes, dtype=dtype,
                           kernel_init=initializers.lecun_normal(), rngs=rngs)

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
