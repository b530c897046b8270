"""Sections that time the host's side: `input` (the numpy input pipeline, and a
prepared tfds CIFAR-10 read, against the small_cnn step) and `checkpoint` (Orbax save
and restore of a ResNet-18 + Adam state)."""

import os
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hfc_jax import defaults, errors, optimizers, sharding, train
from hfc_jax.benchmarks.common import (TARGETS, Options, Row, Timing, model_config,
                                       ratio_row, stats, step_rows, time_together,
                                       train_step)
from hfc_jax.data import pipeline, synthetic, tfds_source
from hfc_jax.workdir import checkpointing
from hfc_jax.workdir.layout import Workdir


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


def _epoch_call(data: dict, batch: int, augment: bool, data_config) -> Callable[[], None]:
  """One epoch of pipeline.train_batches over `data` with the augmentation settings of
  `data_config`, batches discarded."""
  dc = data_config
  def epoch():
    for _ in pipeline.train_batches(data["x_train"], data["y_train"], batch_size=batch,
                                    seed=0, epoch=0, augment=augment, pad=dc.aug_pad,
                                    pad_mode=dc.aug_pad_mode, flip=dc.aug_flip):
      pass
  return epoch


def input_section(opts: Options, cache: dict) -> tuple[dict, list[Row]]:
  """pipeline.train_batches over the embedded set, in turns with the small_cnn step."""
  n, batch = opts.sizes.input_images, opts.batch("small_cnn")
  data_config = defaults.get_config().data
  data_config.update(num_train=n, num_test=10)
  data = synthetic.from_config(data_config)
  used = pipeline.num_train_steps(n, batch) * batch
  step = train_step(opts, cache, "small_cnn", batch)
  measured = time_together({"plain": Timing(_epoch_call(data, batch, False, data_config),
                                            used, 1),
                            "augment": Timing(_epoch_call(data, batch, True, data_config),
                                              used, 1),
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
  state = train.create_train_state(train.create_model(config, 10, 3, 32), tx, config.seed, mesh)[1]
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
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Workdir.of(tmp)
    ckpt = checkpointing.Checkpointer(workdir, keep=opts.repeats + 1)
    times = [_save_restore(ckpt, state, epoch) for epoch in range(1, opts.repeats + 2)]
    size = _dir_mb(os.path.join(workdir.checkpoints, str(opts.repeats + 1)))
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
