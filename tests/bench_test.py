"""`python -m hfc_jax.bench --tiny`: every section runs and reports sane numbers."""

import importlib
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from hfc_jax import errors
from hfc_jax.benchmarks import common, driver, torch_reference, train_steps
from hfc_jax.benchmarks.common import Row
from hfc_jax.models import input_conv

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

# One path per number the docs and the issue ask for.
EXPECTED = [
    ("meta", "peak_host_memory_mb"), ("meta", "device_count"), ("meta", "total_s"),
    ("train", "matmul_peak", "gflop_per_s", "median"),
    ("train", "models", "small_cnn", "compile_s"),
    ("train", "models", "small_cnn", "step_s", "max"),
    ("train", "models", "small_cnn", "images_per_s", "min"),
    ("train", "models", "small_cnn", "gflop_per_image"),
    ("train", "models", "small_cnn", "peak_fraction"),
    ("pgd", "small_cnn", "pgd_7", "ratio"), ("pgd", "small_cnn", "pgd_7", "compile_s"),
    ("eval", "small_cnn", "ratio"), ("eval", "small_cnn", "all_variants", "compile_s"),
    ("eval", "small_cnn", "clean_only", "images_per_s", "median"),
    ("split", "ratio"), ("split", "max_abs_diff"), ("split", "compile_s"),
    ("split", "numpy", "images_per_s", "median"),
    ("input", "plain", "ratio"), ("input", "augment", "images_per_s", "median"),
    ("input", "small_cnn_step", "images_per_s", "median"),
    ("pgd", "small_cnn", "plain", "step_s", "median"), ("pgd", "small_cnn", "pgd_7", "warmup_s"),
    ("scaling", "meshes", "1", "speedup"), ("scaling", "meshes", "8", "images_per_s", "median"),
    ("checkpoint", "size_mb"), ("checkpoint", "save_s", "median"),
    ("checkpoint", "restore_s", "max"), ("checkpoint", "first_save_s"),
    ("autoattack", "apgd_over_pgd"), ("autoattack", "square_over_forward"),
    ("autoattack", "apgd_iteration_s"), ("autoattack", "square_query_s"),
    ("autoattack", "whole", "total_s"), ("autoattack", "whole", "images"),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("bench") / "bench.json")
  return driver.run(tiny=True, models=("small_cnn",), json_path=path), path


def _numbers(tree, path=()):
  """Yields (path, value) for every int or float leaf (bools excluded)."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _numbers(value, path + (key,))
  elif isinstance(tree, (list, tuple)):
    for i, value in enumerate(tree):
      yield from _numbers(value, path + (i,))
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield path, tree


@pytest.mark.slow
def test_every_expected_number_is_reported(tiny_run):
  results, _ = tiny_run
  assert set(results) == {"meta", *driver.SECTION_NAMES}
  for path in EXPECTED:
    node = results
    for key in path:
      assert key in node, path
      node = node[key]
    assert isinstance(node, (int, float)), path


@pytest.mark.slow
def test_every_number_is_positive_and_finite(tiny_run):
  results, _ = tiny_run
  measured = {k: v for k, v in results.items() if k != "meta"}
  measured["meta"] = {k: v for k, v in results["meta"].items() if k != "options"}
  bad = [(p, v) for p, v in _numbers(measured) if not (math.isfinite(v) and v > 0)]
  assert not bad
  assert results["split"]["max_abs_diff"] < 1e-4
  assert results["input"]["tfds_cifar10"]["status"] == "not prepared"
  assert results["train"]["torch_resnet18"] is None  # resnet18 was not benchmarked
  assert results["train"]["models"]["small_cnn"]["flops_source"] == "jaxpr (conv + matmul)"
  whole = results["autoattack"]["whole"]
  assert whole["images"] == 16 and whole["version"] == "fast"
  assert sum(int(v) for v in whole["broken_by"].values()) + int(
      whole["robust"].split("/")[0]) == 16


def _conv(x, w, stride=1):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_jaxpr_flops_hand_counted():
  """2 FLOPs per multiply-add of every conv and matmul, gradients included."""
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  a, b = jnp.ones((5, 7)), jnp.ones((7, 2))
  conv = 2 * 2 * 8 * 8 * 4 * 27                   # N H W Cout x (3 x 3 x Cin)
  assert common.jaxpr_flops(lambda x, w, a, b: (_conv(x, w), a @ b), x, w, a, b) == (
      conv + 2 * 5 * 2 * 7)
  grads = jax.grad(lambda x, w: _conv(x, w).sum(), argnums=(0, 1))
  assert common.jaxpr_flops(grads, x, w) == 3 * conv   # forward, input and kernel grads
  # Stride 2: a quarter of the outputs; its input gradient skips the inserted zeros.
  strided = jax.grad(lambda x, w: _conv(x, w, 2).sum(), argnums=(0, 1))
  assert common.jaxpr_flops(strided, x, w) == 3 * conv / 4
  assert common.jaxpr_flops(jax.jit(grads), x, w) == 3 * conv   # through a nested jit


def test_jaxpr_flops_of_the_image_conv_count_what_runs():
  """models.input_conv's custom JVP: a gradient for the kernel only counts the forward
  and kernel-gradient convolutions, as for lax's convolution (no image gradient)."""
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  conv = 2 * 2 * 8 * 8 * 4 * 27
  image_conv = lambda x, w: input_conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert common.jaxpr_flops(jax.grad(lambda w: image_conv(x, w).sum()), w) == 2 * conv
  both = jax.grad(lambda x, w: image_conv(x, w).sum(), argnums=(0, 1))
  assert common.jaxpr_flops(both, x, w) == 3 * conv   # + the image gradient's matmul


@pytest.mark.slow
def test_json_file_holds_every_number(tiny_run):
  results, path = tiny_run
  with open(path) as f:
    assert json.load(f) == json.loads(json.dumps(results))


def test_command_line_sets_eight_cpu_devices_and_writes_json(tmp_path):
  path = tmp_path / "split.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  subprocess.run([sys.executable, "-m", "hfc_jax.bench", "--tiny", "--sections=split",
                  f"--json={path}"], check=True, env=env, capture_output=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  results = json.loads(path.read_text())
  assert set(results) == {"meta", "split"}
  assert results["meta"]["device_count"] == 8
  assert results["split"]["ratio"] > 0


def test_the_sections_helpers_in_process(tmp_path):
  """The bench's sections in the fast tier (the whole tiny bench above is slow): what
  the checkpoint, train, pgd and autoattack sections compute around their timings (the
  size on disk, the PyTorch check, the meshes, the model and its contenders)."""
  from hfc_jax import sharding  # pylint: disable=g-import-not-at-top
  from hfc_jax.benchmarks import autoattack, host_io, train_steps  # pylint: disable=g-import-not-at-top
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.bin").write_bytes(b"x" * 300_000)
  (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 200_000)
  assert host_io._dir_mb(str(tmp_path)) == pytest.approx(0.5)
  _, status = torch_reference.import_torch(common.Options(models=("small_cnn",)))
  assert status in ("torch is not installed", "not run: resnet18 is not in --models")
  assert train_steps._pgd_device_counts(16, tiny=False) == [8, 1]  # the mesh, and 1 on a CPU
  assert train_steps._pgd_device_counts(16, tiny=True) == [8]
  mesh = sharding.make_mesh(8)
  functional, variables, config = autoattack._model(mesh)
  assert config.model.name == "small_cnn"
  contenders = autoattack._contenders(functional, variables, mesh, 16, 2, 4)
  assert sorted(contenders) == ["apgd_ce", "forward", "pgd", "square"]
  assert contenders["forward"]().shape == (16, 10)


def test_bad_values_fail_before_any_work():
  with pytest.raises(errors.HfcError, match="--sections"):
    driver.run(["train", "nope"])
  with pytest.raises(errors.HfcError, match="--models"):
    driver.run(["split"], models=("vgg",))
  with pytest.raises(errors.HfcError, match="--steps"):
    driver.run(["split"], steps=0)
  with pytest.raises(errors.HfcError, match="--autoattack_images"):
    driver.run(["autoattack"], autoattack_images=0)


def test_table_has_fixed_width_columns():
  rows = [Row("train", "step", {"median": 0.5, "min": 0.25, "max": 1.0}, "s"),
          Row("pgd", "ratio", 6.1, "x", "<= 6.5: ok")]
  lines = driver.format_table(rows).splitlines()
  assert lines[0].split() == ["section", "item", "value", "min", "-", "max", "unit", "target"]
  assert "0.2500 - 1.000" in lines[2] and lines[3].endswith("<= 6.5: ok")
  unit = lines[0].index("unit")
  assert lines[2][unit] == "s" and lines[3][unit] == "x"


@pytest.mark.slow
def test_resnet18_over_pytorch_is_a_target_row(monkeypatch, capsys):
  """With PyTorch present, ours / PyTorch's images per second is reported against >= 1.
  A stand-in "PyTorch" step that takes 1 s per batch of 16 on a fake clock (the bench's
  clock, moved on 1 s by each call) makes the ratio known. What is under test is the
  report: our side's step is small_cnn's under resnet18's name (a ResNet-18 train step
  costs 20 CPU-s to compile here; models_test builds the model)."""
  ahead = [0.0]
  real_clock = time.perf_counter
  monkeypatch.setattr(common.time, "perf_counter", lambda: real_clock() + ahead[0])
  slow = lambda: ahead.__setitem__(0, ahead[0] + 1.0)
  build = train_steps.train_step
  monkeypatch.setattr(train_steps, "train_step", lambda opts, cache, name, batch, **kw:
                      build(opts, cache, "small_cnn", batch, **kw))
  monkeypatch.setattr(torch_reference, "import_torch", lambda opts: (object(), "stand-in"))
  monkeypatch.setattr(torch_reference, "torch_timings", lambda torch, batch, opts: {
      "torch_slow": common.Timing(slow, batch, opts.steps)})
  results = driver.run(("train",), tiny=True, models=("resnet18",))
  r = results["train"]["models"]["resnet18"]
  torch_ips = results["train"]["torch_resnet18"]["torch_slow"]["images_per_s"]["median"]
  assert 15.0 < torch_ips < 16.0                  # 16 images per ~1 s
  assert r["vs_torch"]["torch_slow"] == pytest.approx(r["images_per_s"]["median"] / torch_ips)
  verdict = "ok" if r["vs_torch"]["torch_slow"] >= 1 else "MISSED"
  assert f">= 1: {verdict}" in capsys.readouterr().out


# The shipped config each bench recipe stands for (benchmarks/common.py, RECIPES).
RECIPE_CONFIGS = {"small_cnn": "default", "resnet18": "cifar10_resnet18",
                  "preact_resnet32": "cifar10_resnet32_vanilla"}


@pytest.mark.parametrize("name", sorted(RECIPE_CONFIGS))
def test_bench_recipe_trains_what_the_shipped_config_trains(name):
  """The bench carries copies of three configs' recipes (so it runs from an installed
  package); they must not drift from the configs users train with."""
  shipped = importlib.import_module(f"configs.{RECIPE_CONFIGS[name]}").get_config()
  bench_config = common.model_config(name, "float32")
  assert bench_config.model.to_dict() == shipped.model.to_dict()
  assert bench_config.optim.to_dict() == shipped.optim.to_dict()
  assert bench_config.train.batch_size == shipped.train.batch_size
  assert common.Options().batch(name) == shipped.train.batch_size


def test_every_bench_model_has_a_recipe_config():
  assert set(RECIPE_CONFIGS) == set(common.RECIPES) == set(driver.MODEL_NAMES)
