"""Section `heatmap`: the Fourier heat map's jitted chunk (`--config.mode=fourier_heatmap`)
in turns with the plain clean evaluation of the same model at the same batch.

A heat-map call scores `FREQUENCIES` basis-image perturbations of one batch (one
forward pass each, basis images and signs made on device); its throughput counts
perturbed images per second. Each timed round runs `FREQUENCIES` times as many plain
calls as heat-map calls, so both sides score as many images per round. The target:
at least `TARGET` times the images per second of `evaluate.make_eval_fn` with no radii
(clean images only). The row `32x32 map, 1000 images` extrapolates a whole default
heat map (514 frequency pairs + the clean pass, 1,000 test images) from that throughput.
"""

import functools

import jax
import numpy as np

from hfc_jax import evaluate, sharding, train
from hfc_jax.analysis import fourier_heatmap
from hfc_jax.benchmarks.common import (Options, Row, Timing, compile_timed, mesh_size,
                                       model_config, random_batch, ratio_row, step_rows,
                                       time_together)
from hfc_jax.models.functional import Functional

TARGET = 0.9                       # heat-map img/s over plain-evaluation img/s, at least
FREQUENCIES = {False: 8, True: 4}  # frequencies per heat-map call: full, --tiny
MAP_IMAGES = 1000                  # test images of the extrapolated whole map


def _contenders(name: str, dtype: str, batch: int, frequencies: int, mesh) -> dict:
  """name -> (compiled call, its arguments, compile seconds) for a fresh `name` model
  on a random batch: the plain clean evaluation and the heat-map chunk."""
  config = model_config(name, dtype)
  functional, params, model_state = Functional.split(train.create_model(config, 10, 3, 32))
  variables = sharding.put_replicated((params, model_state), mesh)
  images, labels = random_batch(batch)
  batch_arrays = sharding.put_batch(mesh, images, labels, np.ones(batch, np.float32))
  plain = evaluate.make_eval_fn(functional.logits, mesh, radii=(),
                                inclusive=config.eval.inclusive, rescale=config.eval.rescale)
  indices = fourier_heatmap.frequency_indices(32, 32)[1:1 + frequencies]
  eps = np.full(frequencies, fourier_heatmap.default_eps(32, 32), np.float32)
  chunk = fourier_heatmap.make_chunk_fn(functional.logits, mesh)
  heat_args = (*variables, *batch_arrays, np.int32(0), indices, eps, jax.random.key(0))
  out = {}
  for key, fn, args in (("plain_eval", plain, (*variables, *batch_arrays)),
                        ("heatmap", chunk, heat_args)):
    out[key] = (*compile_timed(fn, *args)[1:], args)
  return out


def heatmap_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """Heat-map chunk throughput (perturbed images/s) against plain evaluation (img/s)."""
  del cache
  batch, out, rows = opts.sizes.eval_batch, {}, []
  frequencies = FREQUENCIES[opts.tiny]
  mesh = sharding.make_mesh(mesh_size(batch))
  for name in opts.pgd_eval_models:
    compiled = _contenders(name, opts.dtype, batch, frequencies, mesh)
    # Per round, plain evaluation runs `frequencies` times as many calls: both sides
    # score the same images per round, so each sees the machine for as long.
    images = {"plain_eval": batch, "heatmap": batch * frequencies}
    steps = {"plain_eval": opts.steps * frequencies, "heatmap": opts.steps}
    r = time_together({key: Timing(functools.partial(fn, *args), images[key], steps[key])
                       for key, (fn, _, args) in compiled.items()}, opts.repeats)
    for key, (_, compile_s, _) in compiled.items():
      r[key]["compile_s"] = compile_s
    heat_ips = r["heatmap"]["images_per_s"]["median"]
    ratio = heat_ips / r["plain_eval"]["images_per_s"]["median"]
    pairs = len(fourier_heatmap.frequency_indices(32, 32))
    map_s = (pairs + 1) * MAP_IMAGES / heat_ips
    out[name] = {"batch_size": batch, "devices": mesh.size, "frequencies_per_call":
                 frequencies, **r, "ratio": ratio, "map_32x32_1000_images_s": map_s}
    size = f"b{batch} d{mesh.size}"
    rows += step_rows("heatmap", f"{name} plain eval {size}", r["plain_eval"])
    rows += step_rows("heatmap", f"{name} heat map x{frequencies} freq {size}", r["heatmap"])
    rows.append(ratio_row("heatmap", f"{name} heat map / plain eval img/s", ratio, TARGET,
                          True))
    rows.append(Row("heatmap", f"{name} 32x32 map, {MAP_IMAGES} images (extrapolated)", map_s,
                    "s"))
  return out, rows
