"""Band-pass images, the per-epoch band variants, the bands mode and its report figure."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from hfc_jax import errors, evaluate, frequency, main, models, sharding, train
from hfc_jax.analysis import bands, common
from hfc_jax.models.functional import Functional
from hfc_jax.reporting import plots
from tests.conftest import assert_refused_in_process, tiny_config


def _band(x, r1, r2, inclusive=False):
  """The band r1 <= dist < r2 of images x, computed alone."""
  return frequency.band_pass_many(x, ((r1, r2),), inclusive=inclusive)[0]


@pytest.mark.parametrize("size,inclusive", [(32, False), (32, True), (15, False), (28, True)])
def test_disjoint_bands_that_cover_the_spectrum_sum_to_the_image(size, inclusive):
  x = np.random.default_rng(size).uniform(size=(3, size, size, 2)).astype(np.float32)
  corner = frequency.corner_radius(size, size)
  edges = [0, 2, 4.5, 8, 11, corner]
  tiles = list(zip(edges[:-1], edges[1:]))
  # All at once; one at a time too; and the LFCs at 4.5 and 8: one program.
  parts, one, lfc4, lfc8 = jax.jit(lambda v: (
      frequency.band_pass_many(v, tiles, inclusive=inclusive),
      sum(_band(v, a, b, inclusive) for a, b in tiles),
      frequency.split(v, 4.5, inclusive=inclusive)[0],
      frequency.split(v, 8, inclusive=inclusive)[0]))(x)
  assert parts.shape == (len(tiles),) + x.shape
  np.testing.assert_allclose(np.sum(parts, axis=0), x, atol=2e-6)
  np.testing.assert_allclose(one, x, atol=2e-6)
  # ... and each band is the difference of two LFCs.
  np.testing.assert_allclose(parts[2], lfc8 - lfc4, atol=2e-6)


@pytest.mark.parametrize("inclusive", [False, True])
def test_band_from_0_is_the_lfc(inclusive):
  x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  for r in (1, 4, 8.0, 12.5, 16, 23):
    lfc, _ = frequency.split(x, r, inclusive=inclusive)
    np.testing.assert_allclose(_band(x, 0, r, inclusive), lfc,
                               atol=1e-6)
  # The boundary: the lattice points at distance exactly 4 go to (4, 8) with dist < r
  # and to (0, 4] with dist <= r, as in `split`.
  impulse = np.zeros((1, 32, 32, 1), np.float32)
  impulse[0, 0, 4, 0] = 1.0    # |spectrum| 1 everywhere: the band-pass shows its mask
  spec = lambda img: np.abs(np.fft.fftshift(np.fft.fft2(img[0, :, :, 0])))
  inner = spec(np.asarray(_band(impulse, 0, 4, inclusive)))
  assert (inner[16, 20] > 0.5) == inclusive and inner[16, 16] > 0.5


def test_band_checks_name_the_field():
  assert frequency.check_bands(((0, 4), (16, 24)), 32, 32, "eval.bands") == (
      (0.0, 4.0), (16.0, 24.0))
  for band, message in [((8, 4), "band (8, 4) must have 0 <= r1 < r2"),
                        ((4, 4), "band (4, 4) must have 0 <= r1 < r2"),
                        ((-2, 4), "band (-2, 4) must have 0 <= r1 < r2"),
                        ((16, 25), "band (16, 25) ends beyond the 32x32 spectrum: r2 <= 24"),
                        ((4,), "band (4,) must be a pair")]:
    with pytest.raises(errors.HfcError, match=r"^eval\.bands: " + message.replace(
        "(", r"\(").replace(")", r"\)")):
      frequency.check_bands(((0, 4), band), 32, 32, "eval.bands")


@pytest.mark.slow
def test_eval_step_scores_band_variants_after_the_hfc_ones():
  model = models.create("small_cnn", num_classes=10, in_channels=3, norm="paper_bn")
  functional, params, model_state = Functional.split(model)
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=(24,)).astype(np.int32)
  mask = np.ones(24, np.float32)
  mask[-4:] = 0
  radii, band_list = (4.0,), ((0.0, 4.0), (4.0, 12.0))
  mesh = sharding.make_mesh(8)
  eval_fn = evaluate.make_eval_fn(functional.logits, mesh, radii=radii, bands=band_list,
                                  inclusive=False, rescale="none")
  out = jax.device_get(eval_fn(params, model_state, *sharding.put_batch(
      mesh, images, labels, mask)))
  x = images.astype(np.float32) / 255
  lfc, hfc = frequency.split(x, 4.0)
  variants = [x, lfc, hfc] + [_band(x, a, b) for a, b in band_list]
  logits = jax.jit(functional.logits)   # one compile for the five variants
  expected = [np.sum(np.argmax(logits(params, model_state, np.asarray(v)[:20]), -1)
                     == labels[:20]) for v in variants]
  np.testing.assert_allclose(out["correct"], expected)
  assert out["correct"][1] == out["correct"][3]      # band [0, 4) is the LFC at 4
  assert evaluate.variant_names(radii, band_list) == [
      "clean", "lfc_4", "hfc_4", "band_0_4", "band_4_12"]
  assert evaluate.variant_names(radii) == ["clean", "lfc_4", "hfc_4"]


@pytest.fixture(scope="module")
def band_run(tmp_path_factory):
  """tiny_config trained for 1 epoch on 8 devices (the session's `tiny_trained_workdir`
  run, so the same train step) with band accuracies recorded each epoch, at the one
  radius they are compared with: (workdir, history). The bands-mode tests below study
  it, writing only its `bands/`."""
  config = tiny_config(**{"train.epochs": 1, "eval.radii": (4,),
                          "eval.bands": ((0, 4), (4, 23))})
  path = str(tmp_path_factory.mktemp("bands") / "run")
  return path, train.train_and_evaluate(config, path, mesh=sharding.make_mesh(8))


@pytest.mark.slow
def test_training_records_band_accuracies_and_the_report_plots_them(band_run, tmp_path):
  run, history = band_run
  for split in ("test", "train_eval"):
    assert history[-1][f"{split}/band_0_4"] == history[-1][f"{split}/lfc_4"]
    # (0, 4) and (4, 23) cover the 32x32 spectrum (corner 22.6): the second is the HFC.
    assert history[-1][f"{split}/band_4_23"] == history[-1][f"{split}/hfc_4"]
  assert plots.bands(history) == [("0", "4"), ("4", "23")]
  from hfc_jax.reporting import report  # pylint: disable=g-import-not-at-top
  result = report.write_report([run], str(tmp_path / "report"))
  fig = result["figures"]["runs_bands.png"]
  assert len(fig.axes[0].get_lines()) == 2


def test_band_figure_structure():
  recs = [{"epoch": e, "test/clean": 0.9, "test/band_0_4": 0.5 + 0.1 * e,
           "test/band_4_8": 0.3, "test/band_12.5_16": None} for e in (1, 2)]
  others = [{"epoch": 1, "test/clean": 0.8, "test/band_0_4": 0.2}]
  assert plots.bands(recs) == [("0", "4"), ("4", "8"), ("12.5", "16")]
  assert plots.bands(recs, "train_eval") == []
  fig = plots.band_figure({"a": recs, "b": others})
  lines = fig.axes[0].get_lines()
  assert [l.get_label() for l in lines] == ["a", "a clean", "b", "b clean"]
  np.testing.assert_allclose(lines[0].get_ydata(), [0.7, 0.3, np.nan])
  np.testing.assert_allclose(lines[2].get_ydata(), [0.2, np.nan, np.nan])
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
      "[0, 4)", "[4, 8)", "[12.5, 16)"]


def test_the_bands_fields_are_checked_before_the_workdir_is_read(tmp_path):
  """In process, through the mode dispatcher (`analysis.run`): the `bands.*` fields that
  need no data are refused in one line before the workdir is opened (the refusals
  through `python -m hfc_jax.main` on a trained workdir are slow tests below)."""
  import hfc_jax.analysis  # pylint: disable=g-import-not-at-top
  for overrides, message in (
      ({"bands.bands": ()}, "bands.bands=() must name at least one (r1, r2) band."),
      ({"bands.bands": ((0, 4), (8, 4))}, "bands.bands: band (8, 4) must have 0 <= r1 < r2."),
      ({"bands.num_images": -1}, "bands.num_images=-1 is out of range; allowed: [0, inf]."),
      ({"bands.compare": ("",)}, "bands.compare=('',) must list workdirs.")):
    with pytest.raises(errors.HfcError) as raised:
      hfc_jax.analysis.run(bands.MODE, _config(**overrides), str(tmp_path / "none"))
    assert str(raised.value) == message
  assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------
# The bands mode on a trained workdir
# ---------------------------------------------------------------------------
@pytest.fixture
def workdir(band_run):
  return band_run[0]


def _config(**overrides):
  return tiny_config(**{"mode": bands.MODE, "bands.num_images": 40,
                        "bands.batch_size": 32, **overrides})


@pytest.mark.slow
def test_mode_writes_band_and_radius_curves(workdir):
  results = main.run(_config(**{"bands.compare": (workdir,)}), workdir)
  out = os.path.join(workdir, bands.MODE)
  assert sorted(os.listdir(out)) == ["bands.json", "bands.md", "bands.png", "provenance.json"]
  assert json.load(open(os.path.join(out, "bands.json"))) == json.loads(
      json.dumps(common.json_ready(results)))
  assert results["corner"] == 23 and results["radii"] == [float(r) for r in range(1, 24)]
  assert results["bands"] == [[0, 4], [4, 8], [8, 12], [12, 16], [16, 23]]
  first, second = results["models"]
  assert first == second                         # the same model, side by side
  assert len(first["bands"]) == 5 and len(first["lfc"]) == len(first["hfc"]) == 23
  assert first["bands"][0] == first["lfc"][3]    # [0, 4) is the LFC at 4
  assert first["lfc"][-1] == first["clean"]      # the LFC at the corner is the image
  assert first["batch_size"] == 32
  # The per-epoch evaluation of the same images scores the same (its radii included).
  mesh = sharding.make_mesh(8)
  trained = common.restore(workdir, mesh=mesh)
  x, y, _ = common.load_test_set(trained, 40)
  radii = (4.0, 12.0)
  eval_fn = evaluate.make_eval_fn(trained.functional.logits, mesh, radii=radii,
                                  bands=((8.0, 12.0),), inclusive=False, rescale="none")
  scores = evaluate.variant_accuracies(eval_fn, trained.params, trained.model_state, x, y,
                                       mesh=mesh, batch_size=32, radii=radii,
                                       bands=((8.0, 12.0),))
  assert scores["clean"] == pytest.approx(first["clean"])
  assert scores["lfc_4"] == pytest.approx(first["lfc"][3])
  assert scores["hfc_12"] == pytest.approx(first["hfc"][11])
  assert scores["band_8_12"] == pytest.approx(first["bands"][2])
  table = open(os.path.join(out, "bands.md")).read()
  assert "| run | 1 |" in table and "| [16, 23) |" in table and "| 23 |" in table


@pytest.mark.slow
def test_compared_workdirs_must_share_the_test_set(workdir):
  trained = common.restore(workdir)
  other_config = trained.config.copy_and_resolve_references()
  other_config.data.image_size = 16
  other = dataclasses.replace(trained, config=other_config)
  with pytest.raises(errors.HfcError,
                     match=r"bands.compare: 'other' holds a model of another test set.*"
                     r"image_size=16 vs 32"):
    common.check_same_test_set([(workdir, trained), ("other", other)], "bands.compare")
  augmented = trained.config.copy_and_resolve_references()
  augmented.data.augment = True                   # training-only: still comparable
  common.check_same_test_set([(workdir, trained),
                              ("aug", dataclasses.replace(trained, config=augmented))],
                             "bands.compare")


@pytest.mark.parametrize("flags,message", [
    (["--config.bands.bands=((0,4),(8,4))"],
     "bands.bands: band (8, 4) must have 0 <= r1 < r2."),
    (["--config.bands.bands=((-1,4),)"], "bands.bands: band (-1, 4) must have 0 <= r1 < r2."),
    (["--config.bands.bands=((16,30),)"],
     "bands.bands: band (16, 30) ends beyond the 32x32 spectrum: r2 <= 24"),
    (["--config.bands.num_images=300"], "bands.num_images=300 exceeds the 256 test images"),
])
@pytest.mark.slow   # trains the module's workdir
def test_bad_input_is_one_line_and_writes_nothing(workdir, flags, message):
  assert_refused_in_process(workdir, message, f"--config.mode={bands.MODE}", *flags)
