"""The sections of `python -m hfc_jax.bench`: each one times one hot path.

A section is `fn(opts, cache) -> (result dict, table rows)`. Units: times in seconds
(`*_s`), throughput in images per second (`images_per_s`), work in GFLOP, sizes in MB
(10^6 bytes). Every timed thing is compiled (or called once) first and that time is
reported on its own (`compile_s`); then one untimed warm-up call (`warmup_s`), then
`repeats` rounds of `steps` calls, each call ended by `jax.block_until_ready`. A timed
value is {'median', 'min', 'max'} over the rounds of the per-call mean.

Things that are compared are timed in turns (`time_together`): each round runs the
`steps` calls of every contender, one contender after another, so a ratio sees the
same machine load on both sides. `cache` maps
(model, batch, devices, adversary) to a compiled train step, so the train, pgd, input
and scaling sections compile each step once.
"""

import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from configs import cifar10_resnet18, cifar10_resnet32_vanilla, default
from hfc_jax import checkpointing, errors, evaluate, frequency, optimizers, sharding, train
from hfc_jax.data import pipeline, synthetic, tfds_source
from hfc_jax.models.functional import Functional

CONFIGS = {"small_cnn": default.get_config, "resnet18": cifar10_resnet18.get_config,
           "preact_resnet32": cifar10_resnet32_vanilla.get_config}
RADII = (4, 8, 12, 16)        # LFC/HFC radii of the eval and split sections
TARGETS = {"pgd_7": 6.5, "eval": 9.5, "split": 3.0, "input": 5.0}  # see docs/performance.md


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
  """What to run; see the flags of bench.py."""
  models: tuple[str, ...] = ("small_cnn", "preact_resnet32", "resnet18")
  pgd_eval_models: tuple[str, ...] = ("small_cnn",)   # of the pgd and eval sections
  batch_size: int = 0       # 0: each model's config
  dtype: str = "float32"
  steps: int = 5
  repeats: int = 3
  tiny: bool = False
  tfds_data_dir: str | None = None

  @property
  def sizes(self) -> Sizes:
    return TINY if self.tiny else FULL

  def batch(self, model: str) -> int:
    """The global train batch of `model`: the flag, 16 when tiny, else its config's."""
    if self.batch_size:
      return self.batch_size
    return 16 if self.tiny else CONFIGS[model]().train.batch_size


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


def program_flops(lowered, compiled, devices: int) -> tuple[float, str]:
  """FLOPs of one call of a whole (all-device) program, and which count they come from.

  XLA's cost analysis of the lowered, unoptimised HLO counts every convolution of the
  global program. The compiled program's count is one device's share and, on GPU,
  misses the cuDNN convolutions it calls (an H200 ResNet-18 step read 0.015 instead
  of 2.9 GFLOP per image), so it is only the fallback. Loops are counted once.
  """
  flops = _flops(lowered)
  if flops > 0:
    return flops, "lowered HLO"
  return _flops(compiled) * devices, "compiled HLO x devices"


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
  """The config that trains `name` (default.py, cifar10_resnet18.py or
  cifar10_resnet32_vanilla.py) with the compute dtype set."""
  config = CONFIGS[name]()
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
      train.create_model(config, 10, 3), tx, config.seed, mesh)
  step = train.make_train_step(functional, tx, mesh, rescale=config.data.rescale,
                               adversary=adversary)
  images, labels = sharding.put_batch(mesh, *random_batch(batch))
  lowered, compiled, compile_s = compile_timed(step, state, images, labels)
  info = {"batch_size": batch, "devices": devices, "compile_s": compile_s}
  if adversary is None:
    flops, info["flops_source"] = program_flops(lowered, compiled, devices)
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


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------
def matmul_peak(opts: Options) -> dict:
  """GFLOP/s of one jitted square matmul: float32 4096 on CPU, bfloat16 8192 elsewhere."""
  on_cpu = jax.default_backend() == "cpu"
  n = opts.sizes.matmul_size if on_cpu else 8192
  dtype = jnp.float32 if on_cpu else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  _, compiled, compile_s = compile_timed(jax.jit(jnp.matmul), a, a)
  r = time_together({"matmul": Timing(lambda: compiled(a, a), 1, 2)}, opts.repeats)["matmul"]
  gflop = 2 * n ** 3 / 1e9
  return {"size": n, "dtype": jnp.dtype(dtype).name, "compile_s": compile_s,
          "step_s": r["step_s"],
          "gflop_per_s": {k: gflop / r["step_s"][j]
                          for k, j in (("median", "median"), ("min", "max"), ("max", "min"))}}


def _flop_rows(name: str, r: dict) -> list[Row]:
  return [Row("train", f"{name} work", r["gflop_per_image"], "GFLOP/img"),
          Row("train", f"{name} achieved", r["gflop_per_s"], "GFLOP/s"),
          Row("train", f"{name} share of peak", 100 * r["peak_fraction"], "%")]


def train_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """The plain train step of every model and its FLOP rate; PyTorch's ResNet-18 step is
  timed in turns with ours."""
  peak = matmul_peak(opts)
  out, torch_results = {"matmul_peak": peak, "models": {}}, {}
  rows = [Row("train", f"matmul peak {peak['size']} {peak['dtype']}", peak["gflop_per_s"],
              "GFLOP/s")]
  torch, out["torch_status"] = _import_torch(opts)
  for name in opts.models:
    step = train_step(opts, cache, name, opts.batch(name))
    timings = {name: step.timing(opts)}
    if name == "resnet18" and torch is not None:
      timings.update(torch_timings(torch, step.info["batch_size"], opts))
    measured = time_together(timings, opts.repeats)
    r = {**step.info, **measured.pop(name)}
    r["gflop_per_s"] = r["gflop_per_image"] * r["images_per_s"]["median"]
    r["peak_fraction"] = r["gflop_per_s"] / peak["gflop_per_s"]["median"]
    out["models"][name] = r
    rows += step_rows("train", f"{name} b{r['batch_size']} d{r['devices']}", r)
    rows += _flop_rows(name, r)
    for layout, t in measured.items():
      rows += step_rows("train", f"{layout} b{r['batch_size']}", t)
    torch_results.update(measured)
  out["torch_resnet18"] = torch_results or None
  if not torch_results:
    rows.append(Row("train", f"torch resnet18: {out['torch_status']}", "null", ""))
  return out, rows


# ---------------------------------------------------------------------------
# train: the PyTorch ResNet-18 side by side
# ---------------------------------------------------------------------------
def _import_torch(opts: Options):
  """(torch or None, a sentence saying whether and why the comparison runs)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional)
  except ImportError:
    return None, "torch is not installed"
  if "resnet18" not in opts.models:
    return torch, "not run: resnet18 is not in --models"
  return torch, (f"torch {torch.__version__} on {_torch_device(torch)}, timed in turns "
                 "with the JAX resnet18 step")


def _torch_device(torch) -> str:
  """'cuda' when JAX runs on a GPU and torch sees one (compare like with like), else 'cpu'."""
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_resnet18(torch):
  """CIFAR ResNet-18 (hfc_jax.models.resnet's layout) in PyTorch, 10 classes."""
  nn = torch.nn

  def conv_bn(cin, cout, kernel, stride):
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                *conv_bn(cout, cout, 3, 1))
      self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                       if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.shortcut(x))

  layers, cin = [*conv_bn(3, 64, 3, 1), nn.ReLU()], 64
  for stage, width in enumerate((64, 128, 256, 512)):
    for i in range(2):
      layers.append(Block(cin, width, 2 if stage and not i else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
  return nn.Sequential(*layers)


def _torch_step(torch, layout: str, batch: int, device: str) -> Callable[[], None]:
  """One SGD (momentum 0.9, Nesterov, weight decay 5e-4) step on a fixed uint8 batch
  already on `device`; it returns once the device has finished."""
  fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
  model = _torch_resnet18(torch).to(device=device, memory_format=fmt).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  images, labels = random_batch(batch)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device).contiguous(memory_format=fmt)
  y = torch.from_numpy(labels).long().to(device)

  def step():
    loss = torch.nn.functional.cross_entropy(model(x.float() / 255), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()
  return step


def torch_timings(torch, batch: int, opts: Options) -> dict[str, Timing]:
  """PyTorch ResNet-18 train steps in channels_last and NCHW layouts, on the GPU when
  JAX uses one, else on every CPU core."""
  torch.set_num_threads(os.cpu_count())
  device = _torch_device(torch)
  return {f"torch_{layout}": Timing(_torch_step(torch, layout, batch, device), batch,
                                    opts.steps)
          for layout in ("channels_last", "nchw")}


# ---------------------------------------------------------------------------
# pgd
# ---------------------------------------------------------------------------
def pgd_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """PGD-k adversarial train steps (eps 8/255, step 2/255, random start), timed in
  turns with the plain step of the same model, batch and mesh."""
  out, rows = {}, []
  for name in opts.pgd_eval_models:
    batch = opts.batch(name)
    steps = {"plain": train_step(opts, cache, name, batch)}
    for k in opts.sizes.pgd_steps:
      adversary = train.Adversary("pgd", eps=8 / 255, step_size=2 / 255, steps=k,
                                  random_start=True)
      steps[f"pgd_{k}"] = train_step(opts, cache, name, batch, adversary=adversary)
    measured = time_together({key: s.timing(opts) for key, s in steps.items()}, opts.repeats)
    out[name] = {key: {**s.info, **measured[key]} for key, s in steps.items()}
    plain_s = measured["plain"]["step_s"]["median"]
    rows += step_rows("pgd", f"{name} plain b{batch}", measured["plain"])
    for k in opts.sizes.pgd_steps:
      r = out[name][f"pgd_{k}"]
      r["ratio"] = r["step_s"]["median"] / plain_s
      rows += step_rows("pgd", f"{name} pgd-{k} b{batch}", r)
      target = TARGETS.get(f"pgd_{k}")
      rows.append(ratio_row("pgd", f"{name} pgd-{k} / plain step", r["ratio"], target, False)
                  if target else Row("pgd", f"{name} pgd-{k} / plain step", r["ratio"], "x"))
  return out, rows


# ---------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------
def _eval_args(name: str, dtype: str, batch: int, mesh):
  """(functional, config, eval_fn arguments) for a fresh `name` model and a random batch."""
  config = model_config(name, dtype)
  functional, params, model_state = Functional.split(train.create_model(config, 10, 3))
  variables = sharding.put_replicated((params, model_state), mesh)
  images, labels = random_batch(batch)
  batch_arrays = sharding.put_batch(mesh, images, labels, np.ones(batch, np.float32))
  return functional, config, (*variables, *batch_arrays)


def _compile_eval(functional, mesh, config, radii, args) -> tuple[Any, float]:
  """evaluate.make_eval_fn at `radii` (() scores the clean images only), compiled."""
  fn = evaluate.make_eval_fn(functional.logits, mesh, radii=radii,
                             inclusive=config.eval.inclusive, rescale=config.eval.rescale)
  return compile_timed(fn, *args)[1:]


def eval_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """evaluate.make_eval_fn with radii (4, 8, 12, 16) in turns with radii=()."""
  del cache
  batch, out, rows = opts.sizes.eval_batch, {}, []
  mesh = sharding.make_mesh(mesh_size(batch))
  for name in opts.pgd_eval_models:
    functional, config, args = _eval_args(name, opts.dtype, batch, mesh)
    compiled = {"all_variants": _compile_eval(functional, mesh, config, RADII, args),
                "clean_only": _compile_eval(functional, mesh, config, (), args)}
    r = time_together({key: Timing(functools.partial(fn, *args), batch, opts.steps)
                       for key, (fn, _) in compiled.items()}, opts.repeats)
    for key, (_, compile_s) in compiled.items():
      r[key]["compile_s"] = compile_s
    ratio = r["all_variants"]["step_s"]["median"] / r["clean_only"]["step_s"]["median"]
    out[name] = {"batch_size": batch, "devices": mesh.size, "radii": list(RADII),
                 "variants": len(evaluate.variant_names(RADII)), **r, "ratio": ratio}
    rows += step_rows("eval", f"{name} 9 variants b{batch} d{mesh.size}", r["all_variants"])
    rows += step_rows("eval", f"{name} clean only b{batch} d{mesh.size}", r["clean_only"])
    rows.append(ratio_row("eval", f"{name} 9 variants / clean", ratio, TARGETS["eval"], False))
  return out, rows


# ---------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------
def numpy_split(x: np.ndarray, radii) -> tuple[np.ndarray, np.ndarray]:
  """The paper's recipe in plain NumPy: fft2 over (H, W), fftshift, disc mask, ifftshift,
  ifft2, real part; one inverse FFT per component. (R, N, H, W, C) float32 each."""
  axes = (1, 2)
  spectrum = np.fft.fftshift(np.fft.fft2(x, axes=axes), axes=axes)
  lfc, hfc = [], []
  for r in radii:
    mask = frequency.disc_mask(x.shape[1], x.shape[2], r)[None, :, :, None]
    for parts, m in ((lfc, mask), (hfc, 1 - mask)):
      parts.append(np.fft.ifft2(np.fft.ifftshift(spectrum * m, axes=axes), axes=axes).real)
  return np.stack(lfc).astype(np.float32), np.stack(hfc).astype(np.float32)


def split_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """Jitted frequency.split_many in turns with `numpy_split`; a call is one pass over
  all the images, batch by batch."""
  del cache
  n, size = opts.sizes.split_images, opts.sizes.split_batch
  images = np.random.default_rng(0).uniform(size=(n, 32, 32, 3)).astype(np.float32)
  batches = [images[i:i + size] for i in range(0, n, size)]
  split = jax.jit(functools.partial(frequency.split_many, radii=RADII))
  t0 = time.perf_counter()
  jax.block_until_ready(split(batches[0]))
  compile_s = time.perf_counter() - t0
  measured = time_together({
      "jnp": Timing(lambda: [split(b) for b in batches], n, 1),
      "numpy": Timing(lambda: [numpy_split(b, RADII) for b in batches], n, 1)}, opts.repeats)
  diff = max(float(np.max(np.abs(np.asarray(a) - b)))
             for a, b in zip(split(batches[0]), numpy_split(batches[0], RADII)))
  ratio = measured["jnp"]["images_per_s"]["median"] / measured["numpy"]["images_per_s"]["median"]
  rows = [Row("split", f"jnp split_many {n} img b{size}", measured["jnp"]["images_per_s"],
              "img/s"),
          Row("split", "jnp split_many first call", compile_s, "s"),
          Row("split", f"numpy reference {n} img b{size}", measured["numpy"]["images_per_s"],
              "img/s"),
          ratio_row("split", "jnp / numpy", ratio, TARGETS["split"], True),
          Row("split", "max |jnp - numpy|", diff, "")]
  return {"images": n, "batch_size": size, "radii": list(RADII), "compile_s": compile_s,
          **measured, "ratio": ratio, "max_abs_diff": diff}, rows


# ---------------------------------------------------------------------------
# input
# ---------------------------------------------------------------------------
def tfds_read(data_dir: str | None) -> dict:
  """Seconds to read CIFAR-10's training split from `data_dir`, if it is prepared there."""
  if not data_dir:
    return {"status": "not prepared", "detail": "no --tfds_data_dir given"}
  try:
    builder = tfds_source.prepared_builder("cifar10", data_dir)
  except errors.HfcError as e:
    return {"status": "not prepared", "detail": str(e)}
  t0 = time.perf_counter()
  x, _ = tfds_source.read_split(builder, "train")
  seconds = time.perf_counter() - t0
  return {"status": "read", "images": len(x), "read_s": seconds, "images_per_s": len(x) / seconds}


def _epoch_call(data: dict, batch: int, augment: bool) -> Callable[[], None]:
  """One epoch of pipeline.train_batches over `data`, batches discarded."""
  def epoch():
    for _ in pipeline.train_batches(data["x_train"], data["y_train"], batch_size=batch,
                                    seed=0, epoch=0, augment=augment):
      pass
  return epoch


def input_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """pipeline.train_batches over the embedded set, in turns with the small_cnn step."""
  n, batch = opts.sizes.input_images, opts.batch("small_cnn")
  data = synthetic.generate(num_train=n, num_test=10)
  used = pipeline.num_train_steps(n, batch) * batch
  step = train_step(opts, cache, "small_cnn", batch)
  measured = time_together({"plain": Timing(_epoch_call(data, batch, False), used, 1),
                            "augment": Timing(_epoch_call(data, batch, True), used, 1),
                            "small_cnn_step": step.timing(opts)}, opts.repeats)
  step_rate = measured["small_cnn_step"]["images_per_s"]["median"]
  out, rows = {"images": n, "batch_size": batch, **measured}, []
  rows += step_rows("input", f"small_cnn step b{batch}", measured["small_cnn_step"])[1:]
  for key in ("plain", "augment"):
    out[key]["ratio"] = out[key]["images_per_s"]["median"] / step_rate
    rows += [Row("input", f"train_batches {key} b{batch}", out[key]["images_per_s"], "img/s"),
             ratio_row("input", f"{key} / small_cnn step", out[key]["ratio"], TARGETS["input"],
                       True)]
  out["tfds_cifar10"] = tfds_read(opts.tfds_data_dir)
  tfds_value = out["tfds_cifar10"].get("images_per_s", out["tfds_cifar10"]["status"])
  rows.append(Row("input", "tfds cifar10 read", tfds_value, "img/s"))
  return out, rows


# ---------------------------------------------------------------------------
# scaling
# ---------------------------------------------------------------------------
def scaling_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """The small_cnn train step at one global batch on meshes of 1, 2, 4 and 8 devices,
  timed in turns."""
  batch = opts.batch("small_cnn")
  counts = [n for n in opts.sizes.mesh_sizes if n <= jax.device_count() and batch % n == 0]
  steps = {str(n): train_step(opts, cache, "small_cnn", batch, devices=n) for n in counts}
  measured = time_together({n: s.timing(opts) for n, s in steps.items()}, opts.repeats)
  base = measured[str(counts[0])]["images_per_s"]["median"]
  out, rows = {"batch_size": batch, "meshes": {}}, []
  for n, s in steps.items():
    r = {**s.info, **measured[n]}
    r["speedup"] = r["images_per_s"]["median"] / base
    out["meshes"][n] = r
    rows += [Row("scaling", f"small_cnn b{batch} on {n} dev", r["images_per_s"], "img/s"),
             Row("scaling", f"speed-up {n} dev vs {counts[0]}", r["speedup"], "x")]
  return out, rows


# ---------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------
def _dir_mb(path: str) -> float:
  """Total size of the files under `path`, MB."""
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
             for f in files) / 1e6


def _adam_state(name: str, dtype: str):
  """A replicated train state of `name` with Adam's optimiser state, every float
  perturbed by noise so that, like a trained state's, it does not compress (fresh
  Adam moments are zeros, which Orbax stores in almost no space)."""
  config = model_config(name, dtype)
  config.optim.name = "adam"
  tx = optimizers.make_optimizer(config.optim, 100, 1)
  mesh = sharding.make_mesh()
  state = train.create_train_state(train.create_model(config, 10, 3), tx, config.seed, mesh)[1]
  rng = np.random.default_rng(0)
  noisy = lambda x: (np.asarray(x) + rng.normal(0, 1e-3, x.shape).astype(x.dtype)
                     if jnp.issubdtype(x.dtype, jnp.floating) else x)
  return sharding.put_replicated(jax.tree.map(noisy, state), mesh)


def _save_restore(ckpt, state, epoch: int) -> tuple[float, float]:
  """Seconds to save `state` (until written) and to restore it onto the devices."""
  t0 = time.perf_counter()
  ckpt.save(epoch, state, {"epoch": epoch})
  ckpt.wait()
  t1 = time.perf_counter()
  restored, _ = ckpt.restore(checkpointing.abstract_like(state), epoch)
  jax.block_until_ready(restored)
  return t1 - t0, time.perf_counter() - t1


def checkpoint_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """Orbax save and restore of a train state with Adam moments (first round reported
  apart as the warm-up)."""
  del cache
  name = opts.sizes.checkpoint_model
  state = _adam_state(name, opts.dtype)
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpointing.Checkpointer(workdir, keep=opts.repeats + 1)
    times = [_save_restore(ckpt, state, epoch) for epoch in range(1, opts.repeats + 2)]
    size = _dir_mb(os.path.join(checkpointing.checkpoint_dir(workdir), str(opts.repeats + 1)))
    ckpt.close()
  saves, restores = zip(*times[1:])
  out = {"model": name, "optimizer": "adam", "size_mb": size,
         "state_mb": sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6,
         "first_save_s": times[0][0], "first_restore_s": times[0][1],
         "save_s": stats(saves), "restore_s": stats(restores)}
  rows = [Row("checkpoint", f"{name}+adam size on disk", size, "MB"),
          Row("checkpoint", "first save / restore", f"{times[0][0]:.2f} / {times[0][1]:.2f}",
              "s"),
          Row("checkpoint", "save (until written)", out["save_s"], "s"),
          Row("checkpoint", "restore", out["restore_s"], "s")]
  return out, rows


SECTIONS = {"train": train_section, "pgd": pgd_section, "eval": eval_section,
            "split": split_section, "input": input_section, "scaling": scaling_section,
            "checkpoint": checkpoint_section}
