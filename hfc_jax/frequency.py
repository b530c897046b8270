"""The frequency split of Wang et al. (CVPR 2020), section 1 of PAPER.md.

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


def check_radius(radius: float, height: int, width: int, field: str = "radius") -> float:
  """Raises HfcError unless 1 <= radius <= max(H, W).

  Radii past the half-diagonal (22.6 for 32x32) keep the whole spectrum; they are
  allowed because the original code evaluates test sets up to r = 28 on CIFAR.
  """
  return errors.check_range(field, radius, 1, max(height, width))


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
