"""validation.check, in process: every data-free refusal of a config is one HfcError line
naming the exact field and what is allowed, section by section; the checks that need
the data (`check_with_data`); and that a run is checked once. `main_test` keeps the one
subprocess run of a bad value (exit status 2, that line, no traceback, no workdir)."""

import types

import ml_collections
import numpy as np
import pytest

from hfc_jax import errors, optimizers, validation
from hfc_jax.models import layers
from tests.conftest import tiny_config

ONE_OF_BOOL = "choose one of: False, True."


def _config(overrides: dict) -> ml_collections.ConfigDict:
  """`tiny_config` with dotted `overrides`, any type (a ConfigDict refuses a type change,
  e.g. a float for the tuple optim.decay_at, which a hand-written config may hold)."""
  tree = tiny_config().to_dict()
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = tree
    for p in path:
      node = node[p]
    node[last] = value
  return ml_collections.ConfigDict(tree)


def _refusal(overrides: dict) -> str:
  """The one-line message of `validation.check` on `_config(overrides)`."""
  with pytest.raises(errors.HfcError) as raised:
    validation.check(_config(overrides))
  message = str(raised.value)
  assert "\n" not in message
  return message


def _cases(section: dict) -> list:
  return [pytest.param(overrides, message, id=message.split(" ")[0][:40])
          for overrides, message in section]


# (overrides, the exact message), one list per section in the order `check` runs them.
DEVICES = [
    ({"train.batch_size": 60}, "train.batch_size=60 must be a positive multiple of the "
     "number of devices (8); a training batch is split evenly over them."),
    ({"num_devices": 3}, "train.batch_size=64 must be a positive multiple of the number "
     "of devices (3); a training batch is split evenly over them."),
    ({"train.batch_size": 0}, "train.batch_size=0 is out of range; allowed: [1, inf]."),
    ({"num_devices": 9}, "num_devices=9 is out of range; allowed: [1, 8]."),
]
DATA = [
    ({"data.name": "imagenet"}, "data.name='imagenet' is not allowed; choose one of: "
     "'embedded', 'cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'npz', 'idx'."),
    ({"data.augment": "yes"}, f"data.augment='yes' is not allowed; {ONE_OF_BOOL}"),
    ({"data.aug_pad_mode": "edge"},
     "data.aug_pad_mode='edge' is not allowed; choose one of: 'zero', 'reflect'."),
    ({"data.aug_pad": 65}, "data.aug_pad=65 is out of range; allowed: [0, 64]."),
    ({"data.train_limit": -1}, "data.train_limit=-1 is out of range; allowed: [0, inf]."),
    ({"data.rescale": "max"},
     "data.rescale='max' is not allowed; choose one of: 'none', 'per_image_max'."),
]
MODEL = [
    ({"model.name": "vgg"}, "model.name='vgg' is not allowed; choose one of: 'small_cnn', "
     "'plain_cnn', 'plain_cnn_early_pool', 'plain_cnn_gap', 'resnet18', 'preact_resnet32', "
     "'resnet18_torch', 'preact_resnet18', 'wide_resnet', 'torchvision_resnet18', "
     "'torchvision_resnet50'."),
    ({"model.depth": 28}, "model.depth=28: model.name='small_cnn' has a fixed depth and "
     "width factor; only wide_resnet takes them (0 for the others)."),
    ({"model.input_mean": (0.5,), "model.input_std": (0.0,)},
     "model.input_std[0]=0.0 is out of range; allowed: (0, inf]."),
    ({"model.norm": "layernorm"}, "model.norm='layernorm' is not allowed; choose one of: "
     + ", ".join(repr(n) for n in layers.NORMS) + "."),
    ({"model.dtype": "float16"},
     "model.dtype='float16' is not allowed; choose one of: 'float32', 'bfloat16'."),
    ({"model.dropout": 1.5}, "model.dropout=1.5 is out of range; allowed: [0, 1]."),
    ({"model.input_filter": "lowpass", "model.filter_radius": 40.0},
     "model.filter_radius=40.0 is out of range; allowed: [1, 32]."),
    ({"model.widths": (8, 8)}, "model.widths=(8, 8): small_cnn takes 4 positive integers "
     "(default (16, 32, 64, 64)), or () for the default."),
]
TRAIN = [
    ({"train.epochs": 0}, "train.epochs=0 is out of range; allowed: [1, inf]."),
    ({"train.epochs": 1.5}, "train.epochs=1.5 must be an integer."),
    ({"train.log_every_steps": 0},
     "train.log_every_steps=0 is out of range; allowed: [1, inf]."),
    ({"train.prefetch": 0}, "train.prefetch=0 is out of range; allowed: [1, inf]."),
    ({"train.smooth_kernel_weight": -1.0},
     "train.smooth_kernel_weight=-1.0 is out of range; allowed: [0, inf]."),
    ({"train.divergence_loss": -1.0},
     "train.divergence_loss=-1.0 is out of range; allowed: [0, inf]."),
    ({"train.divergence_log_points": 0},
     "train.divergence_log_points=0 is out of range; allowed: [1, inf]."),
]
OPTIM = [
    ({"optim.name": "lamb"}, "optim.name='lamb' is not allowed; choose one of: 'sgd', "
     "'adam', 'adamw', 'adagrad', 'adadelta', 'rmsprop'."),
    ({"optim.learning_rate": 0.0},
     "optim.learning_rate=0.0 is out of range; allowed: (0.0, inf]."),
    ({"optim.learning_rate": -1.0},
     "optim.learning_rate=-1.0 is out of range; allowed: (0.0, inf]."),
    ({"optim.learning_rate": float("nan")},
     "optim.learning_rate=nan is out of range; allowed: (0.0, inf]."),
    ({"optim.schedule": "linear"}, "optim.schedule='linear' is not allowed; choose one "
     "of: 'constant', 'cosine', 'step'."),
    ({"optim.warmup_epochs": -1.0},
     "optim.warmup_epochs=-1.0 is out of range; allowed: [0.0, 2)."),
    ({"optim.warmup_epochs": 2.0},     # the whole run (train.epochs=2) would be warm-up
     "optim.warmup_epochs=2.0 is out of range; allowed: [0.0, 2)."),
    ({"optim.momentum": 1.0}, "optim.momentum=1.0 is out of range; allowed: [0.0, 1.0)."),
    ({"optim.momentum": -0.1}, "optim.momentum=-0.1 is out of range; allowed: [0.0, 1.0)."),
    ({"optim.b1": 1.0}, "optim.b1=1.0 is out of range; allowed: [0.0, 1.0)."),
    ({"optim.b2": 1.0}, "optim.b2=1.0 is out of range; allowed: [0.0, 1.0)."),
    ({"optim.b2": -0.5}, "optim.b2=-0.5 is out of range; allowed: [0.0, 1.0)."),
    ({"optim.rmsprop_momentum": 1.5},
     "optim.rmsprop_momentum=1.5 is out of range; allowed: [0.0, 1.0)."),
    ({"optim.nesterov": "yes"}, f"optim.nesterov='yes' is not allowed; {ONE_OF_BOOL}"),
    ({"optim.weight_decay": -1e-4},
     "optim.weight_decay=-0.0001 is out of range; allowed: [0.0, inf]."),
    ({"optim.grad_clip_norm": -1.0},
     "optim.grad_clip_norm=-1.0 is out of range; allowed: [0.0, inf]."),
    ({"optim.decay_factor": 0.0},
     "optim.decay_factor=0.0 is out of range; allowed: (0.0, 1.0]."),
    ({"optim.decay_factor": 1.5},
     "optim.decay_factor=1.5 is out of range; allowed: (0.0, 1.0]."),
    ({"optim.decay_at": (0.5, 1.0)},
     "optim.decay_at=1.0 is out of range; allowed: (0.0, 1.0)."),
    ({"optim.decay_at": (0.0, 0.5)},
     "optim.decay_at=0.0 is out of range; allowed: (0.0, 1.0)."),
    ({"optim.decay_at": (0.5, "a")},
     "optim.decay_at='a' is not a number; allowed: (0.0, 1.0)."),
    ({"optim.decay_at": (0.75, 0.5)}, "optim.decay_at=(0.75, 0.5) must be a "
     "non-decreasing tuple of fractions of training in (0, 1), e.g. (0.5, 0.75)."),
    ({"optim.decay_at": 0.5}, "optim.decay_at=0.5 must be a non-decreasing tuple of "
     "fractions of training in (0, 1), e.g. (0.5, 0.75)."),
    ({"optim.schedule": "step", "optim.warmup_epochs": 1.0},   # decay_at (0.5, 0.75)
     "optim.decay_at=0.5 falls inside the warm-up (optim.warmup_epochs=1.0 of "
     "train.epochs=2); allowed: (0.5, 1)."),
]
TRANSFORMS = [
    ({"train.input_component": "band"}, "train.input_component='band' is not allowed; "
     "choose one of: 'original', 'lfc', 'hfc'."),
    ({"train.input_component": "lfc", "train.input_radius": 40.0},
     "train.input_radius=40.0 is out of range; allowed: [1, 32]."),
    ({"train.input_radius": -3.0},   # checked though training on the originals
     "train.input_radius=-3.0 is out of range; allowed: [1, inf]."),
    ({"train.mixup_alpha": -1.0},
     "train.mixup_alpha=-1.0 is out of range; allowed: [0.0, 100.0]."),
    ({"eval.radii": ()}, "eval.radii=() must name at least one radius."),
    ({"eval.radii": (0.5, 8)}, "eval.radii=0.5 is out of range; allowed: [1, 32]."),
    ({"eval.radii": (4, 33)}, "eval.radii=33 is out of range; allowed: [1, 32]."),
    ({"data.name": "mnist", "eval.radii": (4, 29)},
     "eval.radii=29 is out of range; allowed: [1, 28]."),
    ({"eval.bands": ((8, 4),)}, "eval.bands: band (8, 4) must have 0 <= r1 < r2."),
    ({"eval.inclusive": "yes"}, f"eval.inclusive='yes' is not allowed; {ONE_OF_BOOL}"),
    ({"eval.rescale": "max"},
     "eval.rescale='max' is not allowed; choose one of: 'none', 'per_image_max'."),
    ({"eval.batch_size": 0}, "eval.batch_size=0 is out of range; allowed: [1, inf]."),
    ({"eval.train_subset": -1}, "eval.train_subset=-1 is out of range; allowed: [0, inf]."),
    ({"eval.evaluators": ("lfc_hfc", "fid")},
     "eval.evaluators=('lfc_hfc', 'fid'): 'fid' is not an evaluator; choose from: "
     "'lfc_hfc', 'clean', 'attack', 'smoothness'."),
]
ADV = [
    ({"adv.enabled": True, "adv.eps": 1.5}, "adv.eps=1.5 is out of range; allowed: [0.0, 1.0]."),
    ({"adv.eps": 1.5}, "adv.eps=1.5 is out of range; allowed: [0.0, 1.0]."),   # also off
    ({"adv.enabled": True, "adv.steps": -2}, "adv.steps=-2 is out of range; allowed: [0, inf]."),
    ({"adv.enabled": True, "adv.name": "cw"},
     "adv.name='cw' is not allowed; choose one of: 'fgsm', 'pgd', 'pgd_l2'."),
    ({"adv.restarts": 2}, "adv.restarts=2 needs adv.random_start=True; without it every "
     "restart gives the same image."),
    ({"adv.train_mode": 1.5}, f"adv.train_mode=1.5 is not allowed; {ONE_OF_BOOL}"),
    ({"eval.robust_eps": 1.5}, "eval.robust_eps=1.5 is out of range; allowed: [0.0, 1.0]."),
    ({"eval.robust_steps": -1}, "eval.robust_steps=-1 is out of range; allowed: [0, inf]."),
    ({"eval.robust_subset": -1},
     "eval.robust_subset=-1 is out of range; allowed: [0, inf]."),
]
CHECKPOINT = [
    ({"checkpoint.keep": 1}, "checkpoint.keep=1 is out of range; allowed: [2, inf]."),
    ({"checkpoint.every_steps": -1},
     "checkpoint.every_steps=-1 is out of range; allowed: [0, inf]."),
]


SECTIONS = {"devices": DEVICES, "data": DATA, "model": MODEL, "train": TRAIN,
            "optim": OPTIM, "input_and_eval": TRANSFORMS, "adv": ADV,
            "checkpoint": CHECKPOINT}


@pytest.mark.parametrize("overrides,message", [
    case for cases in SECTIONS.values() for case in _cases(cases)])
def test_each_section_refuses_a_bad_value_in_one_line(overrides, message):
  assert _refusal(overrides) == message


@pytest.mark.parametrize("overrides", [
    {},
    {"optim.name": "sgd", "optim.momentum": 0.0, "optim.nesterov": True},
    {"optim.schedule": "step", "optim.warmup_epochs": 0.5, "optim.decay_at": (0.3, 0.3)},
    {"optim.schedule": "cosine", "optim.warmup_epochs": 1.9, "optim.decay_at": ()},
    {"optim.b1": 0.0, "optim.b2": 0.0, "optim.decay_factor": 1.0, "optim.grad_clip_norm": 0.0},
    {"model.input_filter": "highpass", "model.filter_radius": 32.0, "eval.radii": (1, 32)},
    {"data.name": "npz", "eval.radii": (4, 100)},   # image size unknown: checked on load
])
def test_edges_of_the_allowed_ranges_pass(overrides):
  validation.check(_config(overrides))


def test_optimizer_builder_shares_the_section_check():
  """`make_optimizer`, public and called without `check` by the benchmarks, refuses
  with the same line."""
  config = _config({"optim.b2": 1.0})
  with pytest.raises(errors.HfcError) as raised:
    optimizers.make_optimizer(config.optim, 10, config.train.epochs)
  assert str(raised.value) == "optim.b2=1.0 is out of range; allowed: [0.0, 1.0)."


def _stand_in_dataset(size: int, num_train: int = 512):
  return types.SimpleNamespace(image_size=size,
                               x_train=np.zeros((num_train, size, size, 3), np.uint8))


def _mesh(devices: int):
  return types.SimpleNamespace(devices=np.empty(devices, object))


@pytest.mark.parametrize("overrides,size,devices,message", [
    ({"data.name": "npz", "eval.radii": (4, 21)}, 20, 8,
     "eval.radii=21 is out of range; allowed: [1, 20]."),
    ({"data.name": "npz", "model.input_filter": "lowpass", "model.filter_radius": 24.0},
     20, 8, "model.filter_radius=24.0 is out of range; allowed: [1, 20]."),
    ({"train.batch_size": 1024}, 32, 8,
     "train.batch_size=1024 exceeds the 512 training images."),
    ({"train.batch_size": 72}, 32, 16, "train.batch_size=72 must be a positive multiple "
     "of the number of devices (16); a training batch is split evenly over them."),
], ids=["npz_radius", "npz_filter_radius", "batch_vs_training_set", "batch_vs_mesh"])
def test_checks_with_the_data(overrides, size, devices, message):
  """What only the loaded data and the mesh tell, after `check` passed the config."""
  config = _config(overrides)
  validation.check(config)
  with pytest.raises(errors.HfcError) as raised:
    validation.check_with_data(config, _stand_in_dataset(size), _mesh(devices))
  assert str(raised.value) == message


def test_a_run_is_checked_once(monkeypatch):
  """`main` runs `check`; `train_and_evaluate`'s `check_with_data` then repeats none of
  it for the same config, but runs it all for a config never checked."""
  calls = []
  monkeypatch.setattr(optimizers, "check_config", calls.append)
  config = _config({"optim.learning_rate": 0.0123})   # a config no other test checked
  validation.check(config)
  validation.check_with_data(config, _stand_in_dataset(32), _mesh(8))
  assert calls == [config]
  unchecked = _config({"optim.learning_rate": 0.0234})
  validation.check_with_data(unchecked, _stand_in_dataset(32), _mesh(8))
  assert calls == [config, unchecked]
