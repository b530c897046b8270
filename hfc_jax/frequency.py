"""The frequency split of Wang et al. (CVPR 2020), as the paper and its code define it.

Each channel of each image is taken to the centred 2-D Fourier spectrum
(`fftshift(fft2(x))` over H, W). A disc of radius `r` around the DC position
(H // 2, W // 2) keeps the low-frequency component (LFC); its complement keeps the
high-frequency component (HFC). Both are mapped back with the inverse FFT and the
imaginary part is dropped. LFC + HFC == image up to float error; the HFC has zero
mean and negative values.

Implementation notes (all exact rewrites of the paper's recipe, checked against a
literal NumPy version in tests/frequency_test.py):
  * `fftshift(F) * M` followed by `ifftshift` equals `F * ifftshift(M)`, so the data
    is never shifted; only the mask is, once, on the host.
  * The disc is symmetric under k -> -k (modulo the size), so the masked spectrum
    stays Hermitian and the inverse FFT is real: the real-input FFT (`rfft2` /
    `irfft2`) gives the same result at half the cost.
  * HFC = image - LFC, which saves the second inverse FFT.
  * Masks are NumPy constants built once per (size, radius, boundary) and cached.

Images are NHWC float32 (any square or rectangular H, W; any C); values are not
clipped. Everything here is a pure jnp function: jittable and differentiable.
"""

import functools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from hfc_jax import errors

RESCALE_CHOICES = ("none", "per_image_max")


@functools.lru_cache(maxsize=256)
def disc_mask(height: int, width: int, radius: float, inclusive: bool = False) -> np.ndarray:
  """The centred low-pass disc: 1 where dist((i, j), (H//2, W//2)) < r (<= if inclusive).

  Returns a read-only float32 (H, W) array in fftshift order (DC at the centre).
  """
  i = np.arange(height)[:, None] - height // 2
  j = np.arange(width)[None, :] - width // 2
  dist = np.sqrt(i.astype(np.float64) ** 2 + j.astype(np.float64) ** 2)
  mask = (dist <= radius) if inclusive else (dist < radius)
  mask = mask.astype(np.float32)
  mask.setflags(write=False)
  return mask


@functools.lru_cache(maxsize=256)
def _rfft_masks(height: int, width: int, radii: tuple[float, ...],
                inclusive: bool) -> np.ndarray:
  """Disc masks for several radii in unshifted rfft2 layout: float32 (R, H, W//2+1)."""
  masks = [np.fft.ifftshift(disc_mask(height, width, r, inclusive)) for r in radii]
  out = np.stack(masks)[:, :, : width // 2 + 1].astype(np.float32)
  out.setflags(write=False)
  return out


def check_radius(radius: float, height: int | None, width: int | None,
                 field: str = "radius") -> float:
  """Raises HfcError unless 1 <= radius <= max(H, W) (only >= 1 while the image size
  is not known yet: height None).

  Radii past the half-diagonal (22.6 for 32x32) keep the whole spectrum; they are
  allowed because the original code evaluates test sets up to r = 28 on CIFAR.
  """
  return errors.check_range(field, radius, 1, None if height is None else max(height, width))


def rescale_per_image_max(images: jnp.ndarray) -> jnp.ndarray:
  """Divides each image by its own maximum over H, W, C (negatives kept), as the
  original code does for LFC/HFC and training images. Shape (..., H, W, C)."""
  peak = jnp.max(images, axis=(-3, -2, -1), keepdims=True)
  return images / jnp.where(jnp.abs(peak) > 1e-12, peak, 1.0)


def _rescale(images: jnp.ndarray, rescale: str) -> jnp.ndarray:
  errors.check_choice("rescale", rescale, RESCALE_CHOICES)
  return rescale_per_image_max(images) if rescale == "per_image_max" else images


def split_many(images: jnp.ndarray, radii: Sequence[float], *, inclusive: bool = False,
               rescale: str = "none") -> tuple[jnp.ndarray, jnp.ndarray]:
  """Splits a batch at several radii with one forward FFT.

  Args:
    images: (N, H, W, C) float array (any float dtype; computed in float32).
    radii: R disc radii, in frequency-index units.
    inclusive: use `dist <= r` (the paper's text) instead of `dist < r` (the code's).
    rescale: 'none', or 'per_image_max' to divide each output image by its own max.

  Returns:
    (lfc, hfc), each float32 (R, N, H, W, C).
  """
  x = jnp.asarray(images, jnp.float32)
  height, width = x.shape[-3], x.shape[-2]
  masks = jnp.asarray(_rfft_masks(height, width, tuple(float(r) for r in radii), inclusive))
  spectrum = jnp.fft.rfft2(x, axes=(-3, -2))                      # (N, H, W//2+1, C)
  masked = spectrum[None] * masks[:, None, :, :, None]            # (R, N, H, W//2+1, C)
  lfc = jnp.fft.irfft2(masked, s=(height, width), axes=(-3, -2))  # (R, N, H, W, C)
  hfc = x[None] - lfc
  return _rescale(lfc, rescale), _rescale(hfc, rescale)


def split_traced(images: jnp.ndarray, radius: jnp.ndarray, *, inclusive: bool = False,
                 rescale: str = "none") -> tuple[jnp.ndarray, jnp.ndarray]:
  """`split` at a radius that is a traced float32 scalar (one run's `train.input_radius`
  in a run-parallel group, `hfc_jax.stacked`): the disc is `i^2 + j^2 < r^2` (`<=` when
  `inclusive`) over the integer frequency offsets, built on device. It equals
  `disc_mask`'s disc for every radius whose square float32 holds exactly (integers and
  halves, every radius of the paper's experiments), so the components are `split`'s."""
  x = jnp.asarray(images, jnp.float32)
  height, width = x.shape[-3], x.shape[-2]
  i = np.arange(height)[:, None] - height // 2
  j = np.arange(width)[None, :] - width // 2
  offsets = np.fft.ifftshift((i ** 2 + j ** 2).astype(np.float32))[:, : width // 2 + 1]
  r2 = jnp.square(jnp.asarray(radius, jnp.float32))
  mask = (offsets <= r2) if inclusive else (offsets < r2)
  spectrum = jnp.fft.rfft2(x, axes=(-3, -2))                      # (N, H, W//2+1, C)
  lfc = jnp.fft.irfft2(spectrum * mask.astype(jnp.float32)[:, :, None], s=(height, width),
                       axes=(-3, -2))
  return _rescale(lfc, rescale), _rescale(x - lfc, rescale)


def split(images: jnp.ndarray, radius: float, *, inclusive: bool = False,
          rescale: str = "none") -> tuple[jnp.ndarray, jnp.ndarray]:
  """Splits (N, H, W, C) images at one radius into (LFC, HFC), each (N, H, W, C) float32."""
  lfc, hfc = split_many(images, (radius,), inclusive=inclusive, rescale=rescale)
  return lfc[0], hfc[0]


def lowpass(images: jnp.ndarray, radius: float, *, inclusive: bool = False) -> jnp.ndarray:
  """Keeps only the frequencies inside the disc (the LFC); usable as an input layer."""
  return split(images, radius, inclusive=inclusive)[0]


def highpass(images: jnp.ndarray, radius: float, *, inclusive: bool = False) -> jnp.ndarray:
  """Keeps only the frequencies outside the disc (the HFC); usable as an input layer."""
  return split(images, radius, inclusive=inclusive)[1]


# ---------------------------------------------------------------------------
# Band-pass images and power spectra (the `bands` and `perturbation_spectrum` studies).
# Distances are those of `disc_mask`: from the DC position (H // 2, W // 2) of the
# centred spectrum, in frequency-index units.
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def spectrum_distance(height: int, width: int) -> np.ndarray:
  """Read-only float64 (H, W): each centred-spectrum position's distance to the DC."""
  i = np.arange(height)[:, None] - height // 2
  j = np.arange(width)[None, :] - width // 2
  dist = np.sqrt(i.astype(np.float64) ** 2 + j.astype(np.float64) ** 2)
  dist.setflags(write=False)
  return dist


def corner_radius(height: int, width: int) -> int:
  """The smallest integer r whose disc (dist < r) holds the whole spectrum: the ceil
  of the half-diagonal (one more when that is an integer), 23 for 32x32, whose corner
  is at 22.6."""
  farthest = (height // 2) ** 2 + (width // 2) ** 2      # squared, at index (0, 0)
  return int(np.floor(np.sqrt(float(farthest)))) + 1    # exact: sqrt is correctly rounded


def check_bands(bands, height: int | None, width: int | None, field: str
                ) -> tuple[tuple[float, float], ...]:
  """Returns `bands` as float (r1, r2) pairs; one-line HfcError naming `field` unless
  every band is a pair with 0 <= r1 < r2 <= corner + 1 (`corner_radius`; no upper
  limit when the image size is not known yet: height None)."""
  limit = float("inf") if height is None else corner_radius(height, width) + 1
  out = []
  for band in bands:
    try:
      r1, r2 = (float(v) for v in band)
    except (TypeError, ValueError):
      raise errors.HfcError(f"{field}: band {band!r} must be a pair (r1, r2) of radii, "
                            "e.g. (4, 8).") from None
    if not 0 <= r1 < r2:
      raise errors.HfcError(f"{field}: band ({r1:g}, {r2:g}) must have 0 <= r1 < r2.")
    if r2 > limit:
      raise errors.HfcError(
          f"{field}: band ({r1:g}, {r2:g}) ends beyond the {height}x{width} spectrum: "
          f"r2 <= {limit:g} (its corner radius {limit - 1:g}, plus 1).")
    out.append((r1, r2))
  return tuple(out)


@functools.lru_cache(maxsize=64)
def _rfft_band_masks(height: int, width: int, bands: tuple[tuple[float, float], ...],
                     inclusive: bool) -> np.ndarray:
  """Annulus masks, the disc at r2 minus the disc at r1 (none at r1 = 0), in unshifted
  rfft2 layout: float32 (B, H, W//2+1)."""
  uppers = _rfft_masks(height, width, tuple(r2 for _, r2 in bands), inclusive)
  lowers = _rfft_masks(height, width, tuple(max(r1, 1e-9) for r1, _ in bands), inclusive)
  lowers = lowers * np.array([r1 > 0 for r1, _ in bands], np.float32)[:, None, None]
  out = (uppers - lowers).astype(np.float32)
  out.setflags(write=False)
  return out


def band_pass_many(images: jnp.ndarray, bands: Sequence[tuple[float, float]], *,
                   inclusive: bool = False, rescale: str = "none") -> jnp.ndarray:
  """Keeps, for each band (r1, r2), the annulus r1 <= dist < r2 of the centred
  spectrum (r1 < dist <= r2 if inclusive), with one forward FFT.

  Band (r1, r2) is the LFC at r2 minus the LFC at r1, and the band (0, r) is the LFC at
  r in either convention (its DC term included), so bands that tile [0, corner) sum
  to the image.

  Args:
    images: (N, H, W, C) float array (computed in float32).
    bands: B pairs (r1, r2), frequency-index units, 0 <= r1 < r2.
    inclusive: the disc boundary of `split`.
    rescale: 'none' or 'per_image_max', as for `split_many`.

  Returns:
    float32 (B, N, H, W, C).
  """
  x = jnp.asarray(images, jnp.float32)
  height, width = x.shape[-3], x.shape[-2]
  key = tuple((float(r1), float(r2)) for r1, r2 in bands)
  masks = jnp.asarray(_rfft_band_masks(height, width, key, inclusive))
  spectrum = jnp.fft.rfft2(x, axes=(-3, -2))                       # (N, H, W//2+1, C)
  out = jnp.fft.irfft2(spectrum[None] * masks[:, None, :, :, None], s=(height, width),
                       axes=(-3, -2))                               # (B, N, H, W, C)
  return _rescale(out, rescale)


def channel_power(x: jnp.ndarray) -> jnp.ndarray:
  """Centred power spectrum of each image and channel: (..., H, W, C) -> float32
  (..., H, W, C), |fftshift(fft2(x, norm='ortho'))|^2, zero frequency at (H//2, W//2).
  Orthonormal, so each image channel's power sums to its sum of squares (Parseval)."""
  x = jnp.asarray(x, jnp.float32)
  f = jnp.fft.fftshift(jnp.fft.fft2(x, axes=(-3, -2), norm="ortho"), axes=(-3, -2))
  return jnp.real(f) ** 2 + jnp.imag(f) ** 2


def radial_profile(power: jnp.ndarray) -> jnp.ndarray:
  """Mean power per integer radius bin of a centred (H, W) spectrum: float32
  (corner_radius(H, W),), bin k holding the positions with k <= dist < k + 1."""
  height, width = power.shape
  bins = np.floor(spectrum_distance(height, width)).astype(np.int32).ravel()
  length = corner_radius(height, width)
  total = jnp.zeros(length, jnp.float32).at[bins].add(jnp.ravel(power).astype(jnp.float32))
  count = np.maximum(np.bincount(bins, minlength=length), 1)
  return total / count


def energy_share_inside(power: jnp.ndarray, radii: Sequence[float], *,
                        inclusive: bool = False) -> jnp.ndarray:
  """Share of a centred (H, W) spectrum's energy inside each radius: float32 (R,),
  the energy at dist < r (<= r if inclusive), i.e. of the LFC at r, over the total.

  The energy of each ring between consecutive sorted radii (and of the rest beyond
  the largest) is summed once and the rings are accumulated in order, so the shares are
  exactly monotone in r and exactly 1 from `corner_radius` on (and for a spectrum
  without energy).
  """
  height, width = power.shape
  if not len(radii):
    return jnp.zeros((0,), jnp.float32)
  order = sorted(range(len(radii)), key=lambda k: float(radii[k]))
  discs = [disc_mask(height, width, float(radii[k]), inclusive) for k in order]
  rings = np.stack([b - a for a, b in zip([np.zeros_like(discs[0])] + discs,
                                          discs + [np.ones_like(discs[0])])])
  energy = jnp.einsum("khw,hw->k", jnp.asarray(rings), jnp.asarray(power, jnp.float32))
  cumulative, running = [], jnp.float32(0.0)
  for k in range(len(order) + 1):   # in order, never reassociated: exact monotonicity
    running = running + energy[k]
    cumulative.append(running)
  total, inside = cumulative[-1], jnp.stack(cumulative[:-1])
  # XLA may divide by multiplying with 1 / total: exactly 1 wherever all is inside.
  shares = jnp.minimum(inside / jnp.where(total > 0, total, 1.0), 1.0)
  shares = jnp.where((inside >= total) | (total <= 0), 1.0, shares)
  return shares[np.argsort(order)]


def energy_share_outside(power: jnp.ndarray, radii: Sequence[float], *,
                         inclusive: bool = False) -> jnp.ndarray:
  """1 - `energy_share_inside`: the share of the energy in the HFC at each radius."""
  return 1.0 - energy_share_inside(power, radii, inclusive=inclusive)
