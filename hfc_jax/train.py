"""Training and per-epoch frequency-split evaluation, data-parallel over a mesh.

Read top to bottom: the train state, the loss, the jitted train step, then the
driver `train_and_evaluate`, split by banner comments as in big_vision's trainer.
"""

import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from hfc_jax import adversarial, checkpointing, errors, evaluate, frequency, models
from hfc_jax import optimizers, records, sharding, transforms
from hfc_jax import data as data_lib
from hfc_jax.data import pipeline
from hfc_jax.models.functional import Functional

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue bit for bit: a pytree of arrays."""
  step: jax.Array          # int32 scalar, optimiser steps taken
  params: PyTree           # nested dict of float32 arrays
  model_state: PyTree      # BatchNorm running statistics (empty without them)
  opt_state: PyTree        # optax state
  rng: jax.Array           # uint32 key data; per-step keys are fold_in(rng, step)


# ---------------------------------------------------------------------------
# Model and state
# ---------------------------------------------------------------------------
def create_model(config: ml_collections.ConfigDict, num_classes: int, channels: int):
  """The NNX model that `config.model` names, initialised from `config.seed`."""
  m = config.model
  return models.create(
      m.name, num_classes=num_classes, in_channels=channels, norm=m.norm,
      dropout=m.dropout, input_filter=m.input_filter, filter_radius=m.filter_radius,
      dtype=m.dtype, seed=config.seed)


def create_train_state(model, tx: optax.GradientTransformation, seed: int, mesh
                       ) -> tuple[Functional, TrainState]:
  """Splits the model into a pure function and a replicated TrainState."""
  functional, params, model_state = Functional.split(model)
  params, model_state = sharding.put_replicated((params, model_state), mesh)
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params)
  rng = jax.random.key_data(jax.random.key(seed + 1))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     model_state=model_state, opt_state=opt_state, rng=rng)
  return functional, sharding.put_replicated(state, mesh)


# ---------------------------------------------------------------------------
# Loss and step
# ---------------------------------------------------------------------------
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy; `labels` are int (N,) or soft targets (N, K)."""
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def preprocess(images: jax.Array, rescale: str) -> jax.Array:
  """uint8 NHWC -> float32 in [0, 1], optionally divided by each image's max."""
  x = evaluate.to_float(images)
  return frequency.rescale_per_image_max(x) if rescale == "per_image_max" else x


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
               functional: Functional, tx: optax.GradientTransformation,
               rescale: str, adversary: adversarial.Adversary | None = None, input_fn=None,
               mixup_alpha: float = 0.0, num_classes: int = 0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (sharded) global batch.

  Args:
    state: the replicated train state.
    images: (B, H, W, C) uint8; labels: (B,) int32.
    rescale: 'none' or 'per_image_max' for the training images (the original code).
    adversary: when given, the step trains on the adversary's images instead.
    input_fn: float images in [0, 1] -> the images to train on (e.g. their LFC, see
      `transforms.make_component_fn`); it replaces `rescale` when given.
    mixup_alpha: > 0 trains on mix-up of the (possibly adversarial) images, with one
      lambda ~ Beta(alpha, alpha) per batch (`transforms.mixup`); needs `num_classes`.

  Returns:
    The new state and {'loss', 'accuracy'} batch means (device scalars); they are
    measured on the images trained on (adversarial, mixed), accuracy against `labels`.
  """
  x = input_fn(evaluate.to_float(images)) if input_fn else preprocess(images, rescale)
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  dropout_key, attack_key = jax.random.split(step_key)
  if adversary is not None:
    x = adversary.perturb(functional, state.params, state.model_state, x, labels,
                          attack_key, dropout_key)
  targets = labels
  if mixup_alpha > 0:
    x, targets, _ = transforms.mixup(jax.random.fold_in(step_key, 2), x, labels,
                                     num_classes, mixup_alpha)

  def loss_fn(params):
    logits, model_state = functional.apply(
        params, state.model_state, x, train=True, dropout_key=dropout_key)
    return cross_entropy(logits, targets).mean(), (logits, model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, model_state)), grads = grad_fn(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state=model_state, opt_state=opt_state)
  return new_state, {"loss": loss, "accuracy": accuracy}


def make_train_step(functional: Functional, tx, mesh, *, rescale: str,
                    adversary: adversarial.Adversary | None = None, input_fn=None,
                    mixup_alpha: float = 0.0, num_classes: int = 0):
  """Jits `train_step` with replicated state (donated) and batch-sharded inputs."""
  step = functools.partial(train_step, functional=functional, tx=tx, rescale=rescale,
                           adversary=adversary, input_fn=input_fn,
                           mixup_alpha=float(mixup_alpha), num_classes=num_classes)
  rep = sharding.replicated(mesh)
  return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0)


def make_config_train_step(config: ml_collections.ConfigDict, functional: Functional,
                           tx, mesh, num_classes: int):
  """`make_train_step` for what `config` asks: adversary, input component, mix-up."""
  tc = config.train
  component = tc.get("input_component", "original")
  input_fn = None
  if component != "original":
    input_fn = transforms.make_component_fn(
        mesh, component, float(tc.get("input_radius", 0.0)),
        inclusive=config.eval.inclusive, rescale=config.data.rescale)
  return make_train_step(functional, tx, mesh, rescale=config.data.rescale,
                         adversary=adversarial.Adversary.from_config(config.get("adv")),
                         input_fn=input_fn, mixup_alpha=tc.get("mixup_alpha", 0.0),
                         num_classes=num_classes)


# ---------------------------------------------------------------------------
# Validation of the parts of the config that depend on the data
# ---------------------------------------------------------------------------
def check_config(config: ml_collections.ConfigDict, dataset, mesh) -> None:
  """One-line HfcErrors for values that are wrong for this data or these devices."""
  size = dataset.image_size
  for r in config.eval.radii:
    frequency.check_radius(r, size, size, field="eval.radii")
  if config.model.input_filter != "none":
    frequency.check_radius(config.model.filter_radius, size, size,
                           field="model.filter_radius")
  sharding.check_batch_size("train.batch_size", config.train.batch_size, mesh)
  sharding.check_batch_size("eval.batch_size", config.eval.batch_size, mesh)
  if config.train.batch_size > len(dataset.x_train):
    raise errors.HfcError(
        f"train.batch_size={config.train.batch_size} exceeds the "
        f"{len(dataset.x_train)} training images.")
  errors.check_range("train.epochs", config.train.epochs, 1, None, integer=True)
  transforms.check_config(config.train, size)


def _fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The config fields that must match for a checkpoint to be resumed."""
  return {"model": config.model.to_dict(), "data": config.data.to_dict(),
          "seed": config.seed}


@flax.struct.dataclass
class Trained:
  """A finished (or running) workdir's model, restored for analysis."""
  functional: Functional = flax.struct.field(pytree_node=False)
  params: PyTree
  model_state: PyTree
  config: ml_collections.ConfigDict = flax.struct.field(pytree_node=False)
  history: list = flax.struct.field(pytree_node=False)
  epoch: int = flax.struct.field(pytree_node=False)
  num_classes: int = flax.struct.field(pytree_node=False)
  channels: int = flax.struct.field(pytree_node=False)


def restore_trained(workdir: str, epoch: int | None = None, *, mesh=None) -> Trained:
  """Restores a workdir's model, replicated over `mesh` (default: the first CPU device).

  Works on a laptop CPU for checkpoints written on a GPU or TPU mesh: the arrays are
  re-laid out onto the mesh. The config and data shape come from the checkpoint.
  """
  ckpt = checkpointing.open_existing(workdir)
  epoch = ckpt.latest_epoch() if epoch is None else epoch
  meta = ckpt.restore_meta(epoch)
  config = ml_collections.ConfigDict(meta["config"])
  if mesh is None:
    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")[:1]), (sharding.DATA_AXIS,))
  model = create_model(config, meta["num_classes"], meta["channels"])
  tx = optimizers.make_optimizer(config.optim, 1, config.train.epochs)
  functional, state = create_train_state(model, tx, config.seed, mesh)
  state, meta = ckpt.restore(checkpointing.abstract_like(state), epoch)
  ckpt.close()
  return Trained(functional, state.params, state.model_state, config,
                 meta["history"], epoch, meta["num_classes"], meta["channels"])


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, mesh=None) -> list[dict]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns the per-epoch metric history (also in `<workdir>/metrics.jsonl`).
  """
  # ----- Set up mesh and data ----------------------------------------------
  mesh = mesh or sharding.make_mesh(config.get("num_devices"))
  dataset = data_lib.load(config.data)
  check_config(config, dataset, mesh)
  adversary = adversarial.Adversary.from_config(config.get("adv"))
  tc, ec = config.train, config.eval
  steps_per_epoch = pipeline.num_train_steps(len(dataset.x_train), tc.batch_size)
  radii = tuple(float(r) for r in ec.radii)
  train_eval_x, train_eval_y = evaluate.eval_subset(
      dataset.x_train, dataset.y_train, ec.train_subset, config.seed)
  test_x, test_y = evaluate.eval_subset(
      dataset.x_test, dataset.y_test, ec.test_subset, config.seed)
  logging.info("data %s: %d train, %d test images of %dx%dx%d; mesh %s",
               dataset.name, len(dataset.x_train), len(dataset.x_test),
               dataset.image_size, dataset.image_size, dataset.channels, mesh.shape)

  # ----- Model, optimiser, state -------------------------------------------
  model = create_model(config, dataset.num_classes, dataset.channels)
  tx = optimizers.make_optimizer(config.optim, steps_per_epoch, tc.epochs)
  functional, state = create_train_state(model, tx, config.seed, mesh)
  del model

  # ----- Resume ------------------------------------------------------------
  ckpt = checkpointing.Checkpointer(workdir, keep=tc.keep_checkpoints)
  history: list[dict] = []
  start_epoch = ckpt.latest_epoch() or 0
  if start_epoch:
    meta = ckpt.restore_meta(start_epoch)
    if meta.get("fingerprint") != _fingerprint(config):
      raise errors.HfcError(
          f"workdir={workdir!r} holds a run of another model/data config; "
          "use a new --workdir or the same config.")
    state, meta = ckpt.restore(checkpointing.abstract_like(state), start_epoch)
    history = meta["history"]
    logging.info("resumed from epoch %d (step %d)", start_epoch, int(state.step))
  records.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  recorder = records.Recorder(workdir, tensorboard=config.get("tensorboard", True))
  recorder.reset(history)

  # ----- Update and evaluation functions -----------------------------------
  step_fn = make_config_train_step(config, functional, tx, mesh, dataset.num_classes)
  eval_fn = evaluate.make_eval_fn(functional.logits, mesh, radii=radii,
                                  inclusive=ec.inclusive, rescale=ec.rescale)
  evaluate_on = functools.partial(evaluate.evaluate, eval_fn, mesh=mesh,
                                  batch_size=ec.batch_size, radii=radii)
  robust_on = adversarial.robust_evaluator(config, adversary, functional, mesh, test_x, test_y)

  # ----- Train loop --------------------------------------------------------
  recorder.restart_clock()
  for epoch in range(start_epoch, tc.epochs):
    t0 = time.perf_counter()
    state, train_metrics = _train_epoch(
        state, step_fn, dataset, mesh, config, epoch, steps_per_epoch, recorder)
    train_time = time.perf_counter() - t0
    record = {"epoch": epoch + 1, "step": int(state.step), **train_metrics,
              "train_time_s": train_time}
    for prefix, (x, y) in (("test", (test_x, test_y)),
                           ("train_eval", (train_eval_x, train_eval_y))):
      scores = evaluate_on(state.params, state.model_state, x, y)
      record.update({f"{prefix}/{k}": v for k, v in scores.items()})
    if robust_on is not None:
      record["test/pgd"] = robust_on(state.params, state.model_state)
    record["epoch_time_s"] = time.perf_counter() - t0
    record = {k: records.json_scalar(v) for k, v in record.items()}
    history.append(record)
    ckpt.save(epoch + 1, state, {
        "config": config.to_dict(), "history": history,
        "fingerprint": _fingerprint(config), "num_classes": dataset.num_classes,
        "channels": dataset.channels, "image_size": dataset.image_size})
    recorder.write_epoch(record)
    recorder.restart_clock()
  ckpt.close()
  recorder.close()
  return history


def _train_epoch(state, step_fn, dataset, mesh, config, epoch: int,
                 steps_per_epoch: int, recorder: records.Recorder):
  """Runs one epoch of steps; returns the state and the epoch's mean loss/accuracy.

  The host never waits for the device inside the epoch: batches are assembled and
  placed on the devices by a background thread `train.prefetch` steps ahead, and step
  metrics stay on device until the *next* log point, when they are long computed, so
  fetching them does not drain the queue of dispatched steps.
  """
  tc = config.train
  batches = pipeline.train_batches(
      dataset.x_train, dataset.y_train, batch_size=tc.batch_size, seed=config.seed,
      epoch=epoch, augment=config.data.augment, pad=config.data.aug_pad,
      pad_mode=config.data.aug_pad_mode, flip=config.data.aug_flip,
      process_index=jax.process_index(), process_count=jax.process_count())
  placed = pipeline.prefetch(
      (sharding.put_batch(mesh, x, y.astype(np.int32)) for x, y in batches),
      size=tc.get("prefetch", 2))
  sums = {"loss": 0.0, "accuracy": 0.0}
  total = tc.epochs * steps_per_epoch

  def log(interval):
    """Fetches and logs one finished interval: (last step, metrics list, images)."""
    step, metrics, images = interval
    fetched = jax.device_get(metrics)
    losses = [float(m["loss"]) for m in fetched]
    accs = [float(m["accuracy"]) for m in fetched]
    sums["loss"] += sum(losses)
    sums["accuracy"] += sum(accs)
    recorder.progress(step, total, float(np.mean(losses)), float(np.mean(accs)), images)

  pending, previous, last_log = [], None, 0
  for i, (images, labels) in enumerate(placed):
    state, metrics = step_fn(state, images, labels)
    pending.append(metrics)
    if (i + 1) % tc.log_every_steps == 0:
      if previous is not None:
        log(previous)
      previous = (epoch * steps_per_epoch + i + 1, pending, (i + 1 - last_log) * tc.batch_size)
      pending, last_log = [], i + 1
  for interval in (previous, (epoch * steps_per_epoch + steps_per_epoch, pending,
                              (steps_per_epoch - last_log) * tc.batch_size)):
    if interval is not None and interval[1]:
      log(interval)
  n = max(steps_per_epoch, 1)
  return state, {"train_loss": sums["loss"] / n, "train_accuracy": sums["accuracy"] / n}
