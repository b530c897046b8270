"""Section `autoattack`: the AutoAttack family's cost on the default small CNN.

  * An APGD-CE iteration against a PGD step: `attacks.apgd_attack` with ITERS
    iterations in turns with `attacks.eval_attack('pgd')` with ITERS steps, on one batch
    (both from a random start; APGD takes one more gradient, at its start). The target:
    APGD's bookkeeping (momentum, the best point, the step-size checkpoints) costs at
    most TARGETS['apgd'] x a PGD step.
  * A Square query against a forward pass: `attacks.square_attack` with QUERIES queries
    (one forward pass each) per call, divided by QUERIES, against the jitted logits of
    the same batch. Target: at most TARGETS['square'] x a forward pass (the random
    window, the proposal and the bookkeeping are cheap next to the model).
  * The whole AutoAttack (standard; `--tiny`: 'fast' with tiny budgets) at L-inf 8/255
    on the first `--autoattack_images` embedded test images, through
    `analysis.robust_table` as robust_eval runs it (with batch statistics, the default
    model's BN: fixed batches of 250, or of all the images when fewer, a batch skipped
    once every image in it is broken).
    The model is freshly initialised, its labels its own predictions (every image starts
    correct; a trained model would be harder to break, so this is a lower bound on
    the time), and the compile time is included.
"""

import functools
import time

import jax
import numpy as np

from hfc_jax import attacks, sharding, train
from hfc_jax import data as data_lib
from hfc_jax.analysis import robust_table
from hfc_jax.benchmarks.common import (Options, Row, Timing, mesh_size, model_config,
                                       random_batch, ratio_row, time_together)
from hfc_jax.models import layers
from hfc_jax.models.functional import Functional

TARGETS = {"apgd": 1.15, "square": 1.2}   # time ratios, at most
BATCH = {False: 128, True: 16}            # images per timed call: full, --tiny
ITERS = {False: 10, True: 2}              # APGD iterations / PGD steps per call
QUERIES = {False: 50, True: 4}            # Square queries per call
EPS = 8 / 255


def _model(mesh):
  """(functional, replicated (params, model_state), config) of a fresh default model."""
  config = model_config("small_cnn", "float32")
  functional, params, model_state = Functional.split(train.create_model(config, 10, 3, 32))
  return functional, sharding.put_replicated((params, model_state), mesh), config


def _contenders(functional, variables, mesh, batch: int, iters: int, queries: int) -> dict:
  """name -> (jitted call, arguments) for PGD, APGD, Square and the forward pass."""
  images, labels = random_batch(batch)
  x, y = sharding.put_batch(mesh, images.astype(np.float32) / 255, labels)
  key = jax.random.key(0)

  def bound(attack):
    return jax.jit(lambda p, s, x, y, k: attack(functools.partial(functional.logits, p, s),
                                                x, y, k))
  calls = {
      "pgd": bound(lambda fn, x, y, k: attacks.eval_attack("pgd", fn, x, y, eps=EPS,
                                                           steps=iters, key=k)),
      "apgd_ce": bound(lambda fn, x, y, k: attacks.apgd_attack(
          fn, x, y, eps=EPS, key=k, n_iter=iters, unroll=None)),   # as robust_table runs it
      "square": bound(lambda fn, x, y, k: attacks.square_attack(fn, x, y, eps=EPS, key=k,
                                                                n_queries=queries)),
      "forward": bound(lambda fn, x, y, k: fn(x)),
  }
  return {name: functools.partial(fn, *variables, x, y, key) for name, fn in calls.items()}


def _whole_autoattack(functional, variables, mesh, config, images: int, tiny: bool) -> dict:
  """Seconds for the whole ensemble on the first `images` embedded test images."""
  dataset = data_lib.load(config.data)
  x = dataset.x_test[:images].astype(np.float32) / 255
  logits = jax.jit(functional.logits)(*variables, x)
  y = np.asarray(np.argmax(logits, -1), np.int32)   # every image starts correct
  target = robust_table.Target(functional.logits, variables, x, y, mesh, min(250, images),
                               layers.depends_on_batch(config.model.norm))
  settings = robust_table.AttackSettings.from_config(
      {}, attacks=("autoattack",), eps=(EPS,), pgd_steps=1,
      autoattack_version="fast" if tiny else "standard", apgd_iters=2 if tiny else 0,
      square_queries=8 if tiny else 0, masking_images=0)
  t0 = time.perf_counter()
  table, masks, _ = robust_table.attack_table(target, settings)
  total = time.perf_counter() - t0
  robust = int(round(table["attacks"]["autoattack"][robust_table.eps_key(EPS)] * images))
  return {"images": images, "version": settings.autoattack_version, "eps": EPS,
          "total_s": total, "s_per_image": total / images,
          "robust": f"{robust}/{images}",   # a string: may be 0
          "broken_by": {a: f"{int(m.sum())}" for a, m in masks.parts[EPS].items()}}


def autoattack_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """APGD iteration / PGD step, Square query / forward pass, the whole AutoAttack."""
  del cache
  batch, iters, queries = BATCH[opts.tiny], ITERS[opts.tiny], QUERIES[opts.tiny]
  mesh = sharding.make_mesh(mesh_size(batch))
  functional, variables, config = _model(mesh)
  calls = _contenders(functional, variables, mesh, batch, iters, queries)
  r = time_together({name: Timing(call, batch, opts.steps) for name, call in calls.items()},
                    opts.repeats)
  step = {name: r[name]["step_s"]["median"] for name in r}
  apgd_ratio = step["apgd_ce"] / step["pgd"]
  square_ratio = step["square"] / queries / step["forward"]
  whole = _whole_autoattack(functional, variables, mesh, config, opts.autoattack_images,
                            opts.tiny)
  out = {"batch_size": batch, "devices": mesh.size, "iterations": iters,
         "queries": queries, **r,
         "apgd_iteration_s": step["apgd_ce"] / iters, "pgd_step_s": step["pgd"] / iters,
         "square_query_s": step["square"] / queries, "forward_s": step["forward"],
         "apgd_over_pgd": apgd_ratio, "square_over_forward": square_ratio,
         "whole": whole}
  size = f"b{batch} d{mesh.size}"
  rows = [Row("autoattack", f"PGD step {size}", step["pgd"] / iters, "s"),
          Row("autoattack", f"APGD-CE iteration {size}", step["apgd_ce"] / iters, "s"),
          ratio_row("autoattack", "APGD iteration / PGD step", apgd_ratio,
                    TARGETS["apgd"], False),
          Row("autoattack", f"forward pass {size}", step["forward"], "s"),
          Row("autoattack", f"Square query {size}", step["square"] / queries, "s"),
          ratio_row("autoattack", "Square query / forward pass", square_ratio,
                    TARGETS["square"], False),
          Row("autoattack", f"AutoAttack {whole['version']}, {whole['images']} images "
              f"(robust {whole['robust']})", whole["total_s"], "s")]
  return out, rows
