"""Run-parallel training: R runs stacked along a leading run axis, one jitted step.

Runs that differ only in the seed or in scalar settings that change no shape (the
learning rate, weight decay, adversarial eps and step, mix-up alpha, the smooth-kernel
weight, the radius of the component trained on, the dropout rate: `SETTINGS`) train
together: their train states are stacked, every leaf gaining a leading axis of size R
(`stack`), and `jax.vmap` of the lone run's step (`train.train_step`) advances all of
them at once (`make_group_step`). A setting that
differs between the runs enters the step as an (R,) float32 array, one value per run,
instead of a Python constant; settings all runs share stay constants, so the program is
the lone run's up to the run axis. Each run keeps what it would have alone: its
initial parameters (`config.seed`), its data order (`group_batches`: the run's own
`pipeline.train_batches`), and its dropout and attack keys (its own `state.rng`).

On a (runs, data) mesh (`sharding.make_group_mesh`) the stacked state is split over
`runs` (`jax.shard_map`, manual over that axis: each device vmaps its own runs) and each
run's batch over `data`; on one device everything is vmapped. A run is
taken out of the stack for its checkpoints and its evaluation (`unstack`), replicated
on the lone run's 1-D mesh, so its files are those of a run trained alone.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from hfc_jax import adversarial, defaults, errors, optimizers, sharding, train, transforms
from hfc_jax.data import pipeline
from hfc_jax.models.functional import Functional

PyTree = Any

# Scalar settings that may differ between the runs of a group: traced (R,) arrays.
SETTINGS = ("optim.learning_rate", "optim.weight_decay", "adv.eps", "adv.step_size",
            "train.mixup_alpha", "train.smooth_kernel_weight", "train.input_radius",
            "model.dropout")
# Settings that add a term to the step when > 0: all runs of a group use it or none.
SWITCHES = ("optim.weight_decay", "train.mixup_alpha", "train.smooth_kernel_weight",
            "model.dropout")
# What else may differ: fields the group driver handles per run (the seed, each run's
# scoring, logging, divergence stop and checkpoints kept) and the analysis sections.
PER_RUN = ("seed", "eval", "tensorboard", "train.divergence_loss",
           "train.divergence_log_points", "checkpoint.keep")


def _is_per_run(field: str) -> bool:
  return (field in SETTINGS or defaults.role(field) == defaults.ANALYSIS
          or any(field == p or field.startswith(p + ".") for p in PER_RUN))


def check_group(configs: Sequence[ml_collections.ConfigDict], names: Sequence[str],
                field: str = "sweep.group_size") -> None:
  """Raises a one-line HfcError naming `field` when the runs `names` (configs
  `configs`) cannot share a step: they differ in a field that is neither a scalar
  setting (`SETTINGS`) nor handled per run (`PER_RUN`), or one of them turns a
  `SWITCHES` term on that another leaves off."""
  flat = [defaults.dotted_fields(c.to_dict()) for c in configs]
  for key in flat[0]:
    values = [f.get(key) for f in flat]
    if any(v != values[0] for v in values):
      if not _is_per_run(key):
        i = next(j for j, v in enumerate(values) if v != values[0])
        raise errors.HfcError(
            f"{field}: runs {names[0]!r} and {names[i]!r} differ in {key} "
            f"({values[0]!r} vs {values[i]!r}), which changes the program or the shapes "
            f"of the step; a group may differ only in seed, {', '.join(SETTINGS)} and "
            "eval.*: set sweep.group_size='auto' to group the runs that match.")
      if key in SWITCHES and any(v == 0 for v in values):
        i = next(j for j, v in enumerate(values) if (v == 0) != (values[0] == 0))
        raise errors.HfcError(
            f"{field}: runs {names[0]!r} and {names[i]!r} differ in whether {key} is on "
            f"({values[0]!r} vs {values[i]!r}), which changes the step; group them apart.")


def shape_key(config: ml_collections.ConfigDict) -> str:
  """Equal for two configs exactly when `check_group` lets them share a group."""
  flat = defaults.dotted_fields(config.to_dict())
  same = {k: v for k, v in flat.items() if not _is_per_run(k)}
  same.update({k: flat[k] != 0 for k in SWITCHES})
  return repr(sorted(same.items()))


def varying(configs: Sequence[ml_collections.ConfigDict]) -> tuple[str, ...]:
  """The `SETTINGS` whose values differ between `configs`, in `SETTINGS` order."""
  flat = [defaults.dotted_fields(c.to_dict()) for c in configs]
  return tuple(k for k in SETTINGS if any(f[k] != flat[0][k] for f in flat))


def settings_arrays(configs: Sequence[ml_collections.ConfigDict]) -> dict[str, np.ndarray]:
  """{dotted setting: (R,) float32 of each run's value} for the `varying` settings."""
  flat = [defaults.dotted_fields(c.to_dict()) for c in configs]
  return {k: np.array([f[k] for f in flat], np.float32) for k in varying(configs)}


# ---------------------------------------------------------------------------
# The stacked state
# ---------------------------------------------------------------------------
def stack(states: Sequence[train.TrainState], mesh) -> train.TrainState:
  """One TrainState whose every leaf is the runs' leaves stacked, (R, ...), split over
  the `runs` axis of `mesh` (`sharding.runs_sharding`)."""
  host = jax.device_get(list(states))
  stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *host)
  return jax.device_put(stacked, sharding.runs_sharding(mesh))


def unstack(stacked: train.TrainState, run_mesh) -> list[train.TrainState]:
  """Each run's TrainState out of `stacked`, replicated on `run_mesh` (the 1-D data
  mesh a run alone trains on), as a run alone holds it."""
  host = jax.device_get(stacked)
  runs = len(jax.tree.leaves(host)[0])
  return [sharding.put_replicated(jax.tree.map(lambda x, i=i: x[i], host), run_mesh)
          for i in range(runs)]


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------
def _run_step(state, images, labels, settings: dict, *, config, functional, steps_per_epoch,
              num_classes, adversary, input_fn):
  """`train.train_step` of one run, with its traced `settings` ({field: scalar})."""
  tc = config.train
  if "train.input_radius" in settings:   # this run's radius, traced
    input_fn = _component_fn(config, settings["train.input_radius"])
  if "model.dropout" in settings:        # this run's dropout rate, traced
    functional = _WithDropoutRate(functional, settings["model.dropout"])
  tx = optimizers.make_optimizer(
      config.optim, steps_per_epoch, tc.epochs,
      learning_rate=settings.get("optim.learning_rate"),
      weight_decay=settings.get("optim.weight_decay"))
  if adversary is not None:
    adversary = dataclasses.replace(adversary, eps=settings.get("adv.eps", adversary.eps),
                                    step_size=settings.get("adv.step_size",
                                                           adversary.step_size))
  return train.train_step(
      state, images, labels, functional=functional, tx=tx, rescale=config.data.rescale,
      adversary=adversary, input_fn=input_fn,
      mixup_alpha=settings.get("train.mixup_alpha", float(tc.mixup_alpha)),
      num_classes=num_classes,
      smooth_kernel_weight=settings.get("train.smooth_kernel_weight",
                                        float(tc.smooth_kernel_weight)))


def make_group_step(configs: Sequence[ml_collections.ConfigDict], functional: Functional,
                    mesh, *, steps_per_epoch: int, num_classes: int):
  """`step(stacked_state, images, labels) -> (stacked_state, metrics)` for the runs of
  `configs` (one group, `check_group`) on the (runs, data) `mesh`.

  images: (R, B, H, W, C) uint8 and labels (R, B) int32, run r's batch at [r]
  (`group_batches`, placed by `sharding.put_group_batch`). The metrics are those of
  `train.train_step` with a leading run axis: 'loss' (R,), 'accuracy' (R,),
  'nonfinite' (R, 3). The state is donated.
  """
  base = configs[0]
  input_fn = _component_fn(base, float(base.train.input_radius))
  one = lambda state, images, labels, settings: _run_step(
      state, images, labels, settings, config=base, functional=functional,
      steps_per_epoch=steps_per_epoch, num_classes=num_classes,
      adversary=adversarial.Adversary.from_config(base.adv), input_fn=input_fn)
  # Each device steps its own runs: `shard_map` is manual over `runs` (a vmap left to
  # the partitioner gathered the stacked state, 20-40x slower on 8 CPU devices) and
  # leaves `data` to the partitioner, which splits each run's batch as for a lone run.
  spec = jax.sharding.PartitionSpec(sharding.RUNS_AXIS)
  per_device = jax.shard_map(jax.vmap(one), mesh=mesh, in_specs=spec, out_specs=spec,
                             axis_names={sharding.RUNS_AXIS})
  runs = sharding.runs_sharding(mesh)
  jitted = jax.jit(per_device, out_shardings=(runs, runs), donate_argnums=0)
  return GroupStep(jitted, jax.device_put(settings_arrays(configs), runs))


@dataclasses.dataclass(frozen=True, eq=False)
class GroupStep:
  """The group step with its per-run settings bound: `step(state, images, labels)`.
  `jitted` is the jitted function or, after `compile`, its XLA executable (whose
  `memory_analysis()` `compiled_bytes` reads)."""
  jitted: Any
  settings: dict

  def __call__(self, state, images, labels):
    return self.jitted(state, images, labels, self.settings)

  def compile(self, state, images, labels) -> "GroupStep":
    """The same step compiled ahead of time for these (abstract) arguments
    (`abstract_arguments`): its memory is known before anything is placed."""
    return GroupStep(self.jitted.lower(state, images, labels, self.settings).compile(),
                     self.settings)


def abstract_arguments(run_state: train.TrainState, runs: int, batch_size: int,
                       x_train: np.ndarray, mesh):
  """ShapeDtypeStructs of the group step's (state, images, labels) for `runs` runs
  shaped as `run_state` (one run's TrainState) and batches of `batch_size` images like
  `x_train`'s, in the group's shardings: what `GroupStep.compile` needs, placing
  nothing on a device."""
  state_sharding = sharding.runs_sharding(mesh)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct((runs,) + a.shape, a.dtype,
                                                      sharding=state_sharding), run_state)
  batch_sharding = sharding.group_batch_sharding(mesh)
  images = jax.ShapeDtypeStruct((runs, batch_size) + x_train.shape[1:], x_train.dtype,
                                sharding=batch_sharding)
  labels = jax.ShapeDtypeStruct((runs, batch_size), np.int32, sharding=batch_sharding)
  return state, images, labels


def compiled_bytes(step: GroupStep) -> int:
  """Bytes one device holds while running the compiled `step` (`GroupStep.compile`;
  its executable's `memory_analysis()`): its arguments, outputs and temporaries, less
  the outputs that reuse donated arguments."""
  stats = step.jitted.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


@dataclasses.dataclass(frozen=True, eq=False)
class _WithDropoutRate:
  """`functional` whose `apply` uses one run's traced dropout `rate` instead of the
  model's (`Functional.apply(dropout_rate=...)`); built inside the traced step only."""
  functional: Functional
  rate: Any

  def apply(self, *args, **kwargs):
    return self.functional.apply(*args, dropout_rate=self.rate, **kwargs)

  def logits(self, *args, **kwargs):
    return self.functional.logits(*args, **kwargs)


def _component_fn(config, radius):
  """What the step trains on (`train.input_component` at `radius`, a float or one run's
  traced radius), or None for the original images. The partitioner splits the FFT
  over `data`."""
  if config.train.input_component == "original":
    return None
  return lambda x: transforms.frequency_component(
      x, config.train.input_component, radius, inclusive=config.eval.inclusive,
      rescale=config.data.rescale)


# ---------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------
def group_batches(x: np.ndarray, y: np.ndarray, configs: Sequence[ml_collections.ConfigDict],
                  *, epoch: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields each step's stacked batches of one epoch: images (R, B / P, H, W, C) uint8
  and labels (R, B / P) int32, run r's rows exactly those `pipeline.train_batches`
  gives that run alone (its own `config.seed`)."""
  per_run = [pipeline.train_batches(
      x, y, batch_size=c.train.batch_size, seed=c.seed, epoch=epoch,
      augment=c.data.augment, pad=c.data.aug_pad, pad_mode=c.data.aug_pad_mode,
      flip=c.data.aug_flip, process_index=process_index, process_count=process_count,
      start_step=start_step) for c in configs]
  for batches in zip(*per_run):
    yield np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
