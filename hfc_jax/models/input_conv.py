"""The convolution on the input image, with its input gradient written as one matmul.

Attacks (FGSM, PGD, the minimal-eps search) need d(loss)/d(image). That gradient leaves
the model through the input gradient of its first convolution, a transposed
convolution with as many output channels as the image has (3). Convolution libraries
do badly with 3 output channels: on 8 simulated XLA:CPU devices that one op was about a
tenth of a small_cnn attack step. Here it is computed instead as

  patch gradients (N, Ho, Wo, kh, kw, Cin) = dy (N, Ho, Wo, Cout) @ W^T,

one matmul with a contraction over Cout, and a col2im that adds the kh * kw shifted
patch-gradient slices into the padded input. These are the same products summed in
another order, so the result equals lax's within float rounding. The forward pass
and the kernel gradient are lax's own. Measured on 2 CPU cores, small_cnn, batch 128,
PGD-7 train step timed in turns with the plain step: 298 -> 250 ms on 8 simulated
devices (the plain step unchanged at 40 ms); on one device with the project's XLA:CPU
flags both stay within noise.

The patch-gradient array is kh * kw times the size of the image gradient, so this is
meant for the first conv only (few input channels). `conv_general_dilated` is a
drop-in for `jax.lax.conv_general_dilated`, handed to `nnx.Conv` by the models; it
takes the matmul route for stride 1, no dilation, one group, NHWC/HWIO/NHWC,
non-negative padding and no preferred element type or output sharding, and passes
everything else to lax unchanged. Parameters are those of a plain `nnx.Conv`, so
checkpoints do not change.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def _nhwc_numbers(lhs_shape, rhs_shape) -> lax.ConvDimensionNumbers:
  return lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def _all_ones(values) -> bool:
  return values is None or all(v == 1 for v in values)


def _explicit_pads(padding, image_hw: Sequence[int], kernel_hw: Sequence[int]) -> Pads | None:
  """`padding` ('SAME', 'VALID', ... or (lo, hi) pairs) as ((top, bottom), (left, right)),
  or None where a pair is negative (lax crops there; left to lax)."""
  if isinstance(padding, str):
    pairs = lax.padtype_to_pads(tuple(image_hw), tuple(kernel_hw), (1, 1), padding)
  else:
    pairs = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pairs)
  if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
    return None
  return pads  # type: ignore[return-value]


def _forward(x: jax.Array, w: jax.Array, pads: Pads, precision) -> jax.Array:
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC,
                                  precision=precision)


def input_gradient(dy: jax.Array, w: jax.Array, pads: Pads, image_hw: Sequence[int],
                   precision=None) -> jax.Array:
  """d(sum(dy * conv(x, w)))/dx for a stride-1 NHWC conv: matmul, then col2im.

  Args:
    dy: (N, Ho, Wo, Cout) output gradient.
    w: (kh, kw, Cin, Cout) kernel.
    pads: ((top, bottom), (left, right)) zero padding of the forward conv, >= 0.
    image_hw: (H, W) of the conv's input.

  Returns:
    (N, H, W, Cin) float32 (accumulated in float32 whatever the dtype of dy and w).
  """
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = pads
  height, width = image_hw
  padded_h, padded_w = height + top + bottom, width + left + right
  out_h, out_w = dy.shape[1:3]
  patches = jnp.einsum("nhwo,ijco->nhwijc", dy, w, precision=precision,
                       preferred_element_type=jnp.float32)
  # Output pixel (h, w) read padded input pixel (h + i, w + j) through kernel tap (i, j).
  padded = sum(
      jnp.pad(patches[:, :, :, i, j, :],
              ((0, 0), (i, padded_h - out_h - i), (j, padded_w - out_w - j), (0, 0)))
      for i in range(kh) for j in range(kw))
  return padded[:, top:top + height, left:left + width, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, pads: Pads, precision) -> jax.Array:
  return _forward(x, w, pads, precision)


def _conv_fwd(x, w, pads, precision):
  return _forward(x, w, pads, precision), (x, w)


def _conv_bwd(pads, precision, residuals, dy):
  x, w = residuals
  dx = input_gradient(dy, w, pads, x.shape[1:3], precision).astype(x.dtype)
  _, kernel_vjp = jax.vjp(lambda k: _forward(x, k, pads, precision), w)
  return dx, kernel_vjp(dy)[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         **kwargs):
  """`lax.conv_general_dilated`, with the matmul input gradient where it applies.

  Same arguments and result as lax's. The conditions are in the module docstring;
  `kwargs` (such as nnx's `out_sharding=None`) must be None to take the matmul route.
  """
  lax_call = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
      rhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
      preferred_element_type, **kwargs)
  if (lhs.ndim != 4 or dimension_numbers is None or not _all_ones(window_strides)
      or not _all_ones(lhs_dilation) or not _all_ones(rhs_dilation)
      or feature_group_count != 1 or batch_group_count != 1
      or preferred_element_type is not None or any(v is not None for v in kwargs.values())):
    return lax_call()
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if numbers != _nhwc_numbers(lhs.shape, rhs.shape):
    return lax_call()
  pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2])
  if pads is None:
    return lax_call()
  return _conv(lhs, rhs, pads, precision)
