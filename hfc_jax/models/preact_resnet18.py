"""Pre-activation ResNet-18 (He et al., ECCV 2016) as RobustBench defines it.

RobustBench's `PreActResNet18()` (robustbench/model_zoo/architectures/resnet.py:
`PreActResNet(PreActBlock, [2, 2, 2, 2])`, from kuangliu/pytorch-cifar), the model of
fast adversarial training (Wong et al., ICLR 2020) and of many CIFAR entries.

conv3x3(64) stem (no norm after it) -> 4 stages x 2 pre-activation basic blocks at
64/128/256/512 channels, stride 2 in the first block of stages 2-4 -> global average
pool -> dropout -> dense (with bias). There is no norm or ReLU after the last block
(RobustBench's default `bn_before_fc=False`). A block is

  relu(norm1(x)) -> conv3x3 (stride) -> norm2 -> ReLU -> conv3x3, plus the shortcut:
  x itself, or a bias-free 1x1 conv (stride, no norm) of x where the shape changes.

Convs have no bias, He-normal (fan-out) kernels and PyTorch's padding. The paper's own
model, the option-A pre-activation ResNet-32, is `preact_resnet.py`. With norm='batchnorm'
and 10 classes it has 11,171,146 parameters.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import initializers, layers, resnet

WIDTHS = (64, 128, 256, 512)
STAGE_BLOCKS = (2, 2, 2, 2)


class PreActBlock(nnx.Module):
  """RobustBench's `PreActBlock`: the shortcut conv, where there is one, reads x."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, norm: str,
               dtype: Any, rngs: nnx.Rngs):
    self.norm1 = layers.make_norm(norm, in_features, dtype=dtype, rngs=rngs)
    self.conv1 = resnet.torch_conv(in_features, out_features, 3, stride, dtype=dtype, rngs=rngs)
    self.norm2 = layers.make_norm(norm, out_features, dtype=dtype, rngs=rngs)
    self.conv2 = resnet.torch_conv(out_features, out_features, 3, 1, dtype=dtype, rngs=rngs)
    self.projection = stride != 1 or in_features != out_features
    if self.projection:
      self.shortcut = resnet.torch_conv(in_features, out_features, 1, stride,
                                        dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    """Maps (N, H, W, in) to (N, ceil(H / stride), ceil(W / stride), out); `mask` (N,)
    goes to the norms."""
    y = self.conv1(jax.nn.relu(self.norm1(x, train=train, mask=mask)))
    y = self.conv2(jax.nn.relu(self.norm2(y, train=train, mask=mask)))
    return y + (self.shortcut(x) if self.projection else x)


class PreActResNet18(nnx.Module):
  """RobustBench's PreActResNet-18; `first_conv` is the (3, 3, in_channels, 64) stem."""

  def __init__(self, *, num_classes: int, in_channels: int, norm: str = "batchnorm",
               dropout: float = 0.0, input_filter: str = "none", filter_radius: float = 0.0,
               dtype: Any = jnp.float32, widths: Sequence[int] = WIDTHS,
               input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
               stage_blocks: Sequence[int] = STAGE_BLOCKS, rngs: nnx.Rngs):
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.standardize = layers.Standardize(input_mean, input_std)
    self.first_conv = resnet.torch_conv(in_channels, widths[0], 3, 1, dtype=dtype, rngs=rngs,
                                        on_image=True)
    blocks, width = [], widths[0]
    for stage, (out, count) in enumerate(zip(widths, stage_blocks)):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(PreActBlock(width, out, stride, norm=norm, dtype=dtype, rngs=rngs))
        width = out
    self.blocks = nnx.List(blocks)
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
    return layers.classifier_head(layers.global_avg_pool(x), self.dropout, self.head,
                                  train=train, rngs=rngs)
