"""torchvision's ImageNet ResNets (He et al., CVPR 2016): ResNet-18 and ResNet-50.

The layout of `torchvision.models.resnet18` / `resnet50` (torchvision/models/resnet.py),
so that their published weights (and RobustBench's ImageNet ResNets, which wrap them)
import one to one:

conv7x7(64, stride 2, pad 3) stem -> norm -> ReLU -> 3x3 max pool (stride 2, pad 1) ->
4 stages at 64/128/256/512 "planes", stride 2 in the first block of stages 2-4 ->
global average pool -> dropout -> dense (with bias).

- ResNet-18: 2 basic blocks per stage, `resnet.BasicBlock` with PyTorch's padding
  (conv3x3-norm-relu-conv3x3-norm + shortcut, then ReLU).
- ResNet-50: 3, 4, 6, 3 bottleneck blocks (`Bottleneck`): conv1x1(planes)-norm-relu-
  conv3x3(planes, stride)-norm-relu-conv1x1(4 planes)-norm + shortcut, then ReLU; the
  stride sits on the 3x3 conv (torchvision's "ResNet v1.5").

A shortcut is the identity, or a 1x1 conv (with the block's stride) + norm where the shape
changes (torchvision's `downsample`). Convs have no bias and He-normal (fan-out) kernels.
The weights expect ImageNet-normalised inputs: the importer sets `model.input_mean` /
`input_std` to torchvision's mean and std, so the model itself takes [0, 1] images.
With 1000 classes: 11,689,512 (ResNet-18) and 25,557,032 (ResNet-50) parameters.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import initializers, layers, resnet

WIDTHS = (64, 128, 256, 512)   # planes per stage; the stem has widths[0] channels
EXPANSION = {"basic": 1, "bottleneck": 4}   # a block's output channels / planes


class Bottleneck(nnx.Module):
  """torchvision's `Bottleneck` (v1.5: the stride on the 3x3 conv), post-activation."""

  def __init__(self, in_features: int, planes: int, stride: int, *, norm: str,
               dtype: Any, rngs: nnx.Rngs):
    out_features = planes * EXPANSION["bottleneck"]
    kw = {"dtype": dtype, "rngs": rngs}
    self.conv1 = resnet.torch_conv(in_features, planes, 1, 1, **kw)
    self.norm1 = layers.make_norm(norm, planes, **kw)
    self.conv2 = resnet.torch_conv(planes, planes, 3, stride, **kw)
    self.norm2 = layers.make_norm(norm, planes, **kw)
    self.conv3 = resnet.torch_conv(planes, out_features, 1, 1, **kw)
    self.norm3 = layers.make_norm(norm, out_features, **kw)
    self.projection = stride != 1 or in_features != out_features
    if self.projection:
      self.shortcut_conv = resnet.torch_conv(in_features, out_features, 1, stride, **kw)
      self.shortcut_norm = layers.make_norm(norm, out_features, **kw)

  def __call__(self, x: jnp.ndarray, *, train: bool, mask: jnp.ndarray | None = None
               ) -> jnp.ndarray:
    """Maps (N, H, W, in) to (N, ceil(H / stride), ceil(W / stride), 4 planes)."""
    y = jax.nn.relu(self.norm1(self.conv1(x), train=train, mask=mask))
    y = jax.nn.relu(self.norm2(self.conv2(y), train=train, mask=mask))
    y = self.norm3(self.conv3(y), train=train, mask=mask)
    if self.projection:
      x = self.shortcut_norm(self.shortcut_conv(x), train=train, mask=mask)
    return jax.nn.relu(y + x)


def make_block(kind: str, in_features: int, planes: int, stride: int, *, norm: str,
               dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
  """A 'basic' (`resnet.BasicBlock`, PyTorch padding) or 'bottleneck' block."""
  if kind == "basic":
    return resnet.BasicBlock(in_features, planes, stride, norm=norm, dtype=dtype,
                             rngs=rngs, padding="torch")
  return Bottleneck(in_features, planes, stride, norm=norm, dtype=dtype, rngs=rngs)


class TorchvisionResNet(nnx.Module):
  """torchvision's ResNet; `first_conv` is the (7, 7, in_channels, 64) stem conv."""

  def __init__(self, *, num_classes: int, in_channels: int, block: str,
               stage_blocks: Sequence[int], norm: str = "batchnorm", dropout: float = 0.0,
               input_filter: str = "none", filter_radius: float = 0.0,
               dtype: Any = jnp.float32, widths: Sequence[int] = WIDTHS,
               input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
               rngs: nnx.Rngs):
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.standardize = layers.Standardize(input_mean, input_std)
    self.first_conv = resnet.torch_conv(in_channels, widths[0], 7, 2, dtype=dtype, rngs=rngs,
                                        on_image=True)
    self.first_norm = layers.make_norm(norm, widths[0], dtype=dtype, rngs=rngs)
    blocks, width = [], widths[0]
    for stage, (planes, count) in enumerate(zip(widths, stage_blocks)):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(make_block(block, width, planes, stride, norm=norm, dtype=dtype,
                                 rngs=rngs))
        width = planes * EXPANSION[block]
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
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train, mask=mask)
    return layers.classifier_head(layers.global_avg_pool(x), self.dropout, self.head,
                                  train=train, rngs=rngs)


TorchvisionResNet18 = functools.partial(TorchvisionResNet, block="basic",
                                        stage_blocks=(2, 2, 2, 2))
TorchvisionResNet50 = functools.partial(TorchvisionResNet, block="bottleneck",
                                        stage_blocks=(3, 4, 6, 3))
