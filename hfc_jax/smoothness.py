"""Smoothness of first-layer kernels: smoothing, smoothness measures and a penalty.

Wang et al. (CVPR 2020), section 6, smooth the trained first conv layer with
their eq. 3, `w_ij <- w_ij + rho * (sum of the 8 spatial neighbours of w_ij)`, and ask
whether smoother kernels make a model more robust; the blog adds low-pass filtering of
the kernels in Fourier space and a training penalty on adjacent differences (Wang et
al., ICLR 2020, "Smooth kernels improve adversarial robustness").

Kernels are HWIO arrays (kh, kw, in_channels, out_channels), as stored in
`params['first_conv']['kernel']`. A *slice* is one spatial map `kernel[:, :, i, o]`
(kh, kw). Everything here acts on axes 0 and 1 of each slice independently and never
mixes channels. (The original code's PyTorch port smoothed the OIHW tensor as if it were
HWIO, i.e. across channels: tests/smoothness_test.py checks that we do not.)

Conventions:
  * eq. 3 boundary: each slice is padded by one value on every side, repeating its edge
    values; this is `scipy.signal.convolve2d(w, [[r, r, r], [r, 1, r], [r, r, r]],
    boundary='symm', mode='same')` for every kh, kw >= 1 (a one-wide symmetric pad is
    the edge value). So a 1x1 slice w becomes (1 + 8 rho) w, and even sizes need no
    centring choice (the 3x3 stencil is centred on each value).
  * Fourier low-pass: the centred 2-D DFT of a slice has its DC term at
    (kh // 2, kw // 2), as `hfc_jax.frequency.disc_mask`; frequencies at distance
    `< cutoff` from it are kept. `cutoff` in (0, 1] keeps the DC term only (the slice
    mean); `cutoff > corner_distance(kh, kw)` keeps everything (the identity).
  * Measures are floats; a slice with no adjacent pairs (1x1) or all zeros scores 0.

Numeric functions are pure jnp and jittable (`fourier_lowpass_kernel` with a static
`cutoff`); the params helpers take pure nested dicts of arrays
(`Functional.split`) and return new dicts sharing every untouched leaf.
"""

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hfc_jax import errors, frequency

PyTree = Any
# Offsets (row, col) into a one-padded slice of the 8 neighbours of each value.
_NEIGHBOURS = tuple((r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1))


# ------------------------------------------------------------------ checks and params


def check_kernel(kernel: Any) -> jnp.ndarray:
  """Returns `kernel` as a float jnp array, HfcError unless it is 4-D HWIO, all sizes >= 1."""
  k = jnp.asarray(kernel)
  if k.ndim != 4 or min(k.shape) < 1:
    raise errors.HfcError(
        f"kernels.kernel has shape {tuple(k.shape)}; expected HWIO (kh, kw, in_channels, "
        "out_channels), every size >= 1.")
  if not jnp.issubdtype(k.dtype, jnp.floating):
    k = k.astype(jnp.float32)
  return k


def _check_nonnegative(field: str, value: Any, *, positive: bool = False,
                       finite: bool = True) -> Any:
  """Returns `value` if >= 0 (> 0 if positive), not NaN (nor inf if finite), else HfcError.

  Tracers (a traced rho under jit) pass unchecked.
  """
  if isinstance(value, jax.core.Tracer):
    return value
  number = float(value)
  if (math.isnan(number) or number < 0 or (positive and number == 0)
      or (finite and math.isinf(number))):
    bound = ("> 0" if positive else ">= 0") + (", finite" if finite else "")
    raise errors.HfcError(f"{field}={value!r} is out of range; allowed: values {bound}.")
  return value


def first_conv_of(params: PyTree, *, model: str | None = None) -> jnp.ndarray:
  """Returns params['first_conv']['kernel'], or a one-line HfcError naming `model`."""
  conv = params.get("first_conv") if isinstance(params, Mapping) else None
  if not isinstance(conv, Mapping) or "kernel" not in conv:
    who = f"model {model!r}" if model else "the params"
    keys = ", ".join(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
    raise errors.HfcError(f"{who} has no first conv layer params['first_conv']['kernel'] "
                          f"to smooth or measure (top level: {keys}).")
  return conv["kernel"]


def replace_first_conv(params: PyTree, kernel: jnp.ndarray) -> PyTree:
  """A new params dict with `kernel` as the first conv kernel; all other leaves shared."""
  return {**params, "first_conv": {**params["first_conv"], "kernel": kernel}}


# ------------------------------------------------------------------ smoothing


def smooth_eq3(kernel: Any, rho: float) -> jnp.ndarray:
  """The paper's eq. 3 on every (kh, kw) slice of an HWIO kernel.

  Args:
    kernel: (kh, kw, in, out) float array, any kh, kw >= 1.
    rho: weight of the neighbours, >= 0 (the paper's figure uses 1.0); not renormalised.

  Returns:
    (kh, kw, in, out) array of the kernel's dtype: each value plus rho times the sum of
    its 8 spatial neighbours, edge values repeated beyond the border (module docstring).
  """
  return _smooth_eq3(check_kernel(kernel), _check_nonnegative("kernels.rho", rho))


@jax.jit
def _smooth_eq3(k: jnp.ndarray, rho: Any) -> jnp.ndarray:
  """`smooth_eq3` on a checked kernel; one program per kernel shape (rho is traced)."""
  kh, kw = k.shape[:2]
  padded = jnp.pad(k, ((1, 1), (1, 1), (0, 0), (0, 0)), mode="edge")
  neighbours = sum(padded[r:r + kh, c:c + kw] for r, c in _NEIGHBOURS)
  return (k + rho * neighbours).astype(k.dtype)


def smooth_eq3_renormalised(kernel: Any, rho: float) -> jnp.ndarray:
  """Eq. 3 divided by 1 + 8 rho: each value becomes a weighted mean of itself (weight
  1 / (1 + 8 rho)) and its 8 edge-padded neighbours (rho / (1 + 8 rho) each), so it
  smooths without amplifying: every value stays within the slice's [min, max] and a
  constant slice is unchanged. The control that separates eq. 3's smoothing from its
  gain of up to 1 + 8 rho. (kh, kw, in, out) -> same shape and dtype."""
  rho = _check_nonnegative("kernels.rho", rho)
  return (smooth_eq3(kernel, rho) / (1.0 + 8.0 * rho)).astype(check_kernel(kernel).dtype)


def scale_kernel(kernel: Any, rho: float) -> jnp.ndarray:
  """The kernel times 1 + 8 rho: eq. 3's gain on a constant slice, without smoothing
  (the control that amplifies only). (kh, kw, in, out) -> same shape and dtype."""
  k = check_kernel(kernel)
  rho = _check_nonnegative("kernels.rho", rho)
  return (k * (1.0 + 8.0 * rho)).astype(k.dtype)


def corner_distance(kh: int, kw: int) -> float:
  """Largest distance of a centred (kh, kw) DFT index from the DC term (kh//2, kw//2)."""
  return math.hypot(kh // 2, kw // 2)


def fourier_lowpass_kernel(kernel: Any, cutoff: float) -> jnp.ndarray:
  """Keeps each slice's centred-DFT frequencies at distance < cutoff from the DC term.

  `fftshift(F) * mask` then `ifftshift` equals `F * ifftshift(mask)`, so only the mask
  is shifted. The disc is symmetric under k -> -k, so the result is real up to
  rounding; the real part is returned.

  Args:
    kernel: (kh, kw, in, out) float array.
    cutoff: > 0, in DFT-index units (static under jit); (0, 1] keeps only the mean,
      > corner_distance(kh, kw) (or inf) keeps the kernel unchanged to float eps.

  Returns:
    (kh, kw, in, out) array of the kernel's dtype.
  """
  cutoff = float(_check_nonnegative("kernels.cutoff", cutoff, positive=True, finite=False))
  return _fourier_lowpass(check_kernel(kernel), cutoff)


@functools.partial(jax.jit, static_argnums=1)
def _fourier_lowpass(k: jnp.ndarray, cutoff: float) -> jnp.ndarray:
  """`fourier_lowpass_kernel` on a checked kernel; one program per shape and cutoff."""
  kh, kw = k.shape[:2]
  mask = np.fft.ifftshift(frequency.disc_mask(kh, kw, cutoff))[:, :, None, None]
  spectrum = jnp.fft.fft2(k, axes=(0, 1))
  return jnp.real(jnp.fft.ifft2(spectrum * mask, axes=(0, 1))).astype(k.dtype)


def smooth_first_conv(params: PyTree, rho: float, *, model: str | None = None) -> PyTree:
  """`params` with only the first conv kernel smoothed by eq. 3 (`smooth_eq3`)."""
  return replace_first_conv(params, smooth_eq3(first_conv_of(params, model=model), rho))


def renormalised_first_conv(params: PyTree, rho: float, *, model: str | None = None
                            ) -> PyTree:
  """`params` with only the first conv kernel replaced by `smooth_eq3_renormalised`."""
  kernel = first_conv_of(params, model=model)
  return replace_first_conv(params, smooth_eq3_renormalised(kernel, rho))


def scaled_first_conv(params: PyTree, rho: float, *, model: str | None = None) -> PyTree:
  """`params` with only the first conv kernel multiplied by 1 + 8 rho (`scale_kernel`)."""
  return replace_first_conv(params, scale_kernel(first_conv_of(params, model=model), rho))


def lowpass_first_conv(params: PyTree, cutoff: float, *, model: str | None = None) -> PyTree:
  """`params` with only the first conv kernel low-passed (`fourier_lowpass_kernel`)."""
  kernel = first_conv_of(params, model=model)
  return replace_first_conv(params, fourier_lowpass_kernel(kernel, cutoff))


# ------------------------------------------------------------------ measures


def _adjacent_differences(k: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Vertical (kh-1, kw, I, O) and horizontal (kh, kw-1, I, O) neighbour differences."""
  return k[1:] - k[:-1], k[:, 1:] - k[:, :-1]


def _safe_ratio(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
  """num / den, 0 where den == 0."""
  nonzero = den > 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def _slice_tv(k: jnp.ndarray) -> jnp.ndarray:
  """Anisotropic total variation of each slice: (I, O)."""
  vertical, horizontal = _adjacent_differences(k)
  return jnp.sum(jnp.abs(vertical), axis=(0, 1)) + jnp.sum(jnp.abs(horizontal), axis=(0, 1))


def adjacent_difference(kernel: Any, *, per_slice: bool = False) -> jnp.ndarray:
  """Mean |difference| of adjacent values over mean |value|, per slice.

  Horizontal and vertical pairs are pooled (kh (kw-1) + (kh-1) kw pairs per slice). The
  ratio is scale-free; 0 for a constant, all-zero or 1x1 slice.

  Returns:
    (in, out) per-slice ratios if `per_slice`, else their mean over all slices: ().
  """
  k = check_kernel(kernel)
  kh, kw = k.shape[:2]
  pairs = kh * (kw - 1) + (kh - 1) * kw
  ratio = _safe_ratio(_slice_tv(k) / max(pairs, 1), jnp.mean(jnp.abs(k), axis=(0, 1)))
  return ratio if per_slice else jnp.mean(ratio)


def total_variation(kernel: Any, *, normalised: bool = False,
                    per_slice: bool = False) -> jnp.ndarray:
  """Anisotropic TV: sum |w[i+1, j] - w[i, j]| + |w[i, j+1] - w[i, j]|.

  Returns:
    (in, out) per-slice TV if `per_slice`, else its sum over all slices: (). With
    `normalised`, each is divided by the matching sum |w| (0 where that is 0).
  """
  k = check_kernel(kernel)
  tv = _slice_tv(k)
  mass = jnp.sum(jnp.abs(k), axis=(0, 1))
  if not per_slice:
    tv, mass = jnp.sum(tv), jnp.sum(mass)
  return _safe_ratio(tv, mass) if normalised else tv


def high_frequency_energy_share(kernel: Any, *, per_slice: bool = False) -> jnp.ndarray:
  """Share of each slice's spectral energy outside the DC term: 1 - |DC|^2 / sum |F|^2.

  Over all kh*kw DFT coefficients F of a slice w, by Parseval sum |F|^2 = kh kw sum w^2
  and DC = sum w, which is what is computed. 0 for a constant or all-zero slice; a
  single spike gives 1 - 1 / (kh kw).

  Returns:
    (in, out) per-slice shares in [0, 1] if `per_slice`, else their mean: ().
  """
  k = check_kernel(kernel)
  kh, kw = k.shape[:2]
  dc_energy = jnp.sum(k, axis=(0, 1)) ** 2
  total = kh * kw * jnp.sum(k * k, axis=(0, 1))
  share = jnp.where(total > 0, jnp.clip(1 - _safe_ratio(dc_energy, total), 0, 1), 0)
  return share if per_slice else jnp.mean(share)


def smoothness_measures(kernel: Any) -> dict[str, float]:
  """All model-level measures of an HWIO kernel as JSON-ready Python floats."""
  return {name: float(value) for name, value in _measures(check_kernel(kernel)).items()}


@jax.jit
def _measures(k: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """The four model-level measures of a checked kernel, as one program per shape."""
  return {
      "adjacent_difference": adjacent_difference(k),
      "total_variation": total_variation(k),
      "total_variation_normalised": total_variation(k, normalised=True),
      "high_frequency_energy_share": high_frequency_energy_share(k),
  }


# ------------------------------------------------------------------ training penalty


def smoothness_penalty(kernel: Any) -> jnp.ndarray:
  """Sum over all slices of squared differences of vertically and horizontally adjacent
  values (Wang et al., ICLR 2020); a differentiable float scalar ()."""
  vertical, horizontal = _adjacent_differences(check_kernel(kernel))
  return jnp.sum(vertical * vertical) + jnp.sum(horizontal * horizontal)


def first_conv_penalty(params: PyTree, *, model: str | None = None) -> jnp.ndarray:
  """`smoothness_penalty` of params['first_conv']['kernel']; a scalar ()."""
  return smoothness_penalty(first_conv_of(params, model=model))
