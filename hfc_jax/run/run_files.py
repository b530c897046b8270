"""One training run's files across its starts: what `restore_run` finds in the workdir
(the newest readable checkpoint, its epoch records and the partly trained epoch), what
`start_run` records at each (re)start (config changes, provenance, config.json), what the
train loop adds (`RunFiles.save`, `RunFiles.end_epoch`: checkpoints, then metrics.jsonl
once each commits). Used by the lone run (`hfc_jax.train`) and by each run of a
run-parallel group (`hfc_jax.run.group`), so the two leave the same workdir. `state`
is a `train.TrainState`, replicated.
"""

import dataclasses
import functools
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from hfc_jax.run import progress as progress_lib
from hfc_jax.run import resume
from hfc_jax.workdir import checkpointing, provenance, records
from hfc_jax.workdir.layout import Workdir

TrainState = Any   # hfc_jax.train.TrainState (train imports this module)


@dataclasses.dataclass
class RunFiles:
  """One training run's checkpoints and records: what `restore_run` found, then what
  the train loop adds (`save`, `end_epoch`)."""
  config: ml_collections.ConfigDict
  workdir: Workdir
  ckpt: checkpointing.Checkpointer
  history: list[dict]                    # finished epochs' records (metrics.jsonl)
  progress: progress_lib.EpochProgress   # the running sums of the epoch in progress
  data_meta: dict                        # num_classes, channels, image_size
  recorder: records.Recorder | None = None   # set by `start_run`

  @property
  def finished(self) -> bool:
    return len(self.history) >= self.config.train.epochs

  def save(self, state: TrainState, progress: progress_lib.EpochProgress,
           on_commit=None) -> None:
    """Starts saving `state` (one run's, replicated) with the history so far and the
    partly trained epoch's `progress`."""
    meta = {"config": self.config.to_dict(), "history": self.history, **self.data_meta,
            "epoch_progress": dataclasses.asdict(progress)}
    self.ckpt.save(int(state.step), state, meta, on_commit=on_commit)

  def end_epoch(self, state: TrainState, score, steps_per_epoch: int) -> None:
    """Scores `state` at an epoch's end (`score(state) -> record`), appends the epoch's
    record, and saves; metrics.jsonl is rewritten once that checkpoint commits."""
    t0, progress = time.perf_counter(), self.progress
    record = {"epoch": len(self.history) + 1, "step": int(state.step),
              **progress.means(steps_per_epoch), "train_time_s": progress.train_time_s,
              **score(state)}
    record["epoch_time_s"] = progress.train_time_s + time.perf_counter() - t0
    self.history.append({k: records.json_scalar(v) for k, v in record.items()})
    self.progress = progress_lib.EpochProgress()
    self.save(state, self.progress, on_commit=functools.partial(
        self.recorder.write_history, list(self.history)))
    self.recorder.log_epoch(self.history[-1], self.config.train.epochs)

  def close(self) -> None:
    try:
      self.ckpt.close()
    finally:
      if self.recorder is not None:
        self.recorder.close()


def restore_run(config, workdir: Workdir, state: TrainState, dataset, steps_per_epoch: int,
                *, allow_changes: bool, max_step: int | None = None
                ) -> tuple[TrainState, RunFiles, dict]:
  """(state, run files, config changes) of `workdir`: restored from its newest readable
  checkpoint at or before `max_step` (`resume.restore_latest`), else the fresh `state`.
  Writes nothing but the setting-aside of unreadable checkpoints."""
  ckpt = checkpointing.Checkpointer(workdir, keep=config.checkpoint.keep)
  state, history, progress, changed = resume.restore_latest(
      ckpt, state, config, workdir, steps_per_epoch, allow_changes=allow_changes,
      max_step=max_step)
  meta = {"num_classes": dataset.num_classes, "channels": dataset.channels,
          "image_size": dataset.image_size}
  return state, RunFiles(config, workdir, ckpt, history, progress, meta), changed


def start_run(run: RunFiles, step: int, changed: dict) -> None:
  """Records a (re)start at `step` (process 0: config changes, provenance, config.json)
  and opens its recorder, which rewrites metrics.jsonl to the restored history."""
  config, workdir = run.config, run.workdir
  if "train.epochs" in changed and config.optim.schedule != "constant":
    logging.warning("train.epochs changed %s -> %s: the %s learning-rate schedule now "
                    "spans the new length, so the run differs from one started with it",
                    *changed["train.epochs"], config.optim.schedule)
  if jax.process_index() == 0:
    resume.record(workdir, step, changed)
    provenance.record_start(workdir, step)
    workdir.write_config(config.to_dict())
  run.recorder = records.Recorder(workdir, tensorboard=config.tensorboard,
                                  history=run.history)
  run.recorder.write_history(run.history)
