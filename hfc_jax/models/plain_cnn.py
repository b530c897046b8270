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
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hfc_jax.models import input_conv, layers, pooling
from hfc_jax.models.small_cnn import ConvNormRelu

WIDTHS = (32, 32, 64, 128)  # conv1, conv2, conv3, hidden dense units


def feature_size(image_size: Sequence[int]) -> tuple[int, int]:
  """(height, width) of the features the head sees: two 2x2 'SAME' max pools, so
  ceil(ceil(s / 2) / 2) = ceil(s / 4) per side (28 -> 7, 32 -> 8)."""
  height, width = ((int(s) + 3) // 4 for s in image_size)
  return height, width


class PlainCNN(nnx.Module):
  """The plain CNN; `first_conv` is the full-resolution 3x3 conv on the (filtered) input."""

  needs_image_size = True  # models.create passes the (height, width) it is built for

  def __init__(self, *, num_classes: int, in_channels: int, image_size: Sequence[int],
               norm: str = "none", dropout: float = 0.0, input_filter: str = "none",
               filter_radius: float = 0.0, dtype: Any = jnp.float32,
               widths: Sequence[int] = WIDTHS, rngs: nnx.Rngs):
    c1, c2, c3, hidden = widths
    self.input_filter = layers.FrequencyFilter(input_filter, filter_radius)
    self.first_conv = nnx.Conv(in_channels, c1, (3, 3), padding="SAME", dtype=dtype,
                               kernel_init=nnx.initializers.he_normal(),
                               conv_general_dilated=input_conv.conv_general_dilated, rngs=rngs)
    self.first_norm = layers.make_norm(norm, c1, dtype=dtype, rngs=rngs)
    self.conv2 = ConvNormRelu(c1, c2, norm=norm, dtype=dtype, rngs=rngs)
    self.conv3 = ConvNormRelu(c2, c3, norm=norm, dtype=dtype, rngs=rngs)
    height, width = feature_size(image_size)
    self.hidden = nnx.Linear(height * width * c3, hidden, dtype=dtype,
                             kernel_init=nnx.initializers.he_normal(), rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray, *, train: bool, rngs: nnx.Rngs | None = None,
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Maps (N, H, W, in_channels) images in [0, 1], (H, W) = `image_size`, to float32
    logits (N, num_classes). `mask`: optional (N,) float, 1 real and 0 padding rows."""
    x = self.input_filter(x, train=train)
    x = jax.nn.relu(self.first_norm(self.first_conv(x), train=train, mask=mask))
    x = pooling.max_pool_2x2(self.conv2(x, train=train, mask=mask))
    x = pooling.max_pool_2x2(self.conv3(x, train=train, mask=mask))
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return layers.classifier_head(x, self.dropout, self.head, train=train, rngs=rngs)
