"""Resuming a run: where it continues, what may change, and the record of what did.

Running the same command again resumes a workdir: `finished_history` answers a
finished one without loading anything, `restore_latest` restores the newest readable
checkpoint (setting aside unreadable ones). The config given then is compared with the
one stored in the checkpoint:

- Fields that change the result (roles 'result' and 'training_data' in
  `defaults.ROLES`: the seed, the model, the data, the optimiser and learning rate, the
  batch size, what the step trains on, adversarial training) must match: a difference refuses the run with one line listing the
  differences, and nothing in the workdir changes. `--allow_changed_config` continues
  anyway (the run then mixes two settings; the change is recorded).
- Every other field may change, and is recorded: `train.epochs` (to extend a run),
  evaluation (`eval.*`), logging, checkpointing, the device count, the data directory.

Every start that resumes with changes appends one line to the workdir's
`config_history.jsonl` ({"time", "step", "changes": {field: [old, new]}});
`config.json` holds the config of the latest start.
"""

import time
from typing import Any

import jax
from absl import logging

from hfc_jax import defaults, errors
from hfc_jax.run import progress
from hfc_jax.workdir import checkpointing
from hfc_jax.workdir.layout import Workdir

_SHOWN = 6   # differences spelled out in the refusal line


# Fields that cannot change the result while another field has the given value:
# {field: (other field, value)}. Training on the original images ignores the radius.
UNUSED_WHEN = {"train.input_radius": ("train.input_component", "original")}


def changes(saved: dict, config: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (saved value, new value)} for every field of both that differs. A
  field only one of them has (added or removed by a later version of hfc_jax) is not
  a change: it did not exist when the other was written; nor is a field that neither
  config uses (`UNUSED_WHEN`)."""
  old, new = (defaults.dotted_fields(defaults.current_names(c)) for c in (saved, config))

  def unused(field: str) -> bool:
    other, value = UNUSED_WHEN.get(field, (None, None))
    return other is not None and old.get(other) == new.get(other) == value

  return {k: (old[k], new[k]) for k in sorted(set(old) & set(new))
          if old[k] != new[k] and not unused(k)}


def changes_result(field: str) -> bool:
  """Whether a change of dotted `field` changes what the run computes (its role in
  `defaults.ROLES`)."""
  return defaults.role(field) in (defaults.RESULT, defaults.TRAINING_DATA)


def check(saved: dict, config: dict, workdir: Workdir, *, allow: bool = False
          ) -> dict[str, tuple[Any, Any]]:
  """Returns the changes from the saved config; raises a one-line HfcError when one
  of them changes the result and `allow` is False."""
  found = changes(saved, config)
  fixed = {k: v for k, v in found.items() if changes_result(k)}
  if fixed and not allow:
    shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(fixed.items())[:_SHOWN])
    more = f" and {len(fixed) - _SHOWN} more" if len(fixed) > _SHOWN else ""
    raise errors.HfcError(
        f"workdir={workdir.path!r} holds a run with other settings that change the result: "
        f"{shown}{more}; use a new --workdir, the same values, or --allow_changed_config "
        "to continue it anyway.")
  return found


def record(workdir: Workdir, step: int, found: dict[str, tuple[Any, Any]]) -> None:
  """Appends this start's changes to config_history.jsonl. Call from process 0 only."""
  if not found:
    return
  workdir.append_config_change({
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
      "changes": {k: [old, new] for k, (old, new) in found.items()}})


def finished_history(config, workdir: Workdir, *, allow_changes: bool = False
                     ) -> list | None:
  """The history of a workdir whose latest checkpoint already holds all
  `train.epochs` (None otherwise); read without loading data or locking, and
  touching nothing. Its settings must match as for a resume. The checkpoint's arrays
  are read once (`Checkpointer.verify`): a finished run whose newest checkpoint is
  unreadable says so and is not finished (the full path sets it aside and retrains
  from the one before)."""
  if not workdir.has_checkpoints():
    return None
  ckpt = checkpointing.Checkpointer(workdir, read_only=True)
  step, meta = None, None
  try:
    step = ckpt.latest_step()
    meta = ckpt.restore_meta(step) if step is not None else None
    if meta is None or len(meta["history"]) < config.train.epochs:
      return None
    check(meta["config"], config.to_dict(), workdir, allow=allow_changes)
    ckpt.verify(step)
  except errors.HfcError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
    if meta is not None:  # finished, but unreadable: the full path sets it aside
      logging.warning("the finished run's newest checkpoint %s/%d cannot be read (%s: %s); "
                      "it will be set aside and the run resumed from the one before",
                      ckpt.directory, step, type(e).__name__,
                      (str(e).splitlines() or [""])[0][:200])
    return None
  finally:
    ckpt.close()
  if jax.process_index() == 0:
    print(f"hfc_jax: {workdir} is finished: it holds all {len(meta['history'])} epochs "
          f"(step {step}); nothing to do. Metrics: "
          f"{workdir.metrics}", flush=True)
  return meta["history"]


def restore_latest(ckpt: checkpointing.Checkpointer, state, config, workdir: Workdir,
                   steps_per_epoch: int, *, allow_changes: bool = False,
                   max_step: int | None = None):
  """(state, history, partial-epoch sums, config changes) from the newest readable
  checkpoint (restored into the shapes and shardings of the fresh TrainState `state`),
  or `state` itself for a fresh start. `max_step`: only checkpoints at or before it
  count (a run-parallel group resumes all its runs at one step). A checkpoint that cannot be read (a truncated file, a
  missing metadata file) is reported in one line, set aside, and the one before used.
  HfcError when the run's settings changed in a way that changes the result
  (`resume.check`) or its step does not fit the epoch length."""
  def read(step):
    meta = ckpt.restore_meta(step)
    found = check(meta["config"], config.to_dict(), workdir, allow=allow_changes)
    try:
      restored, meta = ckpt.restore(checkpointing.abstract_like(state), step)
    except Exception:  # pylint: disable=broad-except  (Orbax raises many types)
      fixed = [k for k in found if changes_result(k)]
      if fixed:   # allowed changes that give the state another shape (a new optimiser)
        raise errors.HfcError(
            f"workdir={workdir.path!r}: its checkpoint at step {step} does not fit the changed "
            f"settings ({', '.join(fixed[:4])}); use a new --workdir.") from None
      raise
    return restored, meta, found

  steps = [s for s in ckpt.all_steps() if max_step is None or s <= max_step]
  newest = checkpointing.newest_readable(ckpt, read, lambda step, e: _set_aside(ckpt, step, e),
                                         steps=steps)
  if newest is not None:
    step, (restored, meta, found) = newest
    history = meta["history"]
    sums = progress.EpochProgress(**meta.get("epoch_progress", {}))
    if int(restored.step) != len(history) * steps_per_epoch + sums.steps:
      raise errors.HfcError(
          f"workdir={workdir.path!r}: its checkpoint at step {int(restored.step)} does not fit "
          f"{steps_per_epoch} steps per epoch (the data changed); use a new --workdir or "
          "the same config.")
    logging.info("resumed at step %d: epoch %d, %d of its %d steps done", step,
                 len(history) + 1, sums.steps, steps_per_epoch)
    return restored, history, sums, found
  if steps:
    raise errors.HfcError(f"workdir={workdir.path!r}: no checkpoint in {ckpt.directory} "
                          "can be read.")
  return state, [], progress.EpochProgress(), {}


def _set_aside(ckpt: checkpointing.Checkpointer, step: int, error: Exception) -> None:
  """Reports an unreadable checkpoint in one line and moves it out of the way."""
  where = ckpt.set_aside(step)
  logging.warning("checkpoint %s/%d cannot be read (%s: %s); moved to %s, resuming from "
                  "the one before", ckpt.directory, step, type(error).__name__,
                  (str(error).splitlines() or [""])[0][:200], where)
