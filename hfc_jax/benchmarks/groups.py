"""The `groups` section: run-parallel training (`hfc_jax.stacked`) against the same runs
one after another.

Groups of 1, 2, 4 and 8 small_cnn runs (seeds 0 ... R-1, each with its own batch of the
model's training size) train in one jitted, vmapped step, on one device and over the
mesh (R devices along `runs` where R divides the device count, the rest along `data`).
The contender is the lone run's step on the same devices, run R times in a row: its
runs x images per second is the lone step's images per second. Every figure is
runs x images/s (R * B images per group step); `speed-up` is the group's over the
lone runs'. On an accelerator the goal is near-linear (a group of 8 at >= 0.8 x 8 the
throughput of one run); on a CPU the cores are busy already and the gain is small.
"""

import jax
import numpy as np

from hfc_jax import defaults, optimizers, sharding, stacked, train
from hfc_jax.benchmarks.common import (Options, Row, Timing, model_config, random_batch,
                                       time_together, train_step)

GROUP_SIZES = (1, 2, 4, 8)
MODEL = "small_cnn"


class _GroupStep:
  """The group step of `runs` seeds bound to fixed on-device batches; the first call
  compiles it (`time_together`'s `warmup_s`)."""

  def __init__(self, runs: int, batch: int, devices: int, dtype: str):
    config = model_config(MODEL, dtype)
    configs = []
    for seed in range(runs):
      c = defaults.complete(config.to_dict())
      c.seed = seed
      configs.append(c)
    run_devices = runs if devices % runs == 0 else 1
    mesh = sharding.make_group_mesh(run_devices, devices)
    run_mesh = sharding.make_mesh(devices)
    tx = optimizers.make_optimizer(config.optim, 100, config.train.epochs)
    states = []
    for c in configs:
      functional, state = train.create_train_state(train.create_model(c, 10, 3, 32), tx,
                                                   c.seed, run_mesh)
      states.append(state)
    self.state = stacked.stack(states, mesh)
    step = stacked.make_group_step(configs, functional, mesh, steps_per_epoch=100,
                                   num_classes=10)
    batches = [random_batch(batch, seed) for seed in range(runs)]
    self.images, self.labels = sharding.put_group_batch(
        mesh, np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches]))
    self.step = step
    self.mesh_shape = dict(mesh.shape)

  def __call__(self):
    self.state, _ = self.step(self.state, self.images, self.labels)
    return self.state


def groups_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """Runs x images/s of groups of 1, 2, 4, 8 small_cnn runs against the lone step run
  as many times, on 1 device and on the whole mesh, timed in turns (`--tiny`: a group of
  2 on the whole mesh only)."""
  batch = opts.batch(MODEL)
  sizes = (2,) if opts.tiny else GROUP_SIZES
  out, rows = {"batch_size": batch, "meshes": {}}, []
  full = max(n for n in range(1, jax.device_count() + 1) if batch % n == 0)
  for devices in [full] if opts.tiny else sorted({1, full}):
    lone = train_step(opts, cache, MODEL, batch, devices=devices)
    timings = {"lone": lone.timing(opts)}
    built = {}
    for runs in sizes:
      built[runs] = _GroupStep(runs, batch, devices, opts.dtype)
      timings[str(runs)] = Timing(built[runs], runs * batch, opts.steps)
    measured = time_together(timings, opts.repeats)
    base = measured["lone"]["images_per_s"]["median"]
    result = {"lone": measured["lone"], "groups": {}}
    rows.append(Row("groups", f"{MODEL} b{batch} d{devices} runs one after another",
                    measured["lone"]["images_per_s"], "runs x img/s"))
    for runs in sizes:
      r = {**measured[str(runs)], "mesh": built[runs].mesh_shape}
      r["speedup"] = r["images_per_s"]["median"] / base
      result["groups"][runs] = r
      label = f"{MODEL} b{batch} d{devices} group of {runs} on {r['mesh']}"
      rows += [Row("groups", label, r["images_per_s"], "runs x img/s"),
               Row("groups", f"{label} vs one after another", r["speedup"], "x")]
    out["meshes"][devices] = result
  return out, rows
