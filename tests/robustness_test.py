"""Adversarial training and the robust evaluation of a workdir."""

import json
import os

import jax
import numpy as np
import pytest

from hfc_jax import adversarial, errors, frequency, main, optimizers, sharding, train
from hfc_jax.analysis import common, robustness
from hfc_jax import data as data_lib
from tests.conftest import config_from_flags, random_batch, tiny_config


def _adv_config(enabled: bool, **overrides):
  # Per epoch only the metrics the tests read: clean accuracy and PGD-5 accuracy on the
  # 256 test images (measured after 3 epochs: adversarial 0.21, plain 0.09; with PGD-10
  # 0.13 and 0.02).
  config = tiny_config(**{
      "data.num_train": 1024, "data.num_test": 256, "train.epochs": 3,
      "model.norm": "batchnorm", "adv.enabled": enabled, "adv.eps": 2 / 255,
      "adv.step_size": 0.5 / 255, "adv.steps": 3, "adv.random_start": True,
      "eval.robust_subset": 256, "eval.robust_eps": 2 / 255, "eval.robust_steps": 5,
      "eval.train_subset": 128, "eval.evaluators": ("clean", "attack")})
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """The plain twin of the adversarially trained model (`_adv_config(False)`, batchnorm,
  on 8 devices): (workdir, config, the metrics history). The robust evaluation tests
  below attack it too."""
  workdir = str(tmp_path_factory.mktemp("robust") / "plain")
  config = _adv_config(False)
  history = train.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(8))
  return workdir, config, history


@pytest.mark.slow
def test_adversarial_training_raises_pgd_accuracy(tmp_path, trained_workdir):
  robust = train.train_and_evaluate(_adv_config(True), str(tmp_path / "adv"),
                                    mesh=sharding.make_mesh(8))
  plain = trained_workdir[2]      # the same config, adversarial training off
  print("pgd accuracy: adversarial", robust[-1]["test/pgd"], "plain", plain[-1]["test/pgd"])
  assert robust[-1]["test/pgd"] > plain[-1]["test/pgd"] + 0.05, (robust[-1], plain[-1])
  assert plain[-1]["test/pgd"] < plain[-1]["test/clean"]


def _adv_steps(mesh, n=2):
  """n SGD adversarial-training steps on a fixed batch; returns params, loss and the
  adversarial images of the first step."""
  # One PGD step: which layout runs it is what is tested, not how many (each step is
  # written out in the compiled train step).
  config = _adv_config(True, **{"optim.name": "sgd", "optim.learning_rate": 0.05,
                                "adv.steps": 1})
  model = train.create_model(config, 10, 3, 32)
  tx = optimizers.make_optimizer(config.optim, 10, 1)
  functional, state = train.create_train_state(model, tx, 0, mesh)
  adversary = adversarial.Adversary.from_config(config.adv)
  images, labels = sharding.put_batch(mesh, *random_batch(32))
  key = jax.random.key(7)
  adv = jax.jit(lambda st, x, y: adversary.perturb(
      functional, st.params, st.model_state, train.preprocess(x, "none"), y, key, key))(
          state, images, labels)
  step = train.make_train_step(functional, tx, mesh, rescale="none", adversary=adversary)
  for _ in range(n):
    state, metrics = step(state, images, labels)
  return jax.device_get(state.params), float(metrics["loss"]), np.asarray(adv)


@pytest.mark.slow
@pytest.mark.compile_bound
def test_adversarial_step_is_the_same_on_one_and_eight_devices():
  p1, loss1, adv1 = _adv_steps(sharding.make_mesh(1))
  p8, loss8, adv8 = _adv_steps(sharding.make_mesh(8))
  # Sign steps can flip where an input gradient is float noise around 0, and the two
  # layouts round differently: nearly every pixel must still agree exactly.
  assert np.mean(adv1 == adv8) > 0.999
  assert loss1 == pytest.approx(loss8, rel=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_adversary_config_errors():
  for field, value, message in (
      ("adv.eps", 1.5, "adv.eps=1.5 is out of range; allowed: [0.0, 1.0]"),
      ("adv.step_size", -0.1, "adv.step_size=-0.1 is out of range"),
      ("adv.steps", -1, "adv.steps=-1 is out of range"),
      ("adv.name", "cw", "adv.name='cw' is not allowed; choose one of: 'fgsm', 'pgd'")):
    with pytest.raises(errors.HfcError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
      adversarial.Adversary.from_config(_adv_config(True, **{field: value}).adv)


def test_robust_eval_fields_are_checked_in_one_line():
  """`robustness.check_robust_config` in process (through main it runs after the restore
  of a trained workdir: test_robust_eval_bad_input, slow)."""
  for field, value, message in (
      ("eps", (0.03, 2.0), "robust_eval.eps=2.0 is out of range; allowed: [0.0, 1.0]."),
      ("attacks", ("fgsm", "deepfool"), "robust_eval.attacks='deepfool' is not allowed"),
      ("restarts", 0, "robust_eval.restarts=0 is out of range; allowed: [1, inf]."),
      ("defence_radii", (4, 40),
       "robust_eval.defence_radii=40 is out of range; allowed: [1, 32].")):
    with pytest.raises(errors.HfcError) as raised:
      robustness.check_robust_config(tiny_config(**{f"robust_eval.{field}": value}).robust_eval,
                                     32)
    assert str(raised.value).startswith(message), str(raised.value)
  robustness.check_robust_config(tiny_config().robust_eval, 32)    # the defaults pass


N_IMAGES = 40


def _robust_config(config):
  config = config.copy_and_resolve_references()    # the fixture's stays as trained
  config.mode = "robust_eval"
  # Two batches (32, and 8 with masked padding). Each attack runs on the images the model
  # classifies correctly, compacted into batches of up to 32: with at most 32 of them one
  # program per attack. One PGD step (on the CPU each step is written out, and compile
  # time grows with them): the tests check the tables, not PGD's strength.
  config.robust_eval.num_images = N_IMAGES
  config.robust_eval.batch_size = 32
  config.robust_eval.pgd_steps = 1
  config.robust_eval.eps = (0.01, 0.03)
  config.robust_eval.defence_radii = (12,)   # each radius runs the same code (its programs)
  config.robust_eval.min_eps_search_steps = 3
  config.robust_eval.min_eps_pgd_steps = 1
  config.robust_eval.masking_images = 0   # the masking checks: tests/robust_table_test.py
  return config


@pytest.mark.slow
def test_robust_eval_writes_consistent_tables(trained_workdir):
  workdir, config, _ = trained_workdir
  results = main.run(_robust_config(config), workdir)
  files = sorted(os.listdir(os.path.join(workdir, robustness.MODE)))
  assert files == ["min_eps.npy", "provenance.json", "robust_eval.json", "robust_eval.md",
                   "robustness_curve.png"]
  on_disk = json.load(open(os.path.join(workdir, robustness.MODE, "robust_eval.json")))
  assert on_disk["attacks"] == results["attacks"]
  assert set(results["attacks"]) == {"fgsm", "pgd"}
  for name in ("fgsm", "pgd"):
    for acc in results["attacks"][name].values():
      assert 0.0 <= acc <= results["clean"]
  # The minimal-eps curve starts at the clean accuracy: exactly the images already
  # misclassified have minimal eps 0.
  assert results["min_eps"]["curve_accuracy"][0] == pytest.approx(results["clean"])
  min_eps = np.load(os.path.join(workdir, robustness.MODE, "min_eps.npy"))
  assert min_eps.shape == (N_IMAGES,)
  # The defended model's clean accuracy equals the plain model on low-passed images.
  trained = common.restore(workdir)
  dataset = data_lib.load(trained.config.data)
  x, y = dataset.x_test[:N_IMAGES].astype(np.float32) / 255, dataset.y_test[:N_IMAGES]
  logits_fn = jax.jit(trained.functional.logits)
  assert [row["radius"] for row in results["defence"]] == [12.0]
  for row in results["defence"]:
    filtered = frequency.lowpass(x, row["radius"])
    logits = logits_fn(trained.params, trained.model_state, filtered)
    expected = float(np.mean(np.asarray(np.argmax(logits, -1)) == y))
    assert row["clean"] == pytest.approx(expected, abs=1e-6)
    for eps in ("0.0100", "0.0300"):
      assert row["adaptive"][eps] <= row["clean"]
  table = open(os.path.join(workdir, robustness.MODE, "robust_eval.md")).read()
  assert "| PGD-1 |" in table and "| 12 |" in table


@pytest.mark.slow
def test_robust_eval_bad_input(tmp_path, trained_workdir):
  workdir, config, _ = trained_workdir
  config = _robust_config(config)
  config.robust_eval.eps = (0.03, 2.0)
  with pytest.raises(errors.HfcError, match=r"robust_eval.eps=2.0 is out of range"):
    main.run(config, workdir)
  config.robust_eval.eps = (0.03,)
  config.robust_eval.attacks = ("fgsm", "deepfool")
  with pytest.raises(errors.HfcError, match=r"robust_eval.attacks='deepfool' is not allowed"):
    main.run(config, workdir)
  # In process (the command line's exit status 2 for it: tests/figure2_test.py).
  empty = tmp_path / "empty"
  with pytest.raises(errors.HfcError, match=r"^workdir=.*holds no checkpoint"):
    main.run(config_from_flags("--config.mode=robust_eval"), str(empty))
  assert not empty.exists()
