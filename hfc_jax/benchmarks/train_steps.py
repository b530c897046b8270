"""Sections that time the compiled train step: `train` (every model, its FLOP rate
against a matmul peak, PyTorch's ResNet-18 side by side), `pgd` (PGD-k adversarial
steps against the plain step) and `scaling` (one global batch on 1, 2, 4, 8 devices)."""

import jax
import jax.numpy as jnp

from hfc_jax import adversarial
from hfc_jax.benchmarks import torch_reference
from hfc_jax.benchmarks.common import (TARGETS, Options, Row, Timing, compile_timed,
                                       mesh_size, ratio_row, step_rows, time_together,
                                       train_step)


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
  timed in turns with ours, and ours over each PyTorch layout is a target row."""
  peak = matmul_peak(opts)
  out, torch_results = {"matmul_peak": peak, "models": {}}, {}
  rows = [Row("train", f"matmul peak {peak['size']} {peak['dtype']}", peak["gflop_per_s"],
              "GFLOP/s")]
  torch, out["torch_status"] = torch_reference.import_torch(opts)
  for name in opts.models:
    step = train_step(opts, cache, name, opts.batch(name))
    timings = {name: step.timing(opts)}
    if name == "resnet18" and torch is not None:
      timings.update(torch_reference.torch_timings(torch, step.info["batch_size"], opts))
    measured = time_together(timings, opts.repeats)
    r = {**step.info, **measured.pop(name)}
    r["gflop_per_s"] = r["gflop_per_image"] * r["images_per_s"]["median"]
    r["peak_fraction"] = r["gflop_per_s"] / peak["gflop_per_s"]["median"]
    out["models"][name] = r
    rows += step_rows("train", f"{name} b{r['batch_size']} d{r['devices']}", r)
    rows += _flop_rows(name, r)
    for layout, t in measured.items():
      rows += step_rows("train", f"{layout} b{r['batch_size']}", t)
    for layout, t in measured.items():
      ratio = r["images_per_s"]["median"] / t["images_per_s"]["median"]
      r.setdefault("vs_torch", {})[layout] = ratio
      rows.append(ratio_row("train", f"{name} / {layout} img/s", ratio, TARGETS["torch"], True))
    torch_results.update(measured)
  out["torch_resnet18"] = torch_results or None
  if not torch_results:
    rows.append(Row("train", f"torch resnet18: {out['torch_status']}", "null", ""))
  return out, rows


# ---------------------------------------------------------------------------
# pgd
# ---------------------------------------------------------------------------
def _pgd_device_counts(batch: int, tiny: bool) -> list[int]:
  """The full mesh, and on a CPU also 1 device (not with --tiny): JAX's own default
  there (the 8 CPU devices are simulated on the same cores; see docs/performance.md)."""
  counts = [mesh_size(batch)]
  if jax.default_backend() == "cpu" and counts[0] > 1 and not tiny:
    counts.append(1)
  return counts


def pgd_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """PGD-k adversarial train steps (eps 8/255, step 2/255, random start), timed in
  turns with the plain step of the same model, batch and mesh. On a CPU the pair is
  also timed on 1 device (JSON key `<model>.one_device`; not with --tiny)."""
  out, rows = {}, []
  for name in opts.pgd_eval_models:
    batch = opts.batch(name)
    for devices in _pgd_device_counts(batch, opts.tiny):
      full = devices == mesh_size(batch)
      ks = opts.sizes.pgd_steps if full else opts.sizes.pgd_steps[:1]
      steps = {"plain": train_step(opts, cache, name, batch, devices=devices)}
      for k in ks:
        adversary = adversarial.Adversary("pgd", eps=8 / 255, step_size=2 / 255, steps=k,
                                          random_start=True, restarts=1, train_mode=False)
        steps[f"pgd_{k}"] = train_step(opts, cache, name, batch, devices=devices,
                                       adversary=adversary)
      measured = time_together({key: s.timing(opts) for key, s in steps.items()},
                               opts.repeats)
      result = {key: {**s.info, **measured[key]} for key, s in steps.items()}
      if full:
        out[name] = result
      else:
        out[name]["one_device"] = result
      plain_s = measured["plain"]["step_s"]["median"]
      label = f"{name} d{devices}"
      rows += step_rows("pgd", f"{label} plain b{batch}", measured["plain"])
      for k in ks:
        r = result[f"pgd_{k}"]
        r["ratio"] = r["step_s"]["median"] / plain_s
        rows += step_rows("pgd", f"{label} pgd-{k} b{batch}", r)
        target = TARGETS.get(f"pgd_{k}")
        item = f"{label} pgd-{k} / plain step"
        rows.append(ratio_row("pgd", item, r["ratio"], target, False) if target
                    else Row("pgd", item, r["ratio"], "x"))
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
