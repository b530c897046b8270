"""The analysis package: restore across meshes, the kernels mode and its bad input."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from configs import kernels as kernels_config
from hfc_jax import errors, main, optimizers, sharding, smoothness, train
from hfc_jax.analysis import common, kernels
from tests.conftest import assert_refused_in_process, tiny_config

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, tiny_trained_workdir):
  """Two small trained workdirs (`tiny_config`, 1 epoch): the paper's batch-statistic
  BN (the default norm: a copy of the session's `tiny_trained_workdir`, trained on 8
  devices, without the study folders other modules write there), and none, trained on
  1 device (the checkpoint written on one device that the restore test reads on 8)."""
  root = tmp_path_factory.mktemp("analysis")
  shutil.copytree(tiny_trained_workdir, root / "paper_bn",
                  ignore=lambda d, names: [n for n in names if d == tiny_trained_workdir
                                           and n in main.MODES])
  assert tiny_config().model.norm == "paper_bn"
  config = tiny_config(**{"train.epochs": 1, "model.norm": "none",
                          "eval.evaluators": ("clean",)})   # the studies read the checkpoint
  train.train_and_evaluate(config, str(root / "none"), mesh=sharding.make_mesh(1))
  return {"paper_bn": str(root / "paper_bn"), "none": str(root / "none")}


@pytest.fixture(scope="module")
def kernels_results(workdirs):
  """The kernels mode on the paper_bn workdir, with the none workdir compared: the
  results `main.run` returns (the study writes `<paper_bn>/kernels/`)."""
  return main.run(_kernels_config(**{"kernels.compare": (workdirs["none"],)}),
                  workdirs["paper_bn"])


def _kernels_config(**overrides):
  config = kernels_config.get_config()
  config.kernels.num_images = 60
  config.kernels.batch_size = 32
  config.kernels.rhos = (0.0, 1.0)
  config.kernels.cutoffs = (1.0,)
  config.kernels.eps = (0.03, 8 / 255)
  config.kernels.pgd_steps = 1          # the tests check the pipeline, not PGD's strength
  config.kernels.variants = ("eq3", "lowpass")   # the controls: tests/robust_table_test.py
  config.kernels.masking_images = 0      # checks: tests/robust_table_test.py
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _predict(trained, x):
  return np.asarray(jax.jit(trained.functional.logits)(trained.params, trained.model_state, x))


@pytest.mark.slow
def test_restore_across_meshes_is_bit_exact_and_builds_no_optimiser(workdirs, monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("restore built optimiser state")
  monkeypatch.setattr(optimizers, "make_optimizer", forbidden)
  monkeypatch.setattr(train, "create_train_state", forbidden)
  x = np.random.default_rng(0).uniform(size=(40, 32, 32, 3)).astype(np.float32)
  one = common.restore(workdirs["paper_bn"])                  # written on 8 devices
  eight = common.restore(workdirs["paper_bn"], mesh=sharding.make_mesh(8))
  assert one.params["first_conv"]["kernel"].devices() == {jax.devices("cpu")[0]}
  assert len(eight.params["first_conv"]["kernel"].devices()) == 8
  np.testing.assert_array_equal(_predict(one, x), _predict(eight, x))
  assert one.step == 8 and one.epoch == 1 and not hasattr(one, "opt_state")
  # ... and a checkpoint written on 1 device restores on 8 with the same predictions.
  single = workdirs["none"]                                   # written on 1 device
  eight = common.restore(single, mesh=sharding.make_mesh(8))
  assert len(eight.params["first_conv"]["kernel"].devices()) == 8 and eight.step == 8
  np.testing.assert_array_equal(_predict(common.restore(single), x), _predict(eight, x))


def test_restore_says_when_jax_started_with_other_xla_flags(monkeypatch, caplog):
  jax.devices()     # JAX has started (alone, this test ran before any test started it)
  monkeypatch.setenv("XLA_FLAGS", "")           # main would add its CPU flag here
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  with caplog.at_level(logging.WARNING):
    common.apply_backend_settings()
  assert any("not main's" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_sweep_rho_0_row_equals_the_robust_evaluation(workdirs, kernels_results):
  """The paper_bn model's rho = 0 row of the kernels sweep (run with a compared model:
  each model is scored alone on the same images) equals robust_eval of that model."""
  config = _kernels_config()
  robust = main.run(_robust_config(config), workdirs["paper_bn"])
  assert kernels_results["models"][0]["name"] == "paper_bn"
  row = kernels_results["models"][0]["sweep"][0]
  assert row["variant"] == "eq3 rho=0"
  assert row["clean"] == robust["clean"]
  assert row["attacks"] == robust["attacks"]
  assert row["intervals"] == robust["intervals"]
  assert row["masking_checks"] == robust["masking_checks"]


def test_kernel_controls_against_hand_computed_kernels():
  """eq. 3 renormalised and the scaled kernel on a 3x3 slice 1..9 at rho = 0.5: eq. 3
  adds 0.5 x the 8 edge-padded neighbours (centre 5 + 0.5 x 40 = 25, corner 1 +
  0.5 x (1+1+2+1+2+4+4+5) = 11), renormalised divides by 1 + 8 x 0.5 = 5."""
  k = np.arange(1, 10, dtype=np.float32).reshape(3, 3, 1, 1)
  eq3 = np.asarray(smoothness.smooth_eq3(k, 0.5))[..., 0, 0]
  renorm = np.asarray(smoothness.smooth_eq3_renormalised(k, 0.5))[..., 0, 0]
  assert eq3[1, 1] == 25.0 and eq3[0, 0] == 11.0
  np.testing.assert_allclose(renorm, eq3 / 5.0, rtol=1e-6)
  assert renorm[1, 1] == pytest.approx(5.0) and renorm[0, 0] == pytest.approx(2.2)
  # A weighted mean: within the slice's range, a constant slice (and its sum) kept.
  assert renorm.min() >= 1.0 and renorm.max() <= 9.0
  flat = np.full((3, 3, 2, 4), -0.7, np.float32)
  np.testing.assert_allclose(smoothness.smooth_eq3_renormalised(flat, 1.0), flat, rtol=1e-6)
  np.testing.assert_array_equal(smoothness.scale_kernel(k, 0.5), 5.0 * k)
  params = {"first_conv": {"kernel": k, "bias": np.zeros(1)}, "head": {"kernel": k}}
  scaled = kernels.Variant("scaled", 0.25).apply(params, "small_cnn")
  np.testing.assert_array_equal(scaled["first_conv"]["kernel"], 3.0 * k)
  assert scaled["head"]["kernel"] is k                # only the first conv changes
  config = _kernels_config(**{"kernels.rhos": (0.0, 0.5), "kernels.cutoffs": (1.0,),
                              "kernels.variants": ("scaled", "lowpass", "eq3_renorm")})
  assert [v.name for v in kernels.variants(config.kernels)] == [
      "eq3 rho=0", "eq3 renorm rho=0.5", "scaled rho=0.5", "lowpass c=1"]


def _robust_config(kc_config):
  config = kernels_config.get_config()
  config.mode = "robust_eval"
  kc, rc = kc_config.kernels, config.robust_eval
  rc.eps, rc.attacks, rc.pgd_steps = kc.eps, kc.attacks, kc.pgd_steps
  rc.num_images, rc.batch_size, rc.seed = kc.num_images, kc.batch_size, kc.seed
  rc.defence_radii, rc.min_eps_search_steps, rc.min_eps_pgd_steps = (), 1, 1
  rc.masking_images = kc.masking_images
  return config


@pytest.mark.slow
def test_kernels_mode_writes_grids_measures_and_sweep(workdirs, kernels_results):
  results = kernels_results
  out = os.path.join(workdirs["paper_bn"], "kernels")
  assert sorted(os.listdir(out)) == ["kernels.md", "kernels_channels.png", "kernels_rgb.png",
                                     "measures.json", "provenance.json", "sweep.json",
                                     "sweep.png"]
  names = [m["name"] for m in results["models"]]
  assert names == ["paper_bn", "none"]
  measures = json.load(open(os.path.join(out, "measures.json")))
  for m in results["models"]:
    trained = common.restore(m["workdir"])
    kernel = trained.params["first_conv"]["kernel"]
    assert measures[m["name"]]["measures"]["original"] == pytest.approx(
        smoothness.smoothness_measures(kernel))
    smoothed = smoothness.smooth_eq3(kernel, 1.0)
    assert m["measures"]["eq3 rho=1"] == pytest.approx(smoothness.smoothness_measures(smoothed))
    assert [r["variant"] for r in m["sweep"]] == ["eq3 rho=0", "eq3 rho=1", "lowpass c=1"]
    for row in m["sweep"]:
      assert set(row["attacks"]) == {"fgsm", "pgd"}
      assert set(row["attacks"]["pgd"]) == {"0.0300", "0.0314"}
      # PGD is at least as strong as no attack, on the same images.
      assert row["attacks"]["pgd"]["0.0314"] <= row["clean"]
  table = open(os.path.join(out, "kernels.md")).read()
  assert "| paper_bn | eq3 rho=1 |" in table and "| none | lowpass c=1 |" in table
  from matplotlib.image import imread  # pylint: disable=g-import-not-at-top
  image = imread(os.path.join(out, "kernels_rgb.png"))
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 600
  assert np.std(image[..., :3]) > 0.05    # filters drawn, not a blank canvas


@pytest.mark.parametrize("flags,message", [
    (["--config.kernels.rhos=(-0.5,1.0)"], "kernels.rhos=-0.5 is out of range"),
    (["--config.kernels.rhos=()"], "kernels.rhos=() must name at least one rho"),
    (["--config.kernels.eps=(0.03,1.5)"], "kernels.eps=1.5 is out of range; allowed: [0.0, 1.0]"),
    (["--config.kernels.variants=('eq3','blur')"], "kernels.variants='blur' is not allowed; "
     "choose one of: 'eq3', 'eq3_renorm', 'scaled', 'lowpass'."),
    ([], "kernels.num_images=1000 exceeds the 256 test images"),
])
@pytest.mark.slow   # its trained workdir fixture is only built for the slow tier
def test_bad_kernels_input_is_one_line_and_writes_nothing(workdirs, flags, message):
  assert_refused_in_process(workdirs["none"], message, *flags, config="configs/kernels.py",
                            tiny=False)


@pytest.mark.slow
def test_no_checkpoint_and_incomparable_compare_workdirs_are_refused(workdirs, tmp_path):
  with pytest.raises(errors.HfcError, match="holds no checkpoint"):
    main.run(_kernels_config(), str(tmp_path / "empty"))
  other = tiny_config(**{"train.epochs": 1, "data.image_size": 16, "eval.radii": (4,),
                         "eval.evaluators": ("clean",)})
  train.train_and_evaluate(other, str(tmp_path / "small"), mesh=sharding.make_mesh(8))
  with pytest.raises(errors.HfcError, match=r"kernels.compare: .*small.* holds a model of another test set.*image_size=16 vs 32"):
    main.run(_kernels_config(**{"kernels.compare": (str(tmp_path / "small"),)}),
             workdirs["none"])
  assert not os.path.exists(os.path.join(workdirs["none"], "kernels"))


@pytest.mark.slow
def test_a_model_without_a_first_conv_is_named(workdirs):
  trained = common.restore(workdirs["none"])
  params = {k: v for k, v in trained.params.items() if k != "first_conv"}
  with pytest.raises(errors.HfcError, match="model 'small_cnn' has no first conv"):
    smoothness.first_conv_of(params, model="small_cnn")


def test_display_names_tell_workdirs_apart():
  assert common.display_names(["w/a", "w/b"]) == ["a", "b"]
  assert common.display_names(["fig5_small_s0/vanilla", "gs://b/fig5_plain_s0/vanilla/"]) == [
      "fig5_small_s0/vanilla", "fig5_plain_s0/vanilla"]
  assert common.display_names(["x/s0/vanilla", "y/s0/vanilla"]) == ["x/s0/vanilla",
                                                                   "y/s0/vanilla"]
  assert common.display_names(["/runs/one"]) == ["one"]
  assert common.display_names(["w/run", "w/run/"]) == ["run", "run"]   # the same workdir
