"""CIFAR ResNet-18 (the blog post's model): post-activation basic blocks.

conv3x3(64) stem, stride 1, no max pool -> 4 stages x 2 basic blocks at 64/128/256/512
channels, stride 2 in the first block of stages 2-4 -> global average pool -> dropout ->
dense. A block is conv3x3-norm-relu-conv3x3-norm, plus the shortcut, then ReLU; the
shortcut is a 1x1 conv + norm where the shape changes. Convs have no bias and He-normal
(fan-out) kernels. With norm='batchnorm' and 10 classes it has 11,173,962 parameters.

This is also the layout (and, module for module, the parameters) of the common PyTorch
CIFAR ResNet-18 (kuangliu/pytorch-cifar, RobustBench's `ResNet18`) except for one
thing: `padding`. 'same' (`resnet18`, what every run here trained) pads a stride-2 3x3
conv by XLA's SAME rule, one row and column after the image; PyTorch's `padding=1`
pads one on every side, so the strided convs sample the image one pixel apart.
`resnet18_torch` is this model with padding='torch', for weights imported from PyTorch
(`hfc_jax.importing`); torchvision's ResNets reuse `BasicBlock` the same way.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import initializers, input_conv, layers

WIDTHS = (64, 128, 256, 512)
STAGE_BLOCKS = (2, 2, 2, 2)
_KERNEL_INIT = initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_features: int, out_features: int, kernel: int, stride: int, *, dtype: Any,
         rngs: nnx.Rngs, on_image: bool = False, padding: str = "same") -> nnx.Conv:
  """A bias-free conv with a square kernel, padded as `padding` says ('same' or 'torch',
  `layers.conv_padding`); `on_image` for the stem (see input_conv)."""
  conv_fn = input_conv.conv_general_dilated if on_image else jax.lax.conv_general_dilated
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=stride,
                  padding=layers.conv_padding(padding, kernel), use_bias=False, dtype=dtype,
                  kernel_init=_KERNEL_INIT, conv_general_dilated=conv_fn, rngs=rngs)


def torch_conv(in_features: int, out_features: int, kernel: int, stride: int, *,
               dtype: Any, rngs: nnx.Rngs, on_image: bool = False) -> nnx.Conv:
  """`conv` with PyTorch's padding (`kernel // 2` on every side): the convs of the
  architectures whose weights are imported from PyTorch (hfc_jax.importing)."""
  return conv(in_features, out_features, kernel, stride, dtype=dtype, rngs=rngs,
              on_image=on_image, padding="torch")


class BasicBlock(nnx.Module):
  """Post-activation basic block with a projection shortcut when the shape changes."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, norm: str,
               dtype: Any, rngs: nnx.Rngs, padding: str = "same"):
    kw = {"padding": padding, "dtype": dtype, "rngs": rngs}
    self.conv1 = conv(in_features, out_features, 3, stride, **kw)
    self.norm1 = layers.make_norm(norm, out_features, dtype=dtype, rngs=rngs)
    self.conv2 = conv(out_features, out_features, 3, 1, **kw)
    self.norm2 = layers.make_norm(norm, out_features, dtype=dtype, rngs=rngs)
    self.projection = stride != 1 or in_features != out_features
    if self.projection:
      self.shortcut_conv = conv(in_features, out_features, 1, stride, **kw)
      self.shortcut_norm = layers.make_norm(norm, out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    """Maps (N, H, W, in) to (N, ceil(H / stride), ceil(W / stride), out); `mask` (N,)
    goes to the norms."""
    y = jax.nn.relu(self.norm1(self.conv1(x), train=train, mask=mask))
    y = self.norm2(self.conv2(y), train=train, mask=mask)
    if self.projection:
      x = self.shortcut_norm(self.shortcut_conv(x), train=train, mask=mask)
    return jax.nn.relu(y + x)


class ResNet18(nnx.Module):
  """CIFAR ResNet-18; `first_conv` is the (3, 3, in_channels, 64) stem conv.
  `padding`: 'same' (`resnet18`) or 'torch' (`resnet18_torch`, see the module docstring)."""

  def __init__(self, *, num_classes: int, in_channels: int, norm: str = "batchnorm",
               dropout: float = 0.0, input_filter: str = "none", filter_radius: float = 0.0,
               dtype: Any = jnp.float32, widths: Sequence[int] = WIDTHS,
               input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
               stage_blocks: Sequence[int] = STAGE_BLOCKS, padding: str = "same",
               rngs: nnx.Rngs):
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.standardize = layers.Standardize(input_mean, input_std)
    self.first_conv = conv(in_channels, widths[0], 3, 1, dtype=dtype, rngs=rngs,
                           on_image=True, padding=padding)
    self.first_norm = layers.make_norm(norm, widths[0], dtype=dtype, rngs=rngs)
    blocks, width = [], widths[0]
    for stage, (out, count) in enumerate(zip(widths, stage_blocks)):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(BasicBlock(width, out, stride, norm=norm, dtype=dtype, rngs=rngs,
                                 padding=padding))
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
    x = self.standardize(self.input_filter(x, train=train))
    x = jax.nn.relu(self.first_norm(self.first_conv(x), train=train, mask=mask))
    for block in self.blocks:
      x = block(x, train=train, mask=mask)
    return layers.classifier_head(layers.global_avg_pool(x), self.dropout, self.head,
                                  train=train, rngs=rngs)
