"""The split against a literal NumPy transcription of the paper's split."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfc_jax import errors, frequency
from tests.conftest import numpy_split

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound


RADII = (1, 4, 8.0, 12)   # and size // 2


@functools.cache
def _jitted_splits(size, channels):
  """Random images of (size, channels) and their jitted `split` at every radius of
  RADII and size // 2, for both boundaries: one program per image shape."""
  images = np.random.default_rng(size + channels).uniform(
      size=(3, size, size, channels)).astype(np.float32)
  radii = (*RADII, size // 2)
  split_all = jax.jit(lambda x: {inclusive: [frequency.split(x, r, inclusive=inclusive)
                                             for r in radii]
                                 for inclusive in (False, True)})
  return images, radii, jax.device_get(split_all(images))


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1), (16, 3), (15, 2)])
@pytest.mark.parametrize("inclusive", [False, True])
def test_split_matches_numpy_reference(size, channels, inclusive):
  images, radii, splits = _jitted_splits(size, channels)
  for radius, (lfc, hfc) in zip(radii, splits[inclusive], strict=True):
    ref_lfc, ref_hfc = numpy_split(images, radius, inclusive)
    np.testing.assert_allclose(lfc, ref_lfc, atol=2e-6)
    np.testing.assert_allclose(hfc, ref_hfc, atol=2e-6)


def test_boundary_conventions_differ_exactly_on_the_circle():
  strict = frequency.disc_mask(32, 32, 4, inclusive=False)
  closed = frequency.disc_mask(32, 32, 4, inclusive=True)
  # Lattice points at distance exactly 4 from (16, 16): (+-4, 0), (0, +-4).
  assert closed.sum() - strict.sum() == 4
  assert strict[16, 16] == 1 and strict[16, 20] == 0 and closed[16, 20] == 1


def test_reconstruction_and_zero_mean_hfc():
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  lfc, hfc = frequency.split(images, 8)
  np.testing.assert_allclose(lfc + hfc, images, atol=1e-6)
  np.testing.assert_allclose(hfc.mean(axis=(1, 2)), 0.0, atol=1e-6)
  assert float(hfc.min()) < 0


def _sinusoid(freq_i, freq_j, size=32):
  i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  wave = 0.5 + 0.4 * np.cos(2 * np.pi * (freq_i * i + freq_j * j) / size)
  return np.repeat(wave[None, :, :, None], 3, axis=-1).astype(np.float32)


def test_low_sinusoid_is_all_lfc_and_high_all_hfc():
  low = _sinusoid(1, 2)     # |k| = 2.24 < 8, plus the DC term.
  high = _sinusoid(10, 9)   # |k| = 13.5 > 8.
  lfc, hfc = frequency.split(np.concatenate([low, high]), 8)
  np.testing.assert_allclose(lfc[0], low[0], atol=1e-5)
  np.testing.assert_allclose(hfc[0], 0.0, atol=1e-5)
  np.testing.assert_allclose(lfc[1], 0.5, atol=1e-5)   # only the DC survives
  np.testing.assert_allclose(hfc[1], high[0] - 0.5, atol=1e-5)


def test_split_many_equals_repeated_split_and_masks_are_cached():
  images = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  radii = (4, 8, 12, 16)
  lfcs, hfcs = frequency.split_many(images, radii)
  assert lfcs.shape == (4, 2, 32, 32, 3)
  for k, r in enumerate(radii):
    lfc, hfc = frequency.split(images, r)
    np.testing.assert_allclose(lfcs[k], lfc, atol=1e-6)
    np.testing.assert_allclose(hfcs[k], hfc, atol=1e-6)
  assert frequency.disc_mask(32, 32, 4.0) is frequency.disc_mask(32, 32, 4.0)


def test_per_image_max_rescaling():
  images = np.random.default_rng(2).uniform(size=(3, 16, 16, 3)).astype(np.float32)
  lfc, hfc = frequency.split(images, 4, rescale="per_image_max")
  ref_lfc, ref_hfc = numpy_split(images, 4)
  np.testing.assert_allclose(lfc.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
  np.testing.assert_allclose(
      hfc, ref_hfc / ref_hfc.max(axis=(1, 2, 3), keepdims=True), atol=1e-5)
  with pytest.raises(errors.HfcError, match="rescale"):
    frequency.split(images, 4, rescale="max")


def test_split_is_differentiable():
  images = jnp.asarray(np.random.default_rng(3).uniform(size=(1, 8, 8, 1)), jnp.float32)
  # d/dx sum(LFC * g) = lowpass(g) because the projection is self-adjoint.
  g = jnp.asarray(np.random.default_rng(4).normal(size=(1, 8, 8, 1)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(frequency.lowpass(x, 2) * g)))(images)
  np.testing.assert_allclose(grad, frequency.lowpass(g, 2), atol=1e-5)


def test_radius_validation():
  assert frequency.check_radius(28, 32, 32) == 28
  for bad in (0.5, 33):
    with pytest.raises(errors.HfcError, match=r"radius.*allowed: \[1, 32\]"):
      frequency.check_radius(bad, 32, 32)


@functools.cache
def _traced_splits(size):
  """Random images of `size` and `split_traced` at radii 1, 1.5, ..., 16.5, for both
  boundaries: one program per size."""
  images = np.random.default_rng(0).uniform(size=(3, *size, 2)).astype(np.float32)
  radii = np.arange(1.0, 17.0, 0.5, dtype=np.float32)
  traced = jax.jit(lambda x, radii: {
      inclusive: jax.vmap(lambda r: frequency.split_traced(x, r, inclusive=inclusive))(radii)
      for inclusive in (False, True)})
  return images, radii, jax.device_get(traced(images, radii))


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (15, 20)])
@pytest.mark.parametrize("inclusive", [False, True])
def test_split_at_a_traced_radius_equals_split(size, inclusive):
  """A run-parallel group's per-run radius (`split_traced`, the disc built on device
  from i^2 + j^2 < r^2) gives `split`'s components at every integer and half radius:
  one frequency more or less in the disc would move pixels by about 1e-2 here."""
  images, radii, traced = _traced_splits(size)
  for k, radius in enumerate(radii):
    lfc, hfc = frequency.split(images, float(radius), inclusive=inclusive)
    np.testing.assert_allclose(traced[inclusive][0][k], lfc, atol=2e-6)
    np.testing.assert_allclose(traced[inclusive][1][k], hfc, atol=2e-6)
