"""First-layer kernel smoothing, measures and penalty against loops and hand values."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfc_jax import errors, models, smoothness
from hfc_jax.models.functional import Functional

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

RHOS = (0.0, 0.1, 0.5, 1.0)
# 3x3 and 5x5 as in the spec, plus 1x1 and even / non-square sizes.
SHAPES = [(3, 3, 3, 16), (3, 3, 1, 4), (5, 5, 2, 3), (1, 1, 2, 3), (2, 2, 3, 2), (4, 3, 2, 2)]

CHECKERBOARD = np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]], np.float32)
SPIKE = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)


def random_kernel(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def hwio(slice2d, in_channels=1, out_channels=1):
  """(kh, kw) -> (kh, kw, in, out) with the same slice everywhere."""
  return np.tile(np.asarray(slice2d)[:, :, None, None], (1, 1, in_channels, out_channels))


def eq3_loop(kernel, rho):
  """Eq. 3 written out: each value plus rho times its 8 neighbours, indices clamped to
  the border (edge values repeated), on every [:, :, i, o] slice; float64."""
  kh, kw, cin, cout = kernel.shape
  out = np.zeros(kernel.shape, np.float64)
  for i, o, r, c in itertools.product(range(cin), range(cout), range(kh), range(kw)):
    total = 0.0
    for dr, dc in itertools.product((-1, 0, 1), repeat=2):
      if (dr, dc) != (0, 0):
        total += kernel[min(max(r + dr, 0), kh - 1), min(max(c + dc, 0), kw - 1), i, o]
    out[r, c, i, o] = kernel[r, c, i, o] + rho * total
  return out


def small_cnn_params():
  model = models.create("small_cnn", num_classes=10, in_channels=3)
  return Functional.split(model)[1]


# ------------------------------------------------------------------ eq. 3


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rho", RHOS)
def test_eq3_matches_neighbour_loop(shape, rho):
  kernel = random_kernel(shape, seed=sum(shape))
  smoothed = smoothness.smooth_eq3(kernel, rho)
  assert smoothed.shape == shape and smoothed.dtype == jnp.float32
  np.testing.assert_allclose(smoothed, eq3_loop(kernel, rho), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rho", RHOS)
def test_eq3_matches_scipy_convolve2d(shape, rho):
  from scipy import signal  # pylint: disable=g-import-not-at-top  (a dependency of jax)
  kernel = random_kernel(shape, seed=sum(shape) + 1).astype(np.float64)
  stencil = np.full((3, 3), rho)
  stencil[1, 1] = 1.0
  smoothed = np.asarray(smoothness.smooth_eq3(kernel.astype(np.float32), rho))
  for i, o in itertools.product(range(shape[2]), range(shape[3])):
    ref = signal.convolve2d(kernel[:, :, i, o], stencil, boundary="symm", mode="same")
    np.testing.assert_allclose(smoothed[:, :, i, o], ref, rtol=1e-5, atol=1e-5)


def test_rho_zero_is_the_identity_and_jit_agrees():
  kernel = random_kernel((3, 3, 3, 16))
  np.testing.assert_array_equal(smoothness.smooth_eq3(kernel, 0.0), kernel)
  np.testing.assert_array_equal(jax.jit(smoothness.smooth_eq3)(kernel, 0.5),
                                smoothness.smooth_eq3(kernel, 0.5))


def test_eq3_hand_values_spike_1x1_and_2x2():
  # Centre spike: the centre keeps 1, each of its 8 neighbours becomes rho.
  expected = np.full((3, 3), 0.5, np.float32)
  expected[1, 1] = 1.0
  np.testing.assert_allclose(smoothness.smooth_eq3(hwio(SPIKE), 0.5)[:, :, 0, 0], expected)
  # 1x1: all 8 neighbours are the value itself.
  np.testing.assert_allclose(smoothness.smooth_eq3(hwio([[2.0]]), 0.25)[:, :, 0, 0], [[6.0]])
  # 2x2 [[a, b], [c, d]] padded by edges: a's neighbours are a, a, a, b, b, c, c, d.
  a, b, c, d = 1.0, 10.0, 100.0, 1000.0
  out = smoothness.smooth_eq3(hwio([[a, b], [c, d]]), 1.0)[:, :, 0, 0]
  np.testing.assert_allclose(out[0, 0], a + 3 * a + 2 * b + 2 * c + d)
  np.testing.assert_allclose(out[1, 1], d + 3 * d + 2 * b + 2 * c + a)


def test_eq3_never_mixes_channels():
  # Every slice is constant, the constants differ across (in, out). Smoothing in space
  # scales each by 1 + 8 rho; smoothing the OIHW tensor as if it were HWIO (the PyTorch
  # port's bug) would mix the constants of neighbouring channels.
  constants = np.arange(1, 13, dtype=np.float32).reshape(3, 4) ** 2
  kernel = np.broadcast_to(constants, (3, 3, 3, 4)).copy()
  smoothed = smoothness.smooth_eq3(kernel, 1.0)
  np.testing.assert_allclose(smoothed, 9.0 * kernel, rtol=1e-6)
  oihw = np.transpose(kernel, (3, 2, 0, 1))
  wrong = np.transpose(smoothness.smooth_eq3(oihw, 1.0), (2, 3, 1, 0))
  assert not np.allclose(wrong, 9.0 * kernel)


@pytest.mark.parametrize("rho", [-0.1, float("nan"), float("inf")])
def test_bad_rho_raises(rho):
  with pytest.raises(errors.HfcError, match=r"kernels\.rho"):
    smoothness.smooth_eq3(random_kernel((3, 3, 1, 1)), rho)


def test_bad_kernel_shape_raises():
  with pytest.raises(errors.HfcError, match="HWIO"):
    smoothness.smooth_eq3(np.ones((3, 3, 3)), 1.0)


# ------------------------------------------------------------------ params


def _leaves_by_path(tree):
  return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def test_smooth_first_conv_changes_only_the_first_conv():
  params = small_cnn_params()
  kernel = params["first_conv"]["kernel"]
  assert kernel.shape == (3, 3, 3, 16)
  smoothed = smoothness.smooth_first_conv(params, 1.0)
  assert params["first_conv"]["kernel"] is kernel  # the input is not mutated
  np.testing.assert_array_equal(smoothed["first_conv"]["kernel"],
                                smoothness.smooth_eq3(kernel, 1.0))
  before, after = _leaves_by_path(params), _leaves_by_path(smoothed)
  assert before.keys() == after.keys() and len(before) > 2
  changed = [path for path in before if after[path] is not before[path]]
  assert [jax.tree_util.keystr(path) for path in changed] == ["['first_conv']['kernel']"]


def test_lowpass_first_conv_and_penalty_on_params():
  params = small_cnn_params()
  kernel = params["first_conv"]["kernel"]
  low = smoothness.lowpass_first_conv(params, 1.0)
  mean = jnp.mean(kernel, axis=(0, 1), keepdims=True)
  np.testing.assert_allclose(low["first_conv"]["kernel"], jnp.broadcast_to(mean, kernel.shape),
                             atol=1e-6)
  assert low["head"] is params["head"] and low["blocks"] is params["blocks"]
  assert low["first_conv"]["bias"] is params["first_conv"]["bias"]
  np.testing.assert_allclose(smoothness.first_conv_penalty(params),
                             smoothness.smoothness_penalty(kernel), rtol=1e-6)


@pytest.mark.parametrize("fn,arg", [(smoothness.smooth_first_conv, 1.0),
                                    (smoothness.lowpass_first_conv, 1.0)])
def test_missing_first_conv_is_a_one_line_error(fn, arg):
  params = {"conv0": {"kernel": np.ones((3, 3, 3, 8))}}
  with pytest.raises(errors.HfcError) as info:
    fn(params, arg, model="vgg")
  message = str(info.value)
  assert "\n" not in message and "'vgg'" in message and "first_conv" in message
  with pytest.raises(errors.HfcError, match="first_conv"):
    smoothness.first_conv_penalty({"first_conv": {"bias": np.zeros(3)}})


# ------------------------------------------------------------------ Fourier low-pass


def numpy_lowpass(kernel, cutoff):
  """The spec written out per slice: fftshift, keep dist < cutoff, ifftshift, ifft2."""
  kh, kw, cin, cout = kernel.shape
  i, j = np.meshgrid(np.arange(kh) - kh // 2, np.arange(kw) - kw // 2, indexing="ij")
  mask = np.sqrt(i ** 2 + j ** 2) < cutoff
  out = np.zeros(kernel.shape)
  for a, b in itertools.product(range(cin), range(cout)):
    spectrum = np.fft.fftshift(np.fft.fft2(kernel[:, :, a, b].astype(np.float64)))
    out[:, :, a, b] = np.real(np.fft.ifft2(np.fft.ifftshift(spectrum * mask)))
  return out


@pytest.mark.parametrize("shape", SHAPES)
def test_lowpass_matches_numpy_reference(shape):
  kernel = random_kernel(shape, seed=3)
  for cutoff in (0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0):
    np.testing.assert_allclose(smoothness.fourier_lowpass_kernel(kernel, cutoff),
                               numpy_lowpass(kernel, cutoff), atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_lowpass_beyond_the_corner_is_the_identity(shape):
  kernel = random_kernel(shape, seed=4)
  corner = smoothness.corner_distance(*shape[:2])
  for cutoff in (corner + 1e-3, corner + 5, float("inf")):
    out = jax.jit(smoothness.fourier_lowpass_kernel, static_argnums=1)(kernel, cutoff)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, kernel, atol=2e-6, rtol=0)


def test_lowpass_corner_distances():
  # 3x3: DC at (1, 1), farthest index (0, 0) at sqrt(2); 4x4: DC at (2, 2), (0, 0) at sqrt(8).
  assert smoothness.corner_distance(3, 3) == pytest.approx(np.sqrt(2))
  assert smoothness.corner_distance(4, 4) == pytest.approx(np.sqrt(8))
  assert smoothness.corner_distance(1, 1) == 0.0
  # Just inside the 3x3 corner the four corner frequencies are removed: not the identity.
  kernel = random_kernel((3, 3, 2, 2), seed=5)
  assert not np.allclose(smoothness.fourier_lowpass_kernel(kernel, np.sqrt(2) - 1e-3), kernel)


@pytest.mark.parametrize("shape", SHAPES)
def test_lowpass_dc_only_is_the_slice_mean(shape):
  kernel = random_kernel(shape, seed=6)
  mean = np.broadcast_to(kernel.mean(axis=(0, 1), keepdims=True), shape)
  for cutoff in (1e-3, 0.5, 1.0):
    np.testing.assert_allclose(smoothness.fourier_lowpass_kernel(kernel, cutoff), mean, atol=2e-6)


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan")])
def test_bad_cutoff_raises(cutoff):
  with pytest.raises(errors.HfcError, match=r"kernels\.cutoff"):
    smoothness.fourier_lowpass_kernel(random_kernel((3, 3, 1, 1)), cutoff)


# ------------------------------------------------------------------ measures


def test_measures_of_a_constant_kernel_are_zero():
  measures = smoothness.smoothness_measures(np.full((3, 3, 3, 4), -2.5, np.float32))
  assert measures.keys() == {"adjacent_difference", "total_variation",
                             "total_variation_normalised", "high_frequency_energy_share"}
  for value in measures.values():
    assert value == pytest.approx(0.0, abs=1e-6)


def test_measures_of_a_checkerboard_by_hand():
  # 3x3 +-1 checkerboard: 6 vertical + 6 horizontal pairs, each |difference| 2.
  #   TV = 12 * 2 = 24; sum |w| = 9, so TV / sum |w| = 24 / 9 = 8 / 3;
  #   adjacent difference = (24 / 12) / (9 / 9) = 2;
  #   DC = sum w = 5 - 4 = 1; energy = sum |F|^2 = 9 * sum w^2 = 81; HF share = 80 / 81.
  measures = smoothness.smoothness_measures(hwio(CHECKERBOARD))
  assert measures["total_variation"] == pytest.approx(24.0)
  assert measures["total_variation_normalised"] == pytest.approx(8 / 3)
  assert measures["adjacent_difference"] == pytest.approx(2.0)
  assert measures["high_frequency_energy_share"] == pytest.approx(80 / 81)


def test_measures_of_a_spike_by_hand():
  # Unit spike at the centre of 3x3: 4 pairs touch it, each |difference| 1.
  #   TV = 4 = TV / sum |w|; adjacent difference = (4 / 12) / (1 / 9) = 3;
  #   DC = 1, energy = 9 * 1: HF share = 1 - 1 / 9. Three slices: TV sums to 12.
  measures = smoothness.smoothness_measures(hwio(SPIKE, 3, 1))
  assert measures["total_variation"] == pytest.approx(12.0)
  assert measures["total_variation_normalised"] == pytest.approx(4.0)
  assert measures["adjacent_difference"] == pytest.approx(3.0)
  assert measures["high_frequency_energy_share"] == pytest.approx(1 - 1 / 9)
  # Corner spike of 5x5: 2 pairs; 40 pairs and 25 values in all.
  corner = np.zeros((5, 5), np.float32)
  corner[0, 0] = 1.0
  measures = smoothness.smoothness_measures(hwio(corner))
  assert measures["total_variation"] == pytest.approx(2.0)
  assert measures["adjacent_difference"] == pytest.approx((2 / 40) / (1 / 25))
  assert measures["high_frequency_energy_share"] == pytest.approx(1 - 1 / 25)


def test_zero_and_1x1_slices_score_zero():
  kernel = np.zeros((3, 3, 2, 2), np.float32)
  kernel[:, :, 0, 0] = CHECKERBOARD  # one non-zero slice among four
  per_slice = {"adjacent_difference": smoothness.adjacent_difference(kernel, per_slice=True),
               "total_variation": smoothness.total_variation(kernel, per_slice=True),
               "total_variation_normalised": smoothness.total_variation(
                   kernel, normalised=True, per_slice=True),
               "high_frequency_energy_share": smoothness.high_frequency_energy_share(
                   kernel, per_slice=True)}
  for name, values in per_slice.items():
    assert values.shape == (2, 2), name
    np.testing.assert_array_equal(np.asarray(values).ravel()[1:], 0.0)
  assert smoothness.adjacent_difference(kernel) == pytest.approx(2.0 / 4)
  assert smoothness.high_frequency_energy_share(kernel) == pytest.approx(80 / 81 / 4)
  assert smoothness.total_variation(kernel, normalised=True) == pytest.approx(24 / 9)
  for value in smoothness.smoothness_measures(random_kernel((1, 1, 3, 4))).values():
    assert value == 0.0


def test_hf_share_matches_the_explicit_dft():
  kernel = random_kernel((5, 4, 3, 2), seed=7)
  shares = smoothness.high_frequency_energy_share(kernel, per_slice=True)
  for i, o in itertools.product(range(3), range(2)):
    spectrum = np.fft.fft2(kernel[:, :, i, o].astype(np.float64))
    energy = np.abs(spectrum) ** 2
    np.testing.assert_allclose(shares[i, o], 1 - energy[0, 0] / energy.sum(), rtol=1e-5)
  assert float(smoothness.high_frequency_energy_share(kernel)) == pytest.approx(
      float(np.mean(shares)))


def test_measures_are_scale_free_json_floats_and_smoothing_lowers_them():
  kernel = random_kernel((3, 3, 3, 16), seed=8)
  measures = smoothness.smoothness_measures(kernel)
  assert json.loads(json.dumps(measures)) == measures
  assert all(type(value) is float for value in measures.values())
  scaled = smoothness.smoothness_measures(7.0 * kernel)
  for name in ("adjacent_difference", "total_variation_normalised",
               "high_frequency_energy_share"):
    assert scaled[name] == pytest.approx(measures[name], rel=1e-5)
  assert scaled["total_variation"] == pytest.approx(7.0 * measures["total_variation"])
  per_filter = np.asarray(smoothness.total_variation(kernel, per_slice=True)).sum(axis=0)
  np.testing.assert_allclose(per_filter.sum(), measures["total_variation"], rtol=1e-5)
  low = smoothness.smoothness_measures(smoothness.fourier_lowpass_kernel(kernel, 1.0))
  assert low["high_frequency_energy_share"] == pytest.approx(0.0, abs=1e-6)
  assert low["adjacent_difference"] == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------ penalty


def test_penalty_by_hand():
  # Checkerboard: 12 adjacent pairs, each squared difference 4; spike: 4 pairs of 1.
  assert float(smoothness.smoothness_penalty(hwio(CHECKERBOARD))) == pytest.approx(48.0)
  assert float(smoothness.smoothness_penalty(hwio(SPIKE, 2, 3))) == pytest.approx(24.0)
  assert float(smoothness.smoothness_penalty(np.full((3, 3, 2, 2), 3.0))) == 0.0


def test_penalty_gradient_matches_central_differences_in_float64():
  before = jax.config.jax_enable_x64
  with jax.enable_x64(True):
    kernel = jnp.asarray(random_kernel((3, 3, 2, 3), seed=9, dtype=np.float64))
    assert kernel.dtype == jnp.float64
    penalty = jax.jit(smoothness.smoothness_penalty)
    grad = np.asarray(jax.grad(smoothness.smoothness_penalty)(kernel))
    step = 1e-5
    fd = np.zeros(kernel.shape)
    for index in np.ndindex(*kernel.shape):
      bump = jnp.zeros(kernel.shape, jnp.float64).at[index].set(step)
      fd[index] = (penalty(kernel + bump) - penalty(kernel - bump)) / (2 * step)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-8)
    assert np.abs(grad).max() > 0.1
  assert jax.config.jax_enable_x64 == before
  assert jnp.asarray(1.0).dtype == jnp.float32
