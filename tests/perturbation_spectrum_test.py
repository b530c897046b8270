"""Power spectra, radial profiles, energy shares and the perturbation_spectrum mode."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfc_jax import errors, frequency, main
from hfc_jax.analysis import common, perturbation_spectrum
from tests.conftest import TINY_RADII, assert_refused_in_process, tiny_config

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

MODE = perturbation_spectrum.MODE


def _cosines(size, channels, waves):
  """(1, size, size, channels) sum of a * cos(2 pi (i u + j v) / size) per (u, v, a)."""
  i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  image = sum(a * np.cos(2 * np.pi * (u * i + v * j) / size) for u, v, a in waves)
  return np.repeat(image[None, :, :, None], channels, axis=-1).astype(np.float32)


@pytest.mark.parametrize("size", [32, 15])
def test_cosines_put_their_energy_exactly_at_their_frequencies(size):
  waves = [(1, 0, 0.3), (3, 5, 0.2), (-6, 2, 0.05)]
  delta = _cosines(size, 3, waves)
  power = np.asarray(jax.jit(frequency.channel_power)(delta)).mean(axis=(0, 3))
  centre = size // 2
  expected = np.zeros((size, size))
  for u, v, a in waves:   # a cos puts a^2 HW / 4 at +-(u, v) (orthonormal FFT)
    for s in (1, -1):
      expected[centre + s * u, centre + s * v] += a * a * size * size / 4
  np.testing.assert_allclose(power, expected, atol=1e-4 * expected.max())
  assert np.abs(power[expected == 0]).max() < 1e-6 * expected.max()
  # Parseval: the spectrum sums to the per-channel sum of squares.
  np.testing.assert_allclose(power.sum(), (delta[0, :, :, 0] ** 2).sum(), rtol=1e-5)
  # All the energy sits at radius |(u, v)|: the radial profile has it in those bins only.
  profile = np.asarray(frequency.radial_profile(power))
  assert len(profile) == frequency.corner_radius(size, size)
  bins = {int(np.floor(np.hypot(u, v))) for u, v, _ in waves}
  assert set(np.flatnonzero(profile > 1e-6 * profile.max())) == bins


def _shares(x, radii, inclusive):
  """The mean power spectrum of x, the shares inside `radii`, the LFC at radius 5 and
  the share inside 5, in one program."""
  power = jnp.mean(frequency.channel_power(x), axis=(0, 3))
  return (power, frequency.energy_share_inside(power, radii, inclusive=inclusive),
          frequency.split(x, 5.0, inclusive=inclusive)[0],
          frequency.energy_share_inside(power, [5.0], inclusive=inclusive)[0])


@pytest.mark.slow
def test_energy_shares_are_monotone_and_end_at_1():
  # Jitted (each shape compiles once; eagerly, every op of the ring loop would):
  # the outside shares in a program of their own, over the radii reversed.
  rng = np.random.default_rng(0)
  for size, inclusive in ((32, False), (32, True), (28, True), (15, False)):
    x = rng.normal(size=(4, size, size, 3)).astype(np.float32) * rng.uniform(
        size=(4, 1, 1, 3)).astype(np.float32)
    corner = frequency.corner_radius(size, size)
    radii = list(range(1, corner + 1))
    power, inside, lfc, inside_5 = jax.device_get(jax.jit(functools.partial(
        _shares, radii=radii, inclusive=inclusive))(x))
    assert np.all(np.diff(inside) >= 0) and inside[-1] == 1.0, inside
    assert 0 < inside[0] < 1
    outside = np.asarray(jax.jit(lambda p, i=inclusive: frequency.energy_share_outside(
        p, radii[::-1], inclusive=i))(power))
    np.testing.assert_array_equal(outside[::-1], 1.0 - inside)
    # The share inside r is the energy of the LFC at r (dist < r, or <= r).
    share = float(np.sum(np.asarray(lfc, np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2))
    assert float(inside_5) == pytest.approx(share, rel=1e-4)


def test_the_spectrum_fields_are_checked_before_the_workdir_is_read_and_norms(tmp_path):
  """In process, through the mode dispatcher (`analysis.run`): bad
  `perturbation_spectrum.*` fields are refused in one line before the workdir is opened
  (through `python -m hfc_jax.main` on a trained workdir: slow tests below); and the
  per-image L-inf and L2 norms of a perturbation, by hand."""
  import hfc_jax.analysis  # pylint: disable=g-import-not-at-top
  for overrides, message in (
      ({"perturbation_spectrum.eps": 0.0},
       "perturbation_spectrum.eps=0.0 is out of range; allowed: (0, 1]."),
      ({"perturbation_spectrum.eps": -0.01},
       "perturbation_spectrum.eps=-0.01 is out of range; allowed: (0, 1]."),
      ({"perturbation_spectrum.attacks": ("pgd", "deepfool")},
       "perturbation_spectrum.attacks='deepfool' is not allowed; choose one of: 'fgsm', "
       "'pgd'."),
      ({"perturbation_spectrum.attacks": ()},
       "perturbation_spectrum.attacks=() must name at least one attack.")):
    with pytest.raises(errors.HfcError) as raised:
      hfc_jax.analysis.run(MODE, _config(**overrides), str(tmp_path / "none"))
    assert str(raised.value) == message
  assert not (tmp_path / "none").exists()
  x = np.zeros((2, 4, 4, 3), np.float32)
  adv = x.copy()
  adv[0, 0, 0, 0] = 0.03     # one pixel moved: both norms are 0.03
  adv[1] -= 0.01             # every one of 48 values moved: L2 = 0.01 sqrt(48)
  np.testing.assert_allclose(perturbation_spectrum.perturbation_norms(x, adv),
                             [[0.03, 0.03], [0.01, 0.01 * np.sqrt(48)]], rtol=1e-6)


@pytest.fixture
def workdir(tiny_trained_workdir):
  return tiny_trained_workdir   # shared with other studies' tests (conftest)


def _config(**overrides):
  # One PGD step: on the CPU each is written out (compile time grows with them), and the
  # spectra's checks hold for any number.
  config = tiny_config(**{"mode": MODE, "perturbation_spectrum.num_images": 100,
                          "perturbation_spectrum.batch_size": 48,
                          "perturbation_spectrum.pgd_steps": 1, **overrides})
  return config


@pytest.mark.slow
def test_mode_writes_consistent_spectra(workdir):
  results = main.run(_config(), workdir)
  out = os.path.join(workdir, MODE)
  assert sorted(os.listdir(out)) == ["power_clean.npy", "power_fgsm.npy", "power_pgd.npy",
                                     "provenance.json", "spectrum.json", "spectrum.png"]
  on_disk = json.load(open(os.path.join(out, "spectrum.json")))
  assert on_disk == json.loads(json.dumps(common.json_ready(results)))
  assert results["num_images"] == 100 and results["corner"] == 23
  assert list(results["sources"]) == ["clean", "fgsm", "pgd"]
  # The clean spectrum is that of the first 100 test images, computed directly.
  trained = common.restore(workdir)
  x, _, _ = common.load_test_set(trained, 100)
  clean = np.load(os.path.join(out, "power_clean.npy"))
  assert clean.shape == (32, 32, 3)
  np.testing.assert_allclose(clean, np.mean(frequency.channel_power(x / 255.0), axis=0),
                             rtol=1e-4, atol=1e-6)
  eps = results["eps"]
  for name, source in results["sources"].items():
    power = np.load(os.path.join(out, f"power_{name}.npy")).mean(-1)
    assert source["energy"] == pytest.approx(float(power.sum()), rel=1e-5)
    assert source["channel_energy"] == pytest.approx(
        np.load(os.path.join(out, f"power_{name}.npy")).sum((0, 1)).tolist(), rel=1e-5)
    outside = np.asarray(frequency.energy_share_outside(power, results["radii"])).tolist()
    assert list(source["share_outside"]) == [str(r) for r in TINY_RADII]   # eval.radii
    assert list(source["share_outside"].values()) == pytest.approx(outside, abs=1e-6)
    inside = source["cumulative_share_inside"]
    assert len(inside) == 23 and inside[-1] == 1.0 and np.all(np.diff(inside) >= 0)
    for r in TINY_RADII:    # the cumulative curve and the eval.radii shares agree
      assert 1 - inside[r - 1] == pytest.approx(source["share_outside"][str(r)], abs=1e-6)
    # sum of (mean power per bin) x (positions per bin) is the total energy.
    counts = np.bincount(np.floor(frequency.spectrum_distance(32, 32)).astype(int).ravel())
    assert float(np.dot(source["radial_profile"], counts)) == pytest.approx(
        source["energy"], rel=1e-4)
    if name != "clean":
      assert 0 < source["linf_max"] <= eps * (1 + 1e-6)
      # A perturbation inside the eps-ball has at most eps^2 per pixel and channel.
      assert 0 < source["energy"] <= eps ** 2 * 32 * 32 * (1 + 1e-5)
      assert 0.0 <= source["accuracy"] <= results["clean_accuracy"] + 1e-9
  # FGSM moves every pixel by eps (or to the box edge), PGD's steps need not.
  assert results["sources"]["fgsm"]["l2_mean"] >= 0.5 * eps * np.sqrt(32 * 32 * 3)
  from matplotlib.image import imread  # pylint: disable=g-import-not-at-top
  image = imread(os.path.join(out, "spectrum.png"))
  assert image.shape[1] > 600 and np.std(image[..., :3]) > 0.05


@pytest.mark.parametrize("flags,message", [
    (["--config.perturbation_spectrum.eps=0.0"],
     "perturbation_spectrum.eps=0.0 is out of range; allowed: (0, 1]."),
    (["--config.perturbation_spectrum.eps=-0.01"], "perturbation_spectrum.eps=-0.01"),
    ([], "perturbation_spectrum.num_images=1000 exceeds the 256 test images"),
    (["--config.perturbation_spectrum.attacks=('pgd','deepfool')"],
     "perturbation_spectrum.attacks='deepfool' is not allowed"),
])
@pytest.mark.slow   # its trained workdir fixture is only built for the slow tier
def test_bad_input_is_one_line_and_writes_nothing(workdir, flags, message):
  assert_refused_in_process(workdir, message, f"--config.mode={MODE}", *flags)


def test_no_checkpoint_is_refused(tmp_path):
  """In process: main prints the error after "hfc_jax: error: " and exits 2 (run as a
  process for robust_eval in robustness_test, and in main_test)."""
  empty = tmp_path / "empty"
  with pytest.raises(errors.HfcError, match="holds no checkpoint") as raised:
    main.run(_config(), str(empty))
  assert str(raised.value).startswith("workdir=") and "\n" not in str(raised.value)
  assert not empty.exists()
