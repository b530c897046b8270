"""Training and per-epoch frequency-split evaluation, data-parallel over a mesh.

Read top to bottom: the train state, the loss, the jitted train step, then the
driver `train_and_evaluate`, split by banner comments as in big_vision's trainer. A
run's checkpoints and records across its starts are `hfc_jax.run.run_files`.
"""

import functools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from hfc_jax import adversarial, evaluate, evaluators, frequency, models, optimizers
from hfc_jax import sharding, smoothness, transforms, validation
from hfc_jax import data as data_lib
from hfc_jax.data import pipeline
from hfc_jax.models.functional import Functional
from hfc_jax.reporting import plots
from hfc_jax.run import lock, preemption, resume, run_files
from hfc_jax.run import progress as progress_lib
from hfc_jax.workdir import checkpointing, records
from hfc_jax.workdir.layout import Workdir

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
def create_model(config: ml_collections.ConfigDict, num_classes: int, channels: int,
                 image_size: int):
  """The NNX model that `config.model` names for square `image_size` images, initialised
  from `config.seed`."""
  return models.from_config(config.model, num_classes=num_classes, in_channels=channels,
                            image_size=(image_size, image_size), seed=config.seed)


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
               mixup_alpha: float = 0.0, num_classes: int = 0,
               smooth_kernel_weight: float = 0.0
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
    smooth_kernel_weight: > 0 adds weight * `smoothness.first_conv_penalty` (squared
      differences of adjacent first-layer kernel values; Wang et al., ICLR 2020,
      "Smooth kernels improve adversarial robustness") to the loss.
    tx, adversary, mixup_alpha and smooth_kernel_weight may carry traced per-run
      settings: `hfc_jax.stacked` vmaps this step over a group of runs.

  Returns:
    The new state and {'loss', 'accuracy'} batch means (device scalars), measured on
    the images trained on (adversarial, mixed), accuracy against `labels`, and
    'nonfinite' ((3,) bool, `nonfinite_parts`: which part of the new state holds an
    inf or NaN).
  """
  x = input_fn(evaluate.to_float(images)) if input_fn else preprocess(images, rescale)
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  dropout_key, attack_key = jax.random.split(step_key)
  if adversary is not None:
    x = adversary.perturb(functional, state.params, state.model_state, x, labels,
                          attack_key, dropout_key)
  targets = labels
  if _on(mixup_alpha):
    x, targets, _ = transforms.mixup(jax.random.fold_in(step_key, 2), x, labels,
                                     num_classes, mixup_alpha)

  def loss_fn(params):
    logits, model_state = functional.apply(
        params, state.model_state, x, train=True, dropout_key=dropout_key)
    loss = cross_entropy(logits, targets).mean()
    if _on(smooth_kernel_weight):
      loss = loss + smooth_kernel_weight * smoothness.first_conv_penalty(params)
    return loss, (logits, model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, model_state)), grads = grad_fn(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state=model_state, opt_state=opt_state)
  return new_state, {"loss": loss, "accuracy": accuracy,
                     "nonfinite": nonfinite_parts(new_state)}


def _on(setting) -> bool:
  """Whether a term of the step with this weight is on: a number when > 0; a traced
  scalar (one run's setting in a run-parallel group, `hfc_jax.stacked`) always, as
  such a group holds only runs that use the term."""
  return isinstance(setting, jax.Array) or setting > 0


def all_finite(tree: PyTree) -> jax.Array:
  """Whether every floating-point element of `tree` is finite (a bool scalar); integer
  leaves (step counters) are skipped. One fused reduction on device."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def nonfinite_parts(state: TrainState) -> jax.Array:
  """(3,) bool: whether the parameters, the optimiser state and the BatchNorm statistics
  of `state` hold an inf or NaN, in `progress.STATE_PARTS` order. The optimiser state
  matters on its own: Adam's second moment can overflow to inf while the parameters
  stay finite, and every later update is then 0 (a run that silently stops learning)."""
  return ~jnp.stack([all_finite(state.params), all_finite(state.opt_state),
                     all_finite(state.model_state)])


def make_train_step(functional: Functional, tx, mesh, *, rescale: str,
                    adversary: adversarial.Adversary | None = None, input_fn=None,
                    mixup_alpha: float = 0.0, num_classes: int = 0,
                    smooth_kernel_weight: float = 0.0):
  """Jits `train_step` with replicated state (donated) and batch-sharded inputs."""
  step = functools.partial(train_step, functional=functional, tx=tx, rescale=rescale,
                           adversary=adversary, input_fn=input_fn,
                           mixup_alpha=float(mixup_alpha), num_classes=num_classes,
                           smooth_kernel_weight=float(smooth_kernel_weight))
  rep = sharding.replicated(mesh)
  return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0)


def make_config_train_step(config: ml_collections.ConfigDict, functional: Functional,
                           tx, mesh, num_classes: int, *,
                           adversary: adversarial.Adversary | None):
  """`make_train_step` for what `config` asks: input component, mix-up, and `adversary`
  (`Adversary.from_config(config.adv)`, built once per run by the caller)."""
  tc = config.train
  component = tc.input_component
  input_fn = None
  if component != "original":
    input_fn = transforms.make_component_fn(
        mesh, component, float(tc.input_radius),
        inclusive=config.eval.inclusive, rescale=config.data.rescale)
  return make_train_step(functional, tx, mesh, rescale=config.data.rescale,
                         adversary=adversary, input_fn=input_fn, mixup_alpha=tc.mixup_alpha,
                         num_classes=num_classes,
                         smooth_kernel_weight=tc.smooth_kernel_weight)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: Workdir | str,
                       *, mesh=None, allow_changes: bool = False) -> list[dict]:
  """Trains `config` in `workdir` (a `Workdir` or a path), resuming from its latest
  checkpoint if any.

  Returns the per-epoch metric history (also in `<workdir>/metrics.jsonl`). A finished
  workdir returns at once, before any data is loaded, and is not touched. Raises
  HfcError when another run holds the workdir or the resumed run's settings changed
  the result (`resume`; `allow_changes` lets it go on); `preemption.Preempted` after
  saving a checkpoint when a SIGTERM stops the run (one that comes while the data
  load or compiles is honoured at the first step); `errors.RunFailed` when training
  diverges or a checkpoint cannot be written.
  """
  workdir = Workdir.of(workdir)
  done = resume.finished_history(config, workdir, allow_changes=allow_changes)
  if done is not None:
    return done
  watch, workdir_lock = preemption.Watch(), lock.WorkdirLock(workdir)
  try:
    workdir_lock.acquire()
    return _train_and_evaluate(config, workdir, mesh, watch, workdir_lock, allow_changes)
  finally:
    workdir_lock.release()
    watch.close()


def _train_and_evaluate(config, workdir: Workdir, mesh, watch: preemption.Watch,
                        workdir_lock: lock.WorkdirLock, allow_changes: bool) -> list[dict]:
  """`train_and_evaluate`, with the preemption `watch` listening and the lock held."""
  # ----- Set up mesh and data ----------------------------------------------
  mesh = mesh or sharding.make_mesh(config.num_devices)
  dataset = data_lib.load(config.data)
  validation.check_with_data(config, dataset, mesh)
  adversary = adversarial.Adversary.from_config(config.adv)
  tc = config.train
  steps_per_epoch = pipeline.num_train_steps(len(dataset.x_train), tc.batch_size)
  logging.info("data %s: %d train, %d test images of %dx%dx%d; devices: %d; %d epochs of "
               "%d steps", dataset.name, len(dataset.x_train), len(dataset.x_test),
               dataset.image_size, dataset.image_size, dataset.channels, mesh.devices.size,
               tc.epochs, steps_per_epoch)

  # ----- Model, optimiser, state -------------------------------------------
  model = create_model(config, dataset.num_classes, dataset.channels, dataset.image_size)
  tx = optimizers.make_optimizer(config.optim, steps_per_epoch, tc.epochs)
  functional, state = create_train_state(model, tx, config.seed, mesh)
  del model

  # ----- Resume ------------------------------------------------------------
  state, run, changed = run_files.restore_run(config, workdir, state, dataset,
                                              steps_per_epoch, allow_changes=allow_changes)
  if run.finished:   # finished, but its newest checkpoint was unreadable
    run.ckpt.close()
    return run.history
  run_files.start_run(run, int(state.step), changed)
  ckpt, history = run.ckpt, run.history

  # ----- Update and evaluation functions -----------------------------------
  step_fn = make_config_train_step(config, functional, tx, mesh, dataset.num_classes,
                                   adversary=adversary)
  score = make_scorer(config, functional, mesh, eval_sets(config, dataset), adversary)

  # ----- Train loop --------------------------------------------------------
  started = time.perf_counter()
  loss_watch = progress_lib.LossWatch(tc.divergence_loss, tc.divergence_log_points)
  try:
    for epoch in range(len(history), tc.epochs):
      state = _train_epoch(state, step_fn, dataset, mesh, config, epoch, steps_per_epoch,
                           run.progress, recorder=run.recorder, watch=watch,
                           heartbeat=workdir_lock.heartbeat, save=run.save, ckpt=ckpt,
                           loss_watch=loss_watch)
      run.end_epoch(state, score, steps_per_epoch)
      if watch.requested:   # a SIGTERM during evaluation: this epoch's checkpoint is saved
        ckpt.wait()
        raise watch.stopped(int(state.step), ckpt.directory)
    ckpt.wait()
  finally:
    run.close()
  closing(workdir, history, time.perf_counter() - started)
  return history


# ---------------------------------------------------------------------------
# What each epoch scores
# ---------------------------------------------------------------------------
def eval_sets(config, dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'test': (x, y), 'train_eval': (x, y)}: the images each epoch scores, the subsets
  `eval.test_subset` and `eval.train_subset` drawn with `config.seed`."""
  ec = config.eval
  return {"test": data_lib.subset(dataset.x_test, dataset.y_test, ec.test_subset,
                                  config.seed),
          "train_eval": data_lib.subset(dataset.x_train, dataset.y_train,
                                        ec.train_subset, config.seed)}


def make_scorer(config, functional: Functional, mesh, eval_sets: dict, adversary):
  """The epoch-end evaluation, `score(state) -> record`: the metrics of the evaluators
  that `eval.evaluators` names, in list order (`hfc_jax.evaluators`). By default:
  clean/LFC/HFC/band accuracy and loss on each of `eval_sets` ({prefix: (x, y)}), the
  PGD accuracy (`test/pgd`) when adversarially training or `eval.robust_subset` asks
  for it, and the first conv's roughness (`first_conv_smoothness`)."""
  ctx = evaluators.Context(config, functional, mesh, eval_sets, adversary)
  score_all = evaluators.build_scorer(ctx)

  def score(state) -> dict:
    logging.info("evaluating: %s", ", ".join(f"{len(y)} {name} images"
                                              for name, (_, y) in eval_sets.items()))
    return score_all(state)
  return score


def closing(workdir: Workdir, history: list[dict], seconds: float) -> None:
  """The run's last lines (process 0): its accuracy-vs-epoch figure, `curves.png`, and
  where the results are."""
  if jax.process_index() != 0 or not history:
    return
  plots.save(plots.panel_figure({workdir.name: history}), workdir.curves)
  last = history[-1]
  print(f"hfc_jax: done in {records.duration(seconds)}: {last['epoch']} epochs, test clean "
        f"accuracy {last.get('test/clean') or float('nan'):.4f}. "
        f"Metrics: {workdir.metrics}; figure: {workdir.curves}; "
        f"checkpoints: {workdir.checkpoints}; TensorBoard: {workdir.tensorboard}",
        flush=True)


def _train_epoch(state, step_fn, dataset, mesh, config, epoch: int, steps_per_epoch: int,
                 progress: progress_lib.EpochProgress, *, recorder: records.Recorder,
                 watch: preemption.Watch, save, ckpt: checkpointing.Checkpointer,
                 loss_watch: progress_lib.LossWatch | None = None, heartbeat=lambda: None):
  """Runs the remaining steps of epoch `epoch` (from `progress.steps` on), adding
  their metrics to `progress`; returns the state.

  The host never waits for the device inside the epoch: batches are assembled and
  placed on the devices by a background thread `train.prefetch` steps ahead, and
  metrics are fetched late (`progress.StepMetrics`). Every `checkpoint.every_steps` steps
  the state is saved with `progress`, and the loop waits for that save to commit, so
  a run killed at any moment loses at most `every_steps` steps; when `watch` reports
  a preemption, the state is saved at that step and `Preempted` raised.
  """
  tc, every = config.train, config.checkpoint.every_steps
  batches = pipeline.train_batches(
      dataset.x_train, dataset.y_train, batch_size=tc.batch_size, seed=config.seed,
      epoch=epoch, augment=config.data.augment, pad=config.data.aug_pad,
      pad_mode=config.data.aug_pad_mode, flip=config.data.aug_flip,
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=progress.steps)
  placed = pipeline.prefetch(
      (sharding.put_batch(mesh, x, y.astype(np.int32)) for x, y in batches),
      size=tc.prefetch)
  metrics = progress_lib.StepMetrics(
      progress, recorder, total_steps=tc.epochs * steps_per_epoch, batch_size=tc.batch_size,
      loss_watch=loss_watch)
  t0 = time.perf_counter()

  def checkpoint(step):
    nonlocal t0
    metrics.flush(step)
    progress.train_time_s += time.perf_counter() - t0
    save(state, progress)
    ckpt.wait()
    t0 = time.perf_counter()

  for i, (images, labels) in enumerate(placed, start=progress.steps):
    state, step_metrics = step_fn(state, images, labels)
    metrics.add(step_metrics)
    step = epoch * steps_per_epoch + i + 1
    if (i + 1) % tc.log_every_steps == 0:
      metrics.mark(step)
      ckpt.check()     # a failed background save stops the run here, not at the next save
      heartbeat()
    if watch.reached(step):
      checkpoint(step)
      raise watch.stopped(step, ckpt.directory)
    if every and step % every == 0 and i + 1 < steps_per_epoch:
      checkpoint(step)
  metrics.flush(epoch * steps_per_epoch + steps_per_epoch)
  progress.train_time_s += time.perf_counter() - t0
  return state
