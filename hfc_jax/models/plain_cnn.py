"""A plain CNN with a dense head on the spatial features (no global pooling).

conv3x3(w1) -> norm -> ReLU -> conv3x3(w2) -> norm -> ReLU -> maxpool2 ->
conv3x3(w3) -> norm -> ReLU -> maxpool2 -> flatten (H/4 x W/4 x w3) -> dense(w4) ->
ReLU -> dropout -> dense(num_classes), with widths (w1, w2, w3, w4) = (32, 32, 64, 128)
by default.

This is the common small CNN of tutorials and of many follow-ups of the paper. It differs
from `small_cnn` in the two places that decide how much of the high-frequency component a
model can use: its first two convs both work at full resolution (`small_cnn` max-pools
after its first conv), and its classifier sees where features are (`small_cnn` averages
them over the image). The flattened head makes the parameter count depend on the image
size, so the model is built for one size (`image_size`, (height, width)).
Convs and dense layers carry a bias; kernels use He-normal init.

Two ablations, each changing one of those two places, are models of their own
(`models.MODELS`): `plain_cnn_early_pool` max-pools after the first conv too (as
small_cnn does), and `plain_cnn_gap` averages the features over the image before the
dense head (global average pooling, as small_cnn does).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import initializers, input_conv, layers, pooling
from hfc_jax.models.small_cnn import ConvNormRelu

WIDTHS = (32, 32, 64, 128)  # conv1, conv2, conv3, hidden dense units


def feature_size(image_size: Sequence[int], pools: int = 2) -> tuple[int, int]:
  """(height, width) of the features after `pools` 2x2 'SAME' max pools: ceil(s / 2^pools)
  per side (two pools: 28 -> 7, 32 -> 8)."""
  height, width = (-(-int(s) // 2 ** pools) for s in image_size)
  return height, width


class PlainCNN(nnx.Module):
  """The plain CNN; `first_conv` is the full-resolution 3x3 conv on the (filtered) input."""

  needs_image_size = True  # models.create passes the (height, width) it is built for

  def __init__(self, *, num_classes: int, in_channels: int, image_size: Sequence[int],
               norm: str = "none", dropout: float = 0.0, input_filter: str = "none",
               filter_radius: float = 0.0, dtype: Any = jnp.float32,
               widths: Sequence[int] = WIDTHS, input_mean: Sequence[float] = (),
               input_std: Sequence[float] = (), early_pool: bool = False,
               global_pool: bool = False, rngs: nnx.Rngs):
    c1, c2, c3, hidden = widths
    self.early_pool, self.global_pool = early_pool, global_pool
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.standardize = layers.Standardize(input_mean, input_std)
    self.first_conv = nnx.Conv(in_channels, c1, (3, 3), padding="SAME", dtype=dtype,
                               kernel_init=initializers.he_normal(),
                               conv_general_dilated=input_conv.conv_general_dilated, rngs=rngs)
    self.first_norm = layers.make_norm(norm, c1, dtype=dtype, rngs=rngs)
    self.conv2 = ConvNormRelu(c1, c2, norm=norm, dtype=dtype, rngs=rngs)
    self.conv3 = ConvNormRelu(c2, c3, norm=norm, dtype=dtype, rngs=rngs)
    height, width = feature_size(image_size, 3 if early_pool else 2)
    features = c3 if global_pool else height * width * c3
    self.hidden = nnx.Linear(features, hidden, dtype=dtype,
                             kernel_init=initializers.he_normal(), rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(hidden, num_classes, dtype=dtype,
                           kernel_init=initializers.lecun_normal(), rngs=rngs)

  def __call__(self, x: jnp.ndarray, *, train: bool, rngs: nnx.Rngs | None = None,
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Maps (N, H, W, in_channels) images in [0, 1], (H, W) = `image_size`, to float32
    logits (N, num_classes). `mask`: optional (N,) float, 1 real and 0 padding rows."""
    x = self.standardize(self.input_filter(x, train=train))
    x = jax.nn.relu(self.first_norm(self.first_conv(x), train=train, mask=mask))
    if self.early_pool:
      x = pooling.max_pool_2x2(x)
    x = pooling.max_pool_2x2(self.conv2(x, train=train, mask=mask))
    x = pooling.max_pool_2x2(self.conv3(x, train=train, mask=mask))
    x = layers.global_avg_pool(x) if self.global_pool else x.reshape(x.shape[0], -1)
    x = jax.nn.relu(self.hidden(x))
    return layers.classifier_head(x, self.dropout, self.head, train=train, rngs=rngs)


class PlainCNNEarlyPool(PlainCNN):
  """plain_cnn with a 2x2 max pool after the first conv as well: one conv at full
  resolution, as in small_cnn."""

  def __init__(self, **kwargs):
    super().__init__(early_pool=True, **kwargs)


class PlainCNNGlobalPool(PlainCNN):
  """plain_cnn whose dense head sees the features averaged over the image (global
  average pooling, as in small_cnn), not where they are."""

  def __init__(self, **kwargs):
    super().__init__(global_pool=True, **kwargs)
