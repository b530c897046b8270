"""The convolution on the input image, with its input gradient written as one matmul.

Attacks (FGSM, PGD, the minimal-eps search) need d(loss)/d(image). That gradient leaves
the model through the input gradient of its first convolution, a transposed
convolution with as many output channels as the image has (3). Convolution libraries
do badly with 3 output channels: on 8 simulated XLA:CPU devices that one op was about a
tenth of a small_cnn attack step. Here it is computed instead as

  patch gradients (N, Ho, Wo, kh * kw, Cin) = dy (N, Ho, Wo, Cout) @ W^T,

one matmul with a contraction over Cout, and a col2im that adds the kh * kw shifted
patch-gradient slices into the padded input. These are the same products summed in
another order, so the result equals lax's within float rounding.

How: a custom JVP. The value and the kernel tangent are lax's convolution; the image
tangent is `patch_conv` (im2col and one matmul), and reverse mode transposes that into
the matmul and col2im above. Forward mode (`jax.jvp`, `jax.jacfwd`, Hessians) keeps
working, and a plain train step, which never asks for the image gradient, computes
exactly what lax's convolution computes (its gradients are bit-identical). Its speed-up
of the PGD train step is measured in docs/performance.md.

The patch-gradient array is kh * kw times the size of the image gradient, so this is
meant for the first conv only (few input channels). `conv_general_dilated` is a
drop-in for `jax.lax.conv_general_dilated`, handed to `nnx.Conv` by the models; it
takes this route for stride 1, no dilation, one group, NHWC/HWIO/NHWC, non-negative
padding and no preferred element type or output sharding, and passes everything else
to lax unchanged. Parameters are those of a plain `nnx.Conv`, so checkpoints do not
change.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

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


def patch_conv(x: jax.Array, w: jax.Array, pads: Pads, precision=None) -> jax.Array:
  """The stride-1 NHWC convolution as im2col and one matmul: the form that is
  differentiated with respect to the image.

  Args:
    x: (N, H, W, Cin) image (or its tangent).
    w: (kh, kw, Cin, Cout) kernel.
    pads: ((top, bottom), (left, right)) zero padding, >= 0.

  Returns:
    (N, Ho, Wo, Cout) in the dtype of x and w (computed in float32), equal to
    `lax.conv_general_dilated` within float rounding.
  """
  kh, kw = w.shape[:2]
  out_h = x.shape[1] + pads[0][0] + pads[0][1] - kh + 1
  out_w = x.shape[2] + pads[1][0] + pads[1][1] - kw + 1
  # float32 throughout, so that the transposed map (the image gradient) also sums in
  # float32 and rounds once, as a convolution library does.
  padded = jnp.pad(x.astype(jnp.float32), ((0, 0), *pads, (0, 0)))
  # Tap (i, j) of output pixel (h, w) reads padded pixel (h + i, w + j).
  patches = jnp.stack([padded[:, i:i + out_h, j:j + out_w, :]
                       for i in range(kh) for j in range(kw)], axis=3)
  kernel = w.astype(jnp.float32).reshape(kh * kw, *w.shape[2:])
  y = jnp.einsum("nhwkc,kco->nhwo", patches, kernel, precision=precision)
  return y.astype(jnp.result_type(x, w))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, pads: Pads, precision) -> jax.Array:
  return _forward(x, w, pads, precision)


def _conv_jvp(pads, precision, primals, tangents):
  """lax's convolution for the value and the kernel tangent, `patch_conv` for the image
  tangent; reverse mode transposes the latter into a matmul and a col2im."""
  x, w = primals
  x_dot, w_dot = tangents
  y = _forward(x, w, pads, precision)
  parts = []
  if not isinstance(x_dot, SymbolicZero):
    parts.append(patch_conv(x_dot, w, pads, precision))
  if not isinstance(w_dot, SymbolicZero):
    parts.append(_forward(x, w_dot, pads, precision))
  return y, functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


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
