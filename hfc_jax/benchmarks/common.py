"""What every section of `python -m hfc_jax.bench` shares: options, table rows, timing
in turns, FLOP counts, and the compiled train steps several sections reuse.

Units: times in seconds (`*_s`), throughput in images per second (`images_per_s`),
work in GFLOP, sizes in MB (10^6 bytes). Every timed thing is compiled (or called once)
first and that time is reported on its own (`compile_s`); then one untimed warm-up call
(`warmup_s`), then `repeats` rounds of `steps` calls, each call ended by
`jax.block_until_ready`. A timed value is {'median', 'min', 'max'} over the rounds of
the per-call mean.

Things that are compared are timed in turns (`time_together`): each round runs the
`steps` calls of every contender, one contender after another, so a ratio sees the
same machine load on both sides. `cache` maps (model, batch, devices, adversary) to a
compiled train step (`train_step`), so the train, pgd, input and scaling sections
compile each step once.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from hfc_jax import defaults, optimizers, sharding, train

# What each model's train step is measured with: its training recipe's model, norm,
# optimiser and batch (configs/default.py, cifar10_resnet18.py and
# cifar10_resnet32_vanilla.py), held here so that the bench runs from an installed
# package, without the repository's configs/ (tests/bench_test.py keeps them equal).
RECIPES = {
    "small_cnn": {},
    "resnet18": {"model": {"name": "resnet18", "norm": "batchnorm"},
                 "optim": {"name": "sgd", "learning_rate": 0.1, "nesterov": True,
                           "schedule": "cosine", "weight_decay": 5e-4}},
    "preact_resnet32": {"model": {"name": "preact_resnet32", "norm": "none"},
                        "optim": {"name": "adam", "learning_rate": 1e-4}},
}
RADII = (4, 8, 12, 16)        # LFC/HFC radii of the eval and split sections
TARGETS = {"pgd_7": 6.5, "eval": 9.5, "split": 3.0, "input": 5.0,  # see docs/performance.md
           "torch": 1.0}  # ResNet-18 img/s over PyTorch's, same batch, in turns


class Sizes(NamedTuple):
  """Problem sizes of the sections that do not follow the model configs."""
  eval_batch: int           # images per evaluation call
  split_images: int         # images per split pass
  split_batch: int          # images per split call
  input_images: int         # embedded training images per input-pipeline epoch
  checkpoint_model: str     # whose train state (with Adam) is saved and restored
  matmul_size: int          # side of the square float32 matmul on CPU (8192 bf16 elsewhere)
  pgd_steps: tuple[int, ...]   # attack steps k of the PGD-k train steps
  mesh_sizes: tuple[int, ...]  # device counts of the scaling section


FULL = Sizes(500, 10_000, 128, 10_000, "resnet18", 4096, (7, 10), (1, 2, 4, 8))
TINY = Sizes(32, 256, 64, 512, "small_cnn", 512, (7,), (1, 8))


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run; see the flags of driver.py."""
  models: tuple[str, ...] = ("small_cnn", "preact_resnet32", "resnet18")
  pgd_eval_models: tuple[str, ...] = ("small_cnn",)   # of the pgd and eval sections
  batch_size: int = 0       # 0: each model's config
  dtype: str = "float32"
  steps: int = 5
  repeats: int = 3
  tiny: bool = False
  tfds_data_dir: str | None = None
  autoattack_images: int = 1000   # test images of the whole AutoAttack (autoattack section)

  @property
  def sizes(self) -> Sizes:
    return TINY if self.tiny else FULL

  def batch(self, model: str) -> int:
    """The global train batch of `model`: the flag, 16 when tiny, else its config's."""
    if self.batch_size:
      return self.batch_size
    return 16 if self.tiny else model_config(model, "float32").train.batch_size


class Row(NamedTuple):
  """One line of the printed table; `value` is a stats dict, a number or a string."""
  section: str
  item: str
  value: Any
  unit: str
  target: str = ""


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------
def stats(values) -> dict[str, float]:
  """{'median', 'min', 'max'} of a list of numbers."""
  return {"median": float(np.median(values)), "min": float(np.min(values)),
          "max": float(np.max(values))}


class Timing(NamedTuple):
  """One contender of `time_together`."""
  call: Callable[[], Any]   # runs once; returns what to block on
  images: int               # images one call processes
  steps: int                # calls per repeat


def time_together(timings: dict[str, Timing], repeats: int) -> dict[str, dict]:
  """Times several calls in turns, so that their ratios see the same machine load
  (other work on a shared machine comes and goes).

  Each call first runs once untimed (`warmup_s`; for a first jitted call, its compile
  time). Then each of `repeats` rounds runs every call `steps` times in a row, each
  ended by `jax.block_until_ready`. Returns name -> {'warmup_s', 'step_s',
  'images_per_s'}, the last two stats over the rounds of the per-call mean.
  """
  out, seconds = {}, {name: [] for name in timings}
  for name, t in timings.items():
    t0 = time.perf_counter()
    jax.block_until_ready(t.call())
    out[name] = {"warmup_s": time.perf_counter() - t0}
  for _ in range(repeats):
    for name, t in timings.items():
      t0 = time.perf_counter()
      for _ in range(t.steps):
        jax.block_until_ready(t.call())
      seconds[name].append((time.perf_counter() - t0) / t.steps)
  for name, t in timings.items():
    out[name].update(step_s=stats(seconds[name]),
                     images_per_s=stats([t.images / x for x in seconds[name]]))
  return out


def compile_timed(jitted, *args):
  """(lowered, compiled executable, seconds spent lowering and compiling)."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  return lowered, compiled, time.perf_counter() - t0


def _flops(stage) -> float:
  """XLA's FLOP count of a Lowered or Compiled stage; 0 when it has none."""
  try:
    cost = stage.cost_analysis()
  except (NotImplementedError, RuntimeError, ValueError):
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float((cost or {}).get("flops", 0.0))


def _eqn_flops(eqn) -> float:
  """Multiply-add FLOPs (2 per MAC) of one convolution or dot_general equation."""
  out = math.prod(eqn.outvars[0].aval.shape)
  if eqn.primitive.name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec   # (out feature, in feature, spatial...)
    # An input dilation (the input gradient of a strided conv) inserts zeros: only
    # 1 / prod(lhs_dilation) of the kernel taps meet real inputs.
    dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2.0 * out * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:]) / dilation
  if eqn.primitive.name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * out * math.prod(lhs[d] for d in contract)
  return 0.0


def _jaxpr_flops(jaxpr) -> float:
  """Sums `_eqn_flops` over a jaxpr and the jaxprs nested in its equations (jit,
  custom VJP, loops counted once)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          total += _jaxpr_flops(sub)
  return total


def jaxpr_flops(fn, *args) -> float:
  """Convolution and matmul FLOPs of one call of `fn(*args)`, read off its jaxpr.

  The same count on every backend (it is the model's arithmetic, not what a compiler
  made of it): elementwise work is left out, as model-FLOPs-utilisation figures do.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def program_flops(jitted, args, lowered, devices: int) -> tuple[float, str]:
  """FLOPs of one call of a whole (all-device) program, and which count they come from.

  The jaxpr count (convolutions and matmuls of the global program) is used on every
  backend. XLA's cost analysis is not: the compiled program's count is one device's
  share and, on GPU, misses the cuDNN convolutions (an H200 ResNet-18 step read 0.021
  instead of 2.9 GFLOP per image), and the lowered HLO has no cost analysis on GPU.
  The lowered-HLO count, where there is one, is the fallback.
  """
  flops = jaxpr_flops(jitted, *args)
  if flops > 0:
    return flops, "jaxpr (conv + matmul)"
  del devices
  return _flops(lowered), "lowered HLO"


def mesh_size(batch: int) -> int:
  """The most devices that split `batch` evenly."""
  return max(n for n in range(1, jax.device_count() + 1) if batch % n == 0)


def random_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(batch, 32, 32, 3) uint8 images and (batch,) int32 labels in [0, 10)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  return images, rng.integers(0, 10, batch).astype(np.int32)


def ratio_row(section: str, item: str, value: float, target: float, above: bool) -> Row:
  """A row for a ratio with its target (`above`: the ratio must reach the target)."""
  ok = value >= target if above else value <= target
  sign = ">=" if above else "<="
  return Row(section, item, value, "x", f"{sign} {target:g}: {'ok' if ok else 'MISSED'}")


def step_rows(section: str, item: str, r: dict) -> list[Row]:
  """Compile (when known), time per call and throughput of one timed thing."""
  rows = [Row(section, f"{item} compile", r["compile_s"], "s")] if "compile_s" in r else []
  return rows + [Row(section, f"{item} step", r["step_s"], "s"),
                 Row(section, f"{item} throughput", r["images_per_s"], "img/s")]


# ---------------------------------------------------------------------------
# Train steps (plain and adversarial)
# ---------------------------------------------------------------------------
def model_config(name: str, dtype: str):
  """The defaults with `name`'s training recipe (`RECIPES`) and compute `dtype`."""
  config = defaults.complete(RECIPES[name])
  config.model.dtype = dtype
  return config


@dataclasses.dataclass
class TrainStep:
  """A compiled, state-donating train step bound to one fixed on-device batch;
  calling it runs one step."""
  compiled: Any
  state: Any
  images: jax.Array
  labels: jax.Array
  info: dict                # batch_size, devices, compile_s (+ gflop_per_image)

  def __call__(self):
    self.state, _ = self.compiled(self.state, self.images, self.labels)
    return self.state

  def timing(self, opts: Options) -> Timing:
    return Timing(self, self.info["batch_size"], opts.steps)


def _build_train_step(name: str, batch: int, devices: int, adversary, dtype: str) -> TrainStep:
  """Compiles train.make_train_step for `name` (its config's optimiser) on `devices`."""
  config = model_config(name, dtype)
  mesh = sharding.make_mesh(devices)
  tx = optimizers.make_optimizer(config.optim, 100, config.train.epochs)
  functional, state = train.create_train_state(
      train.create_model(config, 10, 3, 32), tx, config.seed, mesh)
  step = train.make_train_step(functional, tx, mesh, rescale=config.data.rescale,
                               adversary=adversary)
  images, labels = sharding.put_batch(mesh, *random_batch(batch))
  lowered, compiled, compile_s = compile_timed(step, state, images, labels)
  info = {"batch_size": batch, "devices": devices, "compile_s": compile_s}
  if adversary is None:
    flops, info["flops_source"] = program_flops(step, (state, images, labels), lowered,
                                                devices)
    info["hlo_gflop_per_image"] = _flops(lowered) / batch / 1e9
    info["gflop_per_image"] = flops / batch / 1e9
  return TrainStep(compiled, state, images, labels, info)


def train_step(opts: Options, cache: dict, name: str, batch: int, devices: int | None = None,
               adversary=None) -> TrainStep:
  """The compiled train step of `name` (built once per cache): by default on the most
  devices that split `batch`."""
  devices = devices or mesh_size(batch)
  key = (name, batch, devices, adversary)
  if key not in cache:
    cache[key] = _build_train_step(name, batch, devices, adversary, opts.dtype)
  return cache[key]
