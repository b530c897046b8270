"""Tests for hfc_jax.presets: the config files that are presets give what the presets give."""

import importlib

import pytest

from hfc_jax import defaults, presets


def _fields(config) -> dict:
  return defaults.dotted_fields(config.to_dict())


def _with(config, overrides: dict):
  config.update(overrides)
  return config


# Config files that are a preset: {module under configs/: what the preset gives}.
PRESET_FILES = {
    "cifar10_resnet32_vanilla": presets.cifar10_resnet32_vanilla,
    "cifar10_resnet18": presets.cifar10_resnet18,
    "cifar10_resnet32_adv": lambda: _with(presets.base("cifar10"),
                                          presets.adversarial("cifar10")),
}


@pytest.mark.parametrize("module", sorted(PRESET_FILES))
def test_config_file_equals_its_preset_field_by_field(module):
  shipped = _fields(importlib.import_module(f"configs.{module}").get_config())
  expected = _fields(PRESET_FILES[module]())
  assert sorted(shipped) == sorted(expected)
  assert {k: v for k, v in shipped.items() if expected[k] != v} == {}


def test_cifar10_pgd_recipe_is_the_original_codes():
  """The adversarial run differs from the vanilla one in these fields only: PGD at
  eps 0.03, 10 steps of 0.003 (eps/10), no random start, with pad-2 crop + flip."""
  vanilla = _fields(presets.cifar10_resnet32_vanilla())
  adv = _fields(importlib.import_module("configs.cifar10_resnet32_adv").get_config())
  assert {k: v for k, v in adv.items() if vanilla[k] != v} == {
      "data.augment": True, "adv.enabled": True,
      "eval.robust_subset": 1000, "eval.robust_eps": 0.03}
  assert {k: adv[k] for k in ("adv.name", "adv.eps", "adv.step_size", "adv.steps",
                              "adv.random_start", "data.aug_pad", "data.aug_flip")} == {
      "adv.name": "pgd", "adv.eps": 0.03, "adv.step_size": 0.003, "adv.steps": 10,
      "adv.random_start": False, "data.aug_pad": 2, "data.aug_flip": True}


@pytest.mark.parametrize("module,recipe", [
    ("cifar10_resnet18_madry", (8 / 255, 2 / 255, 7, True, 1000)),
    ("embedded_adv", (4 / 255, 1 / 255, 5, True, 500)),
])
def test_adversarial_config_files_use_the_pgd_recipe(module, recipe):
  """Each adversarial config trains with PGD and checks robustness at its own eps."""
  config = importlib.import_module(f"configs.{module}").get_config()
  eps, step_size, steps, random_start, subset = recipe
  assert config.adv.enabled and config.adv.name == "pgd"
  assert (config.adv.eps, config.adv.step_size, config.adv.steps,
          config.adv.random_start) == (eps, step_size, steps, random_start)
  assert (config.eval.robust_eps, config.eval.robust_subset) == (eps, subset)


@pytest.mark.parametrize("dataset,eps", [("embedded", 2 / 255), ("fashion_mnist", 4 / 255)])
def test_small_adversarial_presets(dataset, eps):
  assert presets.adversarial(dataset) == {
      "adv": {"enabled": True, "name": "pgd", "eps": eps, "step_size": eps / 4,
              "steps": 5, "random_start": True},
      "eval": {"robust_subset": 500, "robust_eps": eps}}


def test_small_presets_change_only_their_fields():
  base = _fields(defaults.get_config())
  changed = {d: {k: v for k, v in _fields(presets.base(d)).items() if base[k] != v}
             for d in ("embedded", "fashion_mnist")}
  common = {"model.norm": "none", "train.log_every_steps": 20, "eval.train_subset": 1000,
            "checkpoint.keep": 2}
  assert changed["embedded"] == {**common, "data.num_train": 5000, "data.num_test": 1000,
                                 "train.epochs": 8}
  assert changed["fashion_mnist"] == {
      **common, "data.name": "idx", "data.path": "/usr/share/datasets/fashion-mnist",
      "data.train_limit": 10000, "data.test_limit": 2000}
  assert presets.base("fashion_mnist").train.epochs == 6   # the default's, set anyway


def test_resnet18_recipe_crops_from_a_4_pixel_pad():
  """The documented CIFAR-10 ResNet-18 recipe: pad-4 random crop and flip, SGD Nesterov
  0.9 at lr 0.1, cosine decay, weight decay 5e-4, standard BN."""
  data, model, optim = (presets.cifar10_resnet18()[k] for k in ("data", "model", "optim"))
  assert (data.augment, data.aug_pad, data.aug_flip) == (True, 4, True)
  assert (model.name, model.norm) == ("resnet18", "batchnorm")
  assert (optim.name, optim.learning_rate, optim.nesterov, optim.schedule,
          optim.weight_decay, optim.momentum) == ("sgd", 0.1, True, "cosine", 5e-4, 0.9)
