"""The models in PyTorch layouts (wide_resnet, preact_resnet18, resnet18_torch, the
torchvision ResNets): parameter counts against published ones, shapes, PyTorch's
padding, input standardisation and the model.depth / width_factor fields. Their logits
against PyTorch: tests/import_weights_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hfc_jax import defaults, errors, models
from hfc_jax.models import layers
from tests import models_test

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

PUBLISHED = ("wide_resnet", "preact_resnet18", "resnet18_torch", "torchvision_resnet18",
             "torchvision_resnet50")


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _params(name, classes=10, **kwargs):
  """(params, BatchNorm statistics) of the model's shapes; nothing else is state."""
  model = nnx.eval_shape(lambda: models.create(name, num_classes=classes, in_channels=3,
                                               norm="batchnorm", **kwargs))
  _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert _count(rest) == 0
  return params, stats


def test_every_model_is_tested_here_or_in_models_test():
  assert set(models.MODELS) == set(models_test.PARAM_FORMULAS) | set(PUBLISHED)
  assert set(models.MODELS) == set(models.DEFAULT_WIDTHS)


@pytest.mark.parametrize("name,kwargs,classes,count", [
    # RobustBench's model cards and torchvision's docs
    ("wide_resnet", {}, 10, 36_479_194),                                  # WRN-28-10
    ("wide_resnet", {"depth": 34}, 10, 46_160_474),                       # WRN-34-10
    ("wide_resnet", {"depth": 70, "width_factor": 16}, 10, 266_796_506),  # WRN-70-16
    ("preact_resnet18", {}, 10, 11_171_146),
    ("resnet18_torch", {}, 10, 11_173_962),
    ("torchvision_resnet18", {}, 1000, 11_689_512),
    ("torchvision_resnet50", {}, 1000, 25_557_032),
])
def test_full_size_parameter_counts_are_the_published_ones(name, kwargs, classes, count):
  params, stats = _params(name, classes, **kwargs)
  assert _count(params) == count
  norm_params = sum(int(np.prod(v.shape)) for path, v in jax.tree_util.tree_leaves_with_path(
      params) if "norm" in jax.tree_util.keystr(path))
  assert _count(stats) == norm_params   # mean and var beside every scale and bias


# The widths give most kernels the shapes of WRN-10-1's or WRN-10-2's (each distinct
# shape costs compiles).
@pytest.mark.parametrize("name,kwargs,kernel,norm", [
    ("wide_resnet", {"depth": 10, "width_factor": 1}, (3, 3, 1, 16), "batchnorm"),
    ("wide_resnet", {"depth": 10, "width_factor": 2}, (3, 3, 1, 16), "paper_bn"),
    ("preact_resnet18", {"widths": (16, 16, 32, 32)}, (3, 3, 1, 16), "batchnorm"),
    ("resnet18_torch", {"widths": (16, 16, 32, 32)}, (3, 3, 1, 16), "none"),
    ("torchvision_resnet18", {"widths": (16, 16, 32, 32)}, (7, 7, 1, 16), "batchnorm"),
    ("torchvision_resnet50", {"widths": (16, 16, 32, 32)}, (7, 7, 1, 16), "paper_bn"),
])
def test_small_versions_run_on_any_image_size(name, kwargs, kernel, norm):
  model = models.create(name, num_classes=7, in_channels=1, norm=norm, **kwargs)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)), jnp.float32)
  logits = model(x, train=False)
  assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
  assert models.first_conv_kernel(model).shape == kernel


def test_wide_resnet_depth_and_width_factor():
  """WRN-D-K: (D - 4) / 6 blocks per stage, stages 16K, 32K, 64K wide; a 1x1 shortcut
  conv exactly where a block changes the width."""
  model = nnx.eval_shape(lambda: models.create("wide_resnet", num_classes=10, in_channels=3,
                                               depth=16, width_factor=2))
  assert len(model.blocks) == 3 * 2
  assert [b.conv2.kernel.shape[-1] for b in model.blocks] == [32, 32, 64, 64, 128, 128]
  assert [hasattr(b, "shortcut") for b in model.blocks] == [True, False] * 3
  narrow = nnx.eval_shape(lambda: models.create("wide_resnet", num_classes=10, in_channels=3,
                                                depth=10, width_factor=1))
  assert [hasattr(b, "shortcut") for b in narrow.blocks] == [False, True, True]


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "wide_resnet", "depth": 12}, "model.depth=12: a wide_resnet has depth 6n + 4"),
    ({"name": "wide_resnet", "depth": 4}, "model.depth=4: a wide_resnet has depth 6n + 4"),
    ({"name": "wide_resnet", "width_factor": -1}, "model.width_factor=-1 is out of range"),
    ({"name": "small_cnn", "depth": 28}, "model.depth=28: model.name='small_cnn' has a fixed "
     "depth and width factor; only wide_resnet takes them"),
    ({"name": "torchvision_resnet50", "width_factor": 2}, "model.width_factor=2"),
    ({"name": "small_cnn", "input_mean": (0.5,), "input_std": ()},
     "model.input_mean=(0.5,) and model.input_std=() must have the same length"),
    ({"name": "small_cnn", "input_mean": (0.5,) * 3, "input_std": (0.2, 0.2, -1.0)},
     "model.input_std[2]=-1.0 is out of range; allowed: (0, inf]"),
])
def test_bad_depth_width_and_standardisation_raise(kwargs, message):
  name = kwargs.pop("name")
  with pytest.raises(errors.HfcError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
    models.create(name, num_classes=10, in_channels=3, **kwargs)


def test_validation_names_the_config_fields():
  """`check_config` (run by main before any data is loaded) knows the new fields."""
  config = defaults.get_config()
  config.model.depth = 28
  with pytest.raises(errors.HfcError, match=r"model\.depth=28: model.name='small_cnn'"):
    models.check_config(config)
  config.model.name = "wide_resnet"
  models.check_config(config)


@pytest.mark.parametrize("name", ["small_cnn", "wide_resnet", "torchvision_resnet18"])
def test_standardisation_inside_equals_standardised_input(name):
  """A model with input_mean / input_std maps x to what the same parameters give
  (x - mean) / std without them; and it adds no variables."""
  # Small versions, cheap to initialise: the published ones have every kernel shape but
  # the first conv's in test_small_versions_run_on_any_image_size (each new shape costs
  # compiles), and at 28x28 the same activation shapes past it.
  kw = {"num_classes": 7, "in_channels": 3, "norm": "batchnorm",
        **{"small_cnn": {"widths": (8, 8, 8, 8)},
           "wide_resnet": {"depth": 10, "width_factor": 1},
           "torchvision_resnet18": {"widths": (16, 16, 32, 32)}}[name]}
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  inside = models.create(name, input_mean=mean, input_std=std, **kw)
  plain = models.create(name, **kw)
  nnx.update(plain, nnx.state(inside))
  assert _count(nnx.state(inside)) == _count(nnx.state(plain))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 28, 28, 3)), jnp.float32)
  standardized = (x - jnp.asarray(mean)) / jnp.asarray(std)
  np.testing.assert_allclose(inside(x, train=False), plain(standardized, train=False),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(inside(x, train=False), plain(x, train=False), atol=1e-3)


def test_torch_padding_pads_both_sides_at_stride_2():
  """'torch' pads a stride-2 3x3 conv by one on every side (PyTorch's padding=1): output
  pixel (0, 0) reads input rows and columns -1..1; XLA's 'same' reads 0..2."""
  assert layers.conv_padding("torch", 3) == ((1, 1), (1, 1))
  assert layers.conv_padding("torch", 7) == ((3, 3), (3, 3))
  assert layers.conv_padding("same", 3) == "SAME"
  x = jnp.arange(36.0).reshape(1, 6, 6, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)   # reads the top-left tap
  out = {}
  for kind in layers.PADDINGS:
    conv = nnx.Conv(1, 1, (3, 3), strides=2, padding=layers.conv_padding(kind, 3),
                    use_bias=False, rngs=nnx.Rngs(0))
    conv.kernel[...] = kernel
    out[kind] = np.asarray(conv(x))[0, :, :, 0]
  np.testing.assert_array_equal(out["torch"], [[0, 0, 0], [0, 7, 9], [0, 19, 21]])
  np.testing.assert_array_equal(out["same"], [[0, 2, 4], [12, 14, 16], [24, 26, 28]])
  with pytest.raises(errors.HfcError, match="padding='valid' is not allowed"):
    layers.conv_padding("valid", 3)
