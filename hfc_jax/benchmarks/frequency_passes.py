"""Sections that time the frequency work: `eval` (clean + LFC/HFC variants in one
jitted pass against a clean-only pass) and `split` (jitted split_many against NumPy)."""

import functools
import time
from typing import Any

import jax
import numpy as np

from hfc_jax import evaluate, frequency, sharding, train
from hfc_jax.benchmarks.common import (RADII, TARGETS, Options, Row, Timing, compile_timed,
                                       mesh_size, model_config, random_batch, ratio_row,
                                       step_rows, time_together)
from hfc_jax.models.functional import Functional


# ---------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------
def _eval_args(name: str, dtype: str, batch: int, mesh):
  """(functional, config, eval_fn arguments) for a fresh `name` model and a random batch."""
  config = model_config(name, dtype)
  functional, params, model_state = Functional.split(train.create_model(config, 10, 3, 32))
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
