"""hfc_jax.importing and `python -m hfc_jax.import_weights`: PyTorch state dicts into
workdirs that every analysis mode restores.

Tests marked `torch` build the published architectures in PyTorch (tests/torch_models.py)
with random weights and BatchNorm statistics, import their `state_dict()`, and compare
eval-mode logits on random [0, 1] images with PyTorch's; `.ci/run` installs the torch
extra and runs them. The rest need no PyTorch: state dicts with PyTorch's names written
as `.safetensors` from NumPy, checked parameter by parameter.
"""

import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from hfc_jax import analysis, defaults, errors, importing, main, models
from hfc_jax.analysis import common
from hfc_jax.importing import archs, convert, detect, importer
from hfc_jax.models.functional import Functional
from tests.conftest import ROOT

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

TOLERANCE = 1e-4   # max |logit difference| to PyTorch, float32
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _data(**fields) -> ml_collections.ConfigDict:
  """The data section of a config: the embedded set (10 classes, 32x32x3) by default."""
  data = defaults.get_config().data
  data.update(fields)
  return data


def _images(n=4, size=32, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def _restored_logits(workdir, images) -> np.ndarray:
  """Logits of the workdir's model as every analysis restores it (and runs it: jitted;
  one compile of the whole model costs less CPU than the eager op-by-op forward)."""
  trained = common.restore(str(workdir))
  return np.asarray(jax.jit(trained.functional.logits)(trained.params, trained.model_state,
                                                      images))


# ---------------------------------------------------------------- NumPy state dicts
def wrn_state_dict(depth=10, width=1, classes=10, seed=0) -> dict[str, np.ndarray]:
  """Random arrays under the keys and PyTorch shapes of RobustBench's
  WideResNet(depth, widen_factor=width) (OIHW convs, (out, in) linear, BN weight, bias,
  running_mean, running_var, num_batches_tracked), written out by hand."""
  rng = np.random.default_rng(seed)
  n, widths = (depth - 4) // 6, (16, 16 * width, 32 * width, 64 * width)
  out = {"conv1.weight": rng.normal(size=(16, 3, 3, 3))}

  def bn(name, c):
    out.update({f"{name}.weight": rng.uniform(0.5, 1.5, c), f"{name}.bias": rng.normal(size=c),
                f"{name}.running_mean": rng.normal(size=c),
                f"{name}.running_var": rng.uniform(0.5, 1.5, c),
                f"{name}.num_batches_tracked": np.array(7, np.int64)})

  for stage in (1, 2, 3):
    for i in range(n):
      c_in, c_out = (widths[stage - 1] if i == 0 else widths[stage]), widths[stage]
      p = f"block{stage}.layer.{i}"
      bn(f"{p}.bn1", c_in)
      out[f"{p}.conv1.weight"] = rng.normal(size=(c_out, c_in, 3, 3))
      bn(f"{p}.bn2", c_out)
      out[f"{p}.conv2.weight"] = rng.normal(size=(c_out, c_out, 3, 3))
      if c_in != c_out:
        out[f"{p}.convShortcut.weight"] = rng.normal(size=(c_out, c_in, 1, 1))
  bn("bn1", widths[3])
  out.update({"fc.weight": rng.normal(size=(classes, widths[3])),
              "fc.bias": rng.normal(size=classes)})
  return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


def save_safetensors(state: dict[str, np.ndarray], path) -> str:
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
  return str(path)


def expected_wrn_leaf(key: str, n: int) -> tuple[str, tuple] | None:
  """Where RobustBench WRN key `key` must land: (collection, Flax path), by the rules
  of models.wide_resnet written out independently of the importer's name map; None
  for the keys to drop."""
  leaf_of = {"weight": "kernel", "bias": "bias", "running_mean": "mean",
             "running_var": "var"}
  module_of = {"bn1": "norm1", "bn2": "norm2", "conv1": "conv1", "conv2": "conv2",
               "convShortcut": "shortcut"}
  *module, param = key.split(".")
  if param == "num_batches_tracked":
    return None
  collection = "model_state" if param.startswith("running_") else "params"
  leaf = "scale" if param == "weight" and ("bn" in module[-1]) else leaf_of[param]
  block = re.fullmatch(r"block(\d)\.layer\.(\d+)\.(\w+)", ".".join(module))
  if block:
    flat = (int(block.group(1)) - 1) * n + int(block.group(2))
    return collection, ("blocks", flat, module_of[block.group(3)], leaf)
  top = {"conv1": "first_conv", "bn1": "final_norm", "fc": "head"}[module[0]]
  return collection, (top, leaf)


# ---------------------------------------------------------------- without PyTorch
def test_safetensors_round_trip_puts_every_array_where_it_belongs(tmp_path):
  """Every parameter and statistic of a NumPy-written WRN-16-2 lands at its Flax path,
  transposed to HWIO / (in, out), and nothing else is in the checkpoint."""
  state = wrn_state_dict(depth=16, width=2, seed=1)
  path = save_safetensors(state, tmp_path / "wrn.safetensors")
  record = importing.import_weights(arch="wrn-16-2", weights=path,
                                    workdir=str(tmp_path / "wd"), data=_data())
  trained = common.restore(str(tmp_path / "wd"))
  trees = {"params": jax.device_get(trained.params),
           "model_state": jax.device_get(trained.model_state)}
  placed = 0
  for key, array in state.items():
    where = expected_wrn_leaf(key, n=2)
    if where is None:
      continue
    node = trees[where[0]]
    for part in where[1]:
      node = node[part]
    want = (array.transpose(2, 3, 1, 0) if array.ndim == 4 else
            array.T if array.ndim == 2 else array)
    np.testing.assert_array_equal(node, want, err_msg=key)
    placed += 1
  leaves = len(jax.tree.leaves(trees))
  assert placed == leaves == len(state) - sum(k.endswith("tracked") for k in state)
  assert trained.config.model.name == "wide_resnet"
  assert (trained.config.model.depth, trained.config.model.width_factor) == (16, 2)
  assert record["source"]["format"] == "safetensors"
  assert record["ignored_keys"] == {"num_batches_tracked": 13, "unused": []}


def test_provenance_names_the_file_its_hash_the_architecture_and_preprocessing(tmp_path):
  import hashlib  # pylint: disable=g-import-not-at-top
  path = save_safetensors({**wrn_state_dict(), "mu": np.array(CIFAR10_MEAN, np.float32),
                           "sigma": np.array(CIFAR10_STD, np.float32)},
                          tmp_path / "w.safetensors")
  importing.import_weights(arch="wrn-10-1", weights=path, workdir=str(tmp_path / "wd"),
                           data=_data())
  starts = [line for line in open(tmp_path / "wd" / "provenance.jsonl")]
  assert len(starts) == 1
  imported = __import__("json").loads(starts[0])["imported"]
  assert imported["source"]["path"] == path
  assert imported["source"]["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
  assert imported["arch"] == "wrn-10-1"
  assert imported["preprocessing"]["from"] == "the file's mu / sigma buffers"
  np.testing.assert_allclose(imported["preprocessing"]["input_mean"], CIFAR10_MEAN, rtol=1e-6)
  trained = common.restore(str(tmp_path / "wd"))
  np.testing.assert_allclose(trained.config.model.input_std, CIFAR10_STD, rtol=1e-6)
  assert sorted(os.listdir(tmp_path)) == ["w.safetensors", "wd"]   # no staging folder left


def test_standardisation_is_part_of_the_model(tmp_path):
  """The imported model maps [0, 1] images x to the logits of the same weights on
  (x - mu) / sigma: the buffers act inside the model."""
  state = wrn_state_dict(seed=3)
  plain = save_safetensors(state, tmp_path / "plain.safetensors")
  inside = save_safetensors({**state, "mu": np.array(CIFAR10_MEAN, np.float32),
                             "sigma": np.array(CIFAR10_STD, np.float32)},
                            tmp_path / "inside.safetensors")
  for name, path in (("plain", plain), ("inside", inside)):
    importing.import_weights(arch="wrn-10-1", weights=path, workdir=str(tmp_path / name),
                             data=_data())
  x = _images(seed=4)
  standardized = (x - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
  np.testing.assert_allclose(_restored_logits(tmp_path / "inside", x),
                             _restored_logits(tmp_path / "plain",
                                              standardized.astype(np.float32)),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,model", [
    ("wrn-28-10", {"name": "wide_resnet", "depth": 28, "width_factor": 10}),
    ("wrn-70-16", {"name": "wide_resnet", "depth": 70, "width_factor": 16}),
    ("preact_resnet18", {"name": "preact_resnet18"}),
    ("resnet18", {"name": "resnet18_torch"}),
    ("torchvision_resnet50", {"name": "torchvision_resnet50"}),
])
def test_every_leaf_of_every_architecture_is_mapped_once(arch, model):
  """The name maps reach every parameter and statistic of the full-size models exactly
  once (`convert.targets` raises otherwise); counts as published."""
  spec = archs.parse(arch)
  assert {k: v for k, v in archs.model_fields(spec).items() if v} == model
  classes = 1000 if arch.startswith("torchvision") else 10
  _, params, model_state = convert.abstract_split(spec, classes, 3)
  targets = convert.targets(spec.name_map(), params, model_state)
  counts = {"wrn-28-10": 36_479_194, "wrn-70-16": 266_796_506, "preact_resnet18": 11_171_146,
            "resnet18": 11_173_962, "torchvision_resnet50": 25_557_032}
  assert sum(int(np.prod(t.shape)) for t in targets.values()
             if t.collection == "params") == counts[arch]
  assert len(targets) == len(jax.tree.leaves((params, model_state)))


def _refused(tmp_path, message, state=None, arch="wrn-10-1", **kwargs):
  """Imports `state` (default: a WRN-10-1's) as `arch`: one-line HfcError containing
  `message`, and nothing written."""
  path = save_safetensors(wrn_state_dict() if state is None else state,
                          tmp_path / "bad.safetensors")
  before = sorted(os.listdir(tmp_path))
  kwargs = {"data": _data(), **kwargs}
  with pytest.raises(errors.HfcError) as raised:
    importing.import_weights(arch=arch, weights=path, workdir=str(tmp_path / "wd"), **kwargs)
  text = str(raised.value)
  assert message in text and "\n" not in text, text
  assert sorted(os.listdir(tmp_path)) == before
  return text


def test_unknown_key_is_named_with_the_expected_one(tmp_path):
  state = wrn_state_dict()
  state["block2.layer.0.convShortcutt.weight"] = state.pop("block2.layer.0.convShortcut.weight")
  _refused(tmp_path, "unknown key 'block2.layer.0.convShortcutt.weight' (expected e.g. "
           "'block2.layer.0.convShortcut.weight'; 1 unknown, 1 missing)", state)


def test_missing_key_is_named_with_its_shape(tmp_path):
  state = wrn_state_dict()
  del state["block3.layer.0.bn2.running_var"]
  _refused(tmp_path, "missing key 'block3.layer.0.bn2.running_var' of shape (64,)", state)


def test_shape_mismatch_names_both_shapes(tmp_path):
  state = wrn_state_dict()
  state["block2.layer.0.conv2.weight"] = np.zeros((32, 32, 5, 5), np.float32)
  _refused(tmp_path, "'block2.layer.0.conv2.weight' has shape (32, 32, 5, 5), expected "
           "(32, 32, 3, 3)", state)


def test_another_architecture_is_refused_with_the_one_the_file_fits(tmp_path):
  text = _refused(tmp_path, "as --arch=wrn-28-10: 'block", arch="wrn-28-10")
  # the first key (in the file's order) whose width is not 10 times wider
  assert re.search(r"'block\d\.layer\.0\.[a-z0-9]+\.\w+' has shape \((16|32|64)[,)].*, "
                   r"expected \((160|320|640)[,)]", text), text
  assert text.endswith("; the file fits --arch=wrn-10-1.")
  text = _refused(tmp_path, "as --arch=preact_resnet18: missing key 'linear.weight' (the "
                  "classifier's weight; the file has e.g. 'fc.weight')", arch="preact_resnet18")
  assert text.endswith("; the file fits --arch=wrn-10-1.")


@pytest.mark.parametrize("content,message", [
    (b"not a safetensors file", "is not a readable safetensors file"),
    (b"", "is not a readable safetensors file"),
])
def test_unreadable_file_is_one_line(tmp_path, content, message):
  path = tmp_path / "broken.safetensors"
  path.write_bytes(content)
  with pytest.raises(errors.HfcError, match=message):
    importing.import_weights(arch="wrn-10-1", weights=str(path),
                             workdir=str(tmp_path / "wd"), data=_data())
  assert not (tmp_path / "wd").exists()


def test_pt_file_without_pytorch_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` raises ImportError
  path = tmp_path / "model.pt"
  path.write_bytes(b"whatever")
  with pytest.raises(errors.HfcError, match=r"needs PyTorch \(pip install -e '\.\[torch\]'\)"):
    importing.import_weights(arch="wrn-10-1", weights=str(path),
                             workdir=str(tmp_path / "wd"), data=_data())


@pytest.mark.parametrize("kwargs,message", [
    ({"data": _data(name="cifar100")}, "the weights have 10 classes, data.name='cifar100' "
     "has 100"),
    ({"data": _data(name="mnist")}, "the weights have 3 input channels, data.name='mnist' has 1"),
    ({"data": _data(name="imagenet")}, "data.name='imagenet' is not allowed"),
    ({"input_mean": (0.5, 0.5, 0.5)}, "--input_mean and --input_std go together"),
    ({"input_mean": (0.5,), "input_std": (0.0,)}, "model.input_std[0]=0.0 is out of range"),
    ({"input_mean": (0.5, 0.5), "input_std": (0.2, 0.2)}, "model.input_mean=(0.5, 0.5) has 2 "
     "values; the images have 3 channels"),
])
def test_bad_data_or_standardisation_is_refused(tmp_path, kwargs, message):
  _refused(tmp_path, message, **kwargs)


def test_buffers_and_a_different_command_line_standardisation_are_refused(tmp_path):
  state = {**wrn_state_dict(), "mu": np.full(3, 0.5, np.float32),
           "sigma": np.full(3, 0.5, np.float32)}
  _refused(tmp_path, "the file standardises its inputs itself (mu/sigma = (0.5, 0.5, 0.5) / "
           "(0.5, 0.5, 0.5)); drop --input_mean and --input_std", state,
           input_mean=(0.4, 0.4, 0.4), input_std=(0.2, 0.2, 0.2))


def test_standardisation_comes_from_the_file_then_the_command_then_the_architecture():
  spec = archs.parse("torchvision_resnet18")
  no_buffers = convert.Prepared({})
  assert importer.standardization(no_buffers, spec, None, None) == (
      archs.IMAGENET_MEAN, archs.IMAGENET_STD,
      "torchvision's ImageNet mean and std (the architecture's default)")
  assert importer.standardization(no_buffers, spec, (), ()) == (
      (), (), "--input_mean / --input_std")   # explicitly none
  assert importer.standardization(no_buffers, archs.parse("wrn-28-10"), None, None) == (
      (), (), "none: the weights take [0, 1] images")
  buffers = convert.Prepared({}, (0.5,) * 3, (0.25,) * 3, ("normalize.mean", "normalize.std"))
  for given in ((None, None), ((0.5,) * 3, (0.25,) * 3)):   # the same values may be repeated
    assert importer.standardization(buffers, spec, *given) == (
        (0.5,) * 3, (0.25,) * 3, "the file's normalize.mean / normalize.std buffers")


def test_command_line_lists_of_numbers():
  from hfc_jax import import_weights  # pylint: disable=g-import-not-at-top  (defines no flags)
  assert import_weights.floats("input_mean", ["0.5", "1e-1"]) == (0.5, 0.1)
  assert import_weights.floats("input_mean", []) == ()
  assert import_weights.floats("input_mean", None) is None
  with pytest.raises(errors.HfcError, match=r"--input_std='0.2,x' must be numbers"):
    import_weights.floats("input_std", ["0.2", "x"])


def test_a_workdir_that_holds_files_is_refused(tmp_path):
  (tmp_path / "wd").mkdir()
  (tmp_path / "wd" / "metrics.jsonl").write_text("{}\n")
  path = save_safetensors(wrn_state_dict(), tmp_path / "w.safetensors")
  with pytest.raises(errors.HfcError, match="exists and is not empty; import into a new"):
    importing.import_weights(arch="wrn-10-1", weights=path, workdir=str(tmp_path / "wd"),
                             data=_data())
  assert os.listdir(tmp_path / "wd") == ["metrics.jsonl"]


def test_training_mode_refuses_an_imported_workdir(tmp_path):
  """Training would find no optimiser state to resume from (and set the checkpoint
  aside): main refuses in one line and leaves the workdir as it is."""
  path = save_safetensors(wrn_state_dict(), tmp_path / "w.safetensors")
  importing.import_weights(arch="wrn-10-1", weights=path, workdir=str(tmp_path / "wd"),
                           data=_data())
  before = sorted(os.listdir(tmp_path / "wd"))
  config = defaults.get_config()
  config.model.update(name="wide_resnet", depth=10, width_factor=1, norm="batchnorm")
  with pytest.raises(errors.HfcError, match="holds weights imported with python -m "
                     r"hfc_jax.import_weights, not a training run"):
    main.run(config, str(tmp_path / "wd"))
  assert sorted(os.listdir(tmp_path / "wd")) == before


@pytest.mark.parametrize("arch,message", [
    ("wrn-12-10", "depth D = 6n + 4"), ("vgg16", "--arch='vgg16' is not known"),
    ("resnet50", "--arch='resnet50' is not known; choose one of: preact_resnet18, resnet18"),
])
def test_unknown_architectures_are_refused(arch, message):
  with pytest.raises(errors.HfcError, match=re.escape(message)):
    archs.parse(arch)


def test_detect_reads_depth_and_width_off_a_wide_resnet():
  state = wrn_state_dict(depth=22, width=3)
  assert detect.wrn_guess(state) == "wrn-22-3"
  assert detect.detect(state) == "wrn-22-3"
  assert detect.detect(state, exclude="wrn-22-3") is None
  assert detect.detect({"conv.weight": np.zeros((2, 2, 3, 3))}) is None


def test_command_refuses_a_bad_file_with_one_line_and_exit_status_2(tmp_path):
  """The command's exit status and its single stderr line (no traceback); the
  workdir is not created."""
  state = wrn_state_dict()
  state["head.weight"] = state.pop("fc.weight")
  path = save_safetensors(state, tmp_path / "w.safetensors")
  result = subprocess.run(
      [sys.executable, "-m", "hfc_jax.import_weights", "--arch=wrn-10-1", f"--weights={path}",
       f"--workdir={tmp_path / 'wd'}", "--data.name=embedded"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith("hfc_jax: error: ") and "'fc.weight'" in lines[0], lines[0]
  assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------- every analysis mode
# Each mode at its smallest: one batch of 16 images, one attack (PGD with one step: on
# the CPU every step is written out, and compile time grows with them), one kernel
# variant, no low-pass defence. The test is that every mode runs on an imported model.
MODE_SETTINGS = {
    "robust_eval": {"robust_eval.num_images": 16, "robust_eval.batch_size": 16,
                    "robust_eval.attacks": ("pgd",),
                    "robust_eval.eps": (8 / 255,), "robust_eval.pgd_steps": 1,
                    "robust_eval.masking_images": 0, "robust_eval.min_eps_search_steps": 1,
                    "robust_eval.min_eps_pgd_steps": 1, "robust_eval.defence_radii": ()},
    "figure2": {"figure2.num_images": 16, "figure2.batch_size": 16, "figure2.radii": (8,)},
    "kernels": {"kernels.num_images": 16, "kernels.batch_size": 16, "kernels.rhos": (0.0, 1.0),
                "kernels.cutoffs": (1.0,), "kernels.eps": (8 / 255,), "kernels.pgd_steps": 1,
                "kernels.attacks": ("pgd",), "kernels.variants": ("eq3",),
                "kernels.masking_images": 0},
    "fourier_heatmap": {"fourier_heatmap.num_images": 16, "fourier_heatmap.batch_size": 16,
                        "fourier_heatmap.max_radius": 2.0},
    "perturbation_spectrum": {"perturbation_spectrum.num_images": 16,
                              "perturbation_spectrum.batch_size": 16,
                              "perturbation_spectrum.pgd_steps": 1,
                              "perturbation_spectrum.attacks": ("fgsm",)},
    "bands": {"bands.num_images": 16, "bands.batch_size": 16,
              "bands.bands": ((0, 4), (4, 23))},
}


@pytest.mark.slow
def test_every_analysis_mode_runs_on_an_imported_model(tmp_path):
  """`python -m hfc_jax.import_weights` (a WRN-10-1 standardising inside), then each
  `--config.mode` of `hfc_jax.analysis.MODES` on the workdir, as main runs it."""
  state = {**wrn_state_dict(seed=5), "mu": np.array(CIFAR10_MEAN, np.float32),
           "sigma": np.array(CIFAR10_STD, np.float32)}
  path = save_safetensors(state, tmp_path / "w.safetensors")
  workdir = tmp_path / "wd"
  result = subprocess.run(
      [sys.executable, "-m", "hfc_jax.import_weights", "--arch=wrn-10-1", f"--weights={path}",
       f"--workdir={workdir}", "--data.name=embedded", "--data.num_train=256",
       "--data.num_test=64"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith(f"hfc_jax: imported {path} (sha256 ")
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "provenance.jsonl"]
  assert set(MODE_SETTINGS) == set(analysis.MODES)
  for mode, settings in MODE_SETTINGS.items():
    config = defaults.get_config()
    config.mode = mode
    for key, value in settings.items():
      section, field = key.split(".")
      config[section][field] = value
    main.run(config, str(workdir))
    out = workdir / mode
    assert "provenance.json" in os.listdir(out), mode
    assert any(name.endswith(".json") and name != "provenance.json"
               for name in os.listdir(out)), (mode, os.listdir(out))


# ---------------------------------------------------------------- against PyTorch
def _torch_case(name):
  """(arch, PyTorch model, import kwargs, how the state dict is saved) of a case."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_models as tm  # pylint: disable=g-import-not-at-top
  if name == "wrn-10-1":          # stage 1 keeps its width: no shortcut conv there
    return "wrn-10-1", tm.WideResNet(10, 1), {}, None
  if name == "wrn-16-4+sub_block1":   # shortcut convs in every stage, an unused copy
    return "wrn-16-4", tm.WideResNet(16, 4, sub_block1=True), {}, None
  if name == "wrn-28-10":
    return "wrn-28-10", tm.WideResNet(28, 10), {}, None
  if name == "preact_resnet18+mu_sigma":
    return ("preact_resnet18", tm.Standardized(tm.PreActResNet18(), CIFAR10_MEAN,
                                               CIFAR10_STD), {}, None)
  if name == "resnet18+DataParallel":   # 'module.' keys, nested under 'state_dict'
    return ("resnet18", tm.CifarResNet18(), {},
            lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3})
  if name == "torchvision_resnet18":   # ImageNet standardisation by default
    net = tm.torchvision_resnet18(num_classes=10)
    return ("torchvision_resnet18", tm.Standardized(net, archs.IMAGENET_MEAN,
                                                    archs.IMAGENET_STD),
            {}, lambda sd: {k: v for k, v in sd.items() if k not in ("mu", "sigma")})
  if name == "torchvision_resnet50+normalize_model":   # RobustBench's ImageNet wrapper
    net = tm.torchvision_resnet50(num_classes=10)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    model = tm.Standardized(net, mean, std)

    def wrapped(sd):
      out = {"normalize.mean": torch.tensor(mean).view(1, 3, 1, 1),
             "normalize.std": torch.tensor(std).view(1, 3, 1, 1)}
      out.update({f"model.{k}": v for k, v in sd.items() if k not in ("mu", "sigma")})
      return out
    return "torchvision_resnet50", model, {}, wrapped
  raise ValueError(name)


def _compare_with_pytorch(case, tmp_path, n=6) -> float:
  """Imports the case's random PyTorch model and returns max |logit difference| on n
  random images."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_models as tm  # pylint: disable=g-import-not-at-top
  arch, model, kwargs, save_as = _torch_case(case)
  tm.randomize(model, seed=sum(map(ord, case)))
  state = model.state_dict()
  path = str(tmp_path / "model.pt")
  torch.save(save_as(state) if save_as else state, path)
  importing.import_weights(arch=arch, weights=path, workdir=str(tmp_path / "wd"),
                           data=_data(), **kwargs)
  x = _images(n=n, seed=7)
  reference = tm.logits(model, x)
  assert np.abs(reference).max() > 0.1   # logits of order 1: the tolerance means something
  return float(np.abs(_restored_logits(tmp_path / "wd", x) - reference).max())


# resnet18+DataParallel: test_same_padding_resnet18_would_not_match_pytorch (one import).
FAST_CASES = ("wrn-10-1", "wrn-16-4+sub_block1", "preact_resnet18+mu_sigma",
              "torchvision_resnet18")
SLOW_CASES = ("wrn-28-10", "torchvision_resnet50+normalize_model")


@pytest.mark.torch
@pytest.mark.parametrize("case", FAST_CASES)
def test_logits_equal_pytorch(case, tmp_path):
  assert _compare_with_pytorch(case, tmp_path) <= TOLERANCE


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES)
def test_logits_equal_pytorch_full_size(case, tmp_path):
  # Two images: a full-size forward pass costs seconds in each framework.
  assert _compare_with_pytorch(case, tmp_path, n=2) <= TOLERANCE


@pytest.mark.torch
def test_same_padding_resnet18_would_not_match_pytorch(tmp_path):
  """A DataParallel resnet18 checkpoint ('module.' keys under 'state_dict') imports as
  `resnet18_torch` with PyTorch's logits; and why resnet18_torch exists: the same
  weights in `resnet18`, whose stride-2 convs pad by XLA's SAME rule, give other
  logits than PyTorch's `padding=1`."""
  assert _compare_with_pytorch("resnet18+DataParallel", tmp_path) <= TOLERANCE
  trained = common.restore(str(tmp_path / "wd"))
  same = nnx.eval_shape(lambda: models.create("resnet18", num_classes=10, in_channels=3,
                                              norm="batchnorm"))
  functional, _, _ = Functional.split(same)
  x = _images(n=6, seed=7)
  torch_padded = jax.jit(trained.functional.logits)(trained.params, trained.model_state, x)
  same_padded = jax.jit(functional.logits)(trained.params, trained.model_state, x)
  assert np.abs(np.asarray(torch_padded) - np.asarray(same_padded)).max() > 1e-2


@pytest.mark.torch
@pytest.mark.parametrize("arch,build", [
    ("wrn-28-10", lambda tm: tm.WideResNet(28, 10)),
    ("wrn-34-10", lambda tm: tm.WideResNet(34, 10)),
    ("wrn-70-16", lambda tm: tm.WideResNet(70, 16)),
    ("preact_resnet18", lambda tm: tm.PreActResNet18()),
    ("resnet18", lambda tm: tm.CifarResNet18()),
    ("torchvision_resnet18", lambda tm: tm.torchvision_resnet18()),
    ("torchvision_resnet50", lambda tm: tm.torchvision_resnet50()),
])
def test_full_size_keys_and_shapes_equal_pytorch(arch, build):
  """Structure at full size, without allocating it: the PyTorch model on the meta device
  has exactly the keys and shapes that the architecture's import expects."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_models as tm  # pylint: disable=g-import-not-at-top
  with torch.device("meta"):
    state = build(tm).state_dict()
  spec = archs.parse(arch)
  prepared = convert.prepare({k: np.empty(tuple(v.shape), np.float32) if v.is_floating_point()
                              else np.empty(tuple(v.shape), np.int64)
                              for k, v in state.items()}, spec)
  classes, channels = convert.head_and_channels(prepared, spec, arch)
  _, params, model_state = convert.abstract_split(spec, classes, channels)
  convert.check(prepared, convert.targets(spec.name_map(), params, model_state), arch)


@pytest.mark.torch
def test_a_pickled_module_is_refused_not_run(tmp_path):
  """torch.load(weights_only=True) refuses a whole pickled nn.Module: one line that says
  to save the state dict."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_models as tm  # pylint: disable=g-import-not-at-top
  path = tmp_path / "module.pt"
  torch.save(tm.WideResNet(10, 1), str(path))
  with pytest.raises(errors.HfcError, match=r"cannot be read by torch.load\(weights_only=True\)"
                     r" \(.*\); save the model's state dict"):
    importing.import_weights(arch="wrn-10-1", weights=str(path),
                             workdir=str(tmp_path / "wd"), data=_data())
  assert not (tmp_path / "wd").exists()
