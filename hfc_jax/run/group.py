"""Training a run-parallel group: several runs in one jitted step, each in its own workdir.

`train_group(configs, workdirs)` trains runs that may share a step (`stacked.check_group`:
they differ only in the seed and scalar settings) together, and leaves each workdir as
`train.train_and_evaluate` would have left it: its own lock, config.json, provenance,
metrics.jsonl, TensorBoard files, curves.png and Orbax checkpoints, each checkpoint
written from the run's slice of the stacked state in the lone run's format (replicated
on the lone run's 1-D mesh), so resume, every `--config.mode` study and the report
treat the runs as runs trained alone. It reuses the lone run's pieces:
`run_files.RunFiles` (checkpoint meta, epoch records), `train.make_scorer` (each run
scored on its own evaluation subsets) and `progress.StepMetrics` (each run's log lines
and divergence checks).

- Resume: every run resumes at the newest step all of them hold; checkpoints that only
  some runs had written (a group killed between two runs' commits) are deleted and those
  steps retrained. Runs already finished are left out of the group.
- Divergence: a run whose loss or state stops being finite (or whose loss stays above
  `train.divergence_loss`) stops alone: it is reported, saves nothing more and keeps its
  last good checkpoint, while the others train on; the group then ends with
  `errors.RunFailed` naming it (exit 3), as a lone run would.
- Preemption (SIGTERM, Ctrl-C): every run is saved at the same step, then `Preempted`.
"""

import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from hfc_jax import adversarial, errors, optimizers, sharding, stacked, train
from hfc_jax import validation
from hfc_jax import data as data_lib
from hfc_jax.data import pipeline
from hfc_jax.run import group_memory, lock, preemption, resume, run_files
from hfc_jax.run import progress as progress_lib
from hfc_jax.workdir import checkpointing
from hfc_jax.workdir.layout import Workdir


def runs_axis(group_size: int, run_devices: int) -> int:
  """The mesh's `runs` extent for a group of `group_size` runs: `run_devices`, or, for
  a group that resumes with fewer runs (some finished), its largest divisor below it."""
  return max(d for d in range(1, run_devices + 1)
             if group_size % d == 0 and run_devices % d == 0)


def train_group(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[Workdir],
                *, run_devices: int = 1, allow_changes: bool = False,
                fit_memory: bool = False) -> list[list[dict]]:
  """Trains the runs `configs` together, run i in `workdirs[i]`, on a (runs, data) mesh
  with `run_devices` devices along `runs`; returns each run's history, as
  `train.train_and_evaluate` does. Raises HfcError for runs that cannot share a step
  or a lock that another run holds, GroupTooLarge for a group whose step needs more
  memory than a device has (with `fit_memory`, the runs are trained instead in
  consecutive groups of as many as fit), `errors.RunFailed` once the others finished
  when a run diverged, `preemption.Preempted` after saving every run at one step."""
  try:
    return _train_group_once(configs, workdirs, run_devices, allow_changes)
  except group_memory.GroupTooLarge as too_large:
    if not fit_memory or too_large.fit < 1:
      raise
    logging.info("%s: training the %d runs in groups of %d", too_large, len(configs),
                 too_large.fit)
    histories = []
    for start in range(0, len(configs), too_large.fit):
      histories += train_group(configs[start:start + too_large.fit],
                               workdirs[start:start + too_large.fit],
                               run_devices=run_devices, allow_changes=allow_changes)
    return histories


def _train_group_once(configs, workdirs, run_devices, allow_changes):
  """`train_group` of all `configs` in one group."""
  workdirs = [Workdir.of(w) for w in workdirs]
  stacked.check_group(configs, [w.name for w in workdirs])
  histories = [resume.finished_history(c, w, allow_changes=allow_changes)
               for c, w in zip(configs, workdirs)]
  todo = [i for i, h in enumerate(histories) if h is None]
  if len(todo) == 1:
    i = todo[0]
    histories[i] = train.train_and_evaluate(configs[i], workdirs[i],
                                            allow_changes=allow_changes)
  elif todo:
    watch = preemption.Watch()
    locks = [lock.WorkdirLock(workdirs[i]) for i in todo]
    try:
      for workdir_lock in locks:
        workdir_lock.acquire()
      trained = _train_group([configs[i] for i in todo], [workdirs[i] for i in todo],
                             run_devices, watch, locks, allow_changes)
      for i, history in zip(todo, trained):
        histories[i] = history
    finally:
      for workdir_lock in locks:
        workdir_lock.release()
      watch.close()
  return histories


def _restore_common(configs, workdirs, states, dataset, steps_per_epoch, allow_changes):
  """Each run's (state, RunFiles, changes), restored at the newest step every run holds
  (a run without a checkpoint: all start afresh); newer checkpoints are deleted."""
  def latest(w: Workdir) -> int:
    if not w.has_checkpoints():
      return 0
    ckpt = checkpointing.Checkpointer(w, read_only=True)
    try:
      return max(ckpt.all_steps(), default=0)
    finally:
      ckpt.close()

  target = min(latest(w) for w in workdirs)
  while True:
    opened = [run_files.restore_run(c, w, s, dataset, steps_per_epoch,
                                    allow_changes=allow_changes, max_step=target)
              for c, w, s in zip(configs, workdirs, states)]
    steps = [int(state.step) for state, _, _ in opened]
    if len(set(steps)) == 1:
      break
    for _, run, _ in opened:   # one run's checkpoint at `target` was unreadable
      run.ckpt.close()
    target = min(steps)
  for _, run, _ in opened:
    dropped = run.ckpt.drop_after(steps[0])
    if dropped:
      logging.info("%s: checkpoints %s deleted: the group resumes at step %d",
                   run.workdir, dropped, steps[0])
  return opened


def _train_group(configs, workdirs, run_devices: int, watch: preemption.Watch,
                 locks: list[lock.WorkdirLock], allow_changes: bool) -> list[list[dict]]:
  """`train_group` for the unfinished runs, with the watch listening and locks held."""
  # ----- Set up meshes and data --------------------------------------------
  base, n = configs[0], len(configs)
  run_mesh = sharding.make_mesh(base.num_devices)   # each run's layout alone
  mesh = sharding.make_group_mesh(runs_axis(n, run_devices), base.num_devices)
  dataset = data_lib.load(base.data)
  for config in configs:
    validation.check_with_data(config, dataset, run_mesh)
  sharding.check_batch_size("train.batch_size", base.train.batch_size,
                            mesh.shape[sharding.DATA_AXIS])
  tc = base.train
  steps_per_epoch = pipeline.num_train_steps(len(dataset.x_train), tc.batch_size)
  logging.info("group of %d runs on a (runs, data) mesh of %s; %d epochs of %d steps",
               n, dict(mesh.shape), tc.epochs, steps_per_epoch)

  # ----- Models, states, resume --------------------------------------------
  states = []
  for config in configs:
    tx = optimizers.make_optimizer(config.optim, steps_per_epoch, tc.epochs)
    model = train.create_model(config, dataset.num_classes, dataset.channels,
                               dataset.image_size)
    functional, state = train.create_train_state(model, tx, config.seed, run_mesh)
    states.append(state)
  # The step, compiled ahead of time: its memory is checked before any file is written
  # or the group's state placed, and the executable is the one that trains.
  step_fn = stacked.make_group_step(configs, functional, mesh,
                                    steps_per_epoch=steps_per_epoch,
                                    num_classes=dataset.num_classes).compile(
      *stacked.abstract_arguments(states[0], n, tc.batch_size, dataset.x_train, mesh))
  group_memory.check_memory(stacked.compiled_bytes(step_fn), n,
                            mesh.shape[sharding.RUNS_AXIS],
                            group_memory.device_memory_bytes(mesh.devices.flat[0]))
  opened = _restore_common(configs, workdirs, states, dataset, steps_per_epoch,
                           allow_changes)
  runs = [run for _, run, _ in opened]
  for state, run, changed in opened:
    run_files.start_run(run, int(state.step), changed)
  group_state = stacked.stack([state for state, _, _ in opened], mesh)
  del states, opened

  # ----- Evaluation functions ----------------------------------------------
  scores = [train.make_scorer(c, functional, run_mesh, train.eval_sets(c, dataset),
                              adversarial.Adversary.from_config(c.adv)) for c in configs]
  failed: dict[int, errors.RunFailed] = {}

  def fail(i: int, error: errors.RunFailed) -> None:
    failed[i] = error
    print(f"hfc_jax: run {workdirs[i].name} stopped: {error}; the other runs go on",
          flush=True)

  def save_all(state, on_epoch_end: bool = False):
    for i, run_state in enumerate(stacked.unstack(state, run_mesh)):
      if i in failed:
        continue
      if on_epoch_end:
        runs[i].end_epoch(run_state, scores[i], steps_per_epoch)
      else:
        runs[i].save(run_state, runs[i].progress)
    for i, run in enumerate(runs):
      if i not in failed:
        run.ckpt.wait()

  # ----- Train loop --------------------------------------------------------
  started = time.perf_counter()
  watches = [progress_lib.LossWatch(c.train.divergence_loss, c.train.divergence_log_points)
             for c in configs]
  try:
    for epoch in range(len(runs[0].history), tc.epochs):
      group_state = _train_epoch(
          group_state, step_fn, dataset, mesh, configs, runs, epoch, steps_per_epoch,
          watch=watch, heartbeat=lambda: [l.heartbeat() for l in locks],
          save_all=save_all, loss_watches=watches, failed=failed, fail=fail)
      save_all(group_state, on_epoch_end=True)
      if watch.requested:   # a SIGTERM during evaluation: this epoch's checkpoints are saved
        raise watch.stopped(int(jax.device_get(group_state.step)[0]), _where(workdirs))
  finally:
    for run in runs:
      run.close()
  seconds = time.perf_counter() - started
  for i, run in enumerate(runs):
    if i not in failed:
      train.closing(run.workdir, run.history, seconds)
  if failed:
    raise errors.RunFailed("; ".join(f"run {workdirs[i].name}: {e}" for i, e in failed.items()),
                           errors.EXIT_DIVERGED)
  return [run.history for run in runs]


def _where(workdirs: Sequence[Workdir]) -> str:
  return ", ".join(w.checkpoints for w in workdirs)


class GroupMetrics(progress_lib.StepMetrics):
  """`progress.StepMetrics` of a group's stacked step metrics: fetched late, as for one
  run, then split by run and recorded by each run's own StepMetrics (its log lines,
  epoch sums and divergence checks); a run that diverges is handed to `fail(i, error)`
  and recorded no more."""

  def __init__(self, per_run: list[progress_lib.StepMetrics], failed: dict, fail):
    super().__init__(None, None, total_steps=0, batch_size=0)
    self.per_run, self.failed, self.fail = per_run, failed, fail

  def _drain(self, interval) -> None:
    if interval is None or not interval[1]:
      return
    step, metrics, seconds = interval
    fetched = jax.device_get(metrics)
    for i, run_metrics in enumerate(self.per_run):
      if i in self.failed:
        continue
      try:
        run_metrics.record(step, [{k: v[i] for k, v in m.items()} for m in fetched],
                           seconds)
      except errors.RunFailed as e:
        self.fail(i, e)


def _train_epoch(state, step_fn, dataset, mesh, configs, runs: list[run_files.RunFiles],
                 epoch: int, steps_per_epoch: int, *, watch: preemption.Watch, heartbeat,
                 save_all, loss_watches, failed: dict, fail):
  """The group's `train._train_epoch`: the remaining steps of epoch `epoch` for every
  run at once; every `checkpoint.every_steps` steps and at a preemption every live run
  is saved at the same step. Returns the stacked state."""
  base = configs[0]
  tc, every = base.train, base.checkpoint.every_steps
  start = next(run for i, run in enumerate(runs) if i not in failed).progress.steps
  batches = stacked.group_batches(dataset.x_train, dataset.y_train, configs, epoch=epoch,
                                  start_step=start, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  placed = pipeline.prefetch((sharding.put_group_batch(mesh, x, y) for x, y in batches),
                             size=tc.prefetch)
  metrics = GroupMetrics([progress_lib.StepMetrics(
      run.progress, run.recorder, total_steps=tc.epochs * steps_per_epoch,
      batch_size=tc.batch_size, loss_watch=loss_watch)
      for run, loss_watch in zip(runs, loss_watches)], failed, fail)
  t0 = time.perf_counter()

  def add_time():
    for run in runs:
      run.progress.train_time_s += time.perf_counter() - t0

  def checkpoint(step):
    nonlocal t0
    metrics.flush(step)
    add_time()
    save_all(state)
    t0 = time.perf_counter()

  for i, (images, labels) in enumerate(placed, start=start):
    state, step_metrics = step_fn(state, images, labels)
    metrics.add(step_metrics)
    step = epoch * steps_per_epoch + i + 1
    if (i + 1) % tc.log_every_steps == 0:
      metrics.mark(step)
      for run in runs:
        run.ckpt.check()
      heartbeat()
      if len(failed) == len(runs):
        raise next(iter(failed.values()))
    if watch.reached(step):
      checkpoint(step)
      raise watch.stopped(step, _where([run.workdir for run in runs]))
    if every and step % every == 0 and i + 1 < steps_per_epoch:
      checkpoint(step)
  metrics.flush(epoch * steps_per_epoch + steps_per_epoch)
  add_time()
  if len(failed) == len(runs):
    raise next(iter(failed.values()))
  return state


def plan(config: ml_collections.ConfigDict, runs) -> list[list[int]]:
  """The groups of a sweep's `runs` ([(name, config, overrides)], `sweep.expand`), as
  lists of indices into `runs`, in the order they train.

  `sweep.group_size` 1 trains every run alone; an integer k > 1 makes groups of k
  consecutive runs (the last may be smaller), which must be able to share a step
  (`stacked.check_group`); 'auto' puts together all runs whose settings let them share a
  step, in the order of their first run. Each group larger than one must be a multiple
  of `sweep.run_devices`. One-line HfcErrors name the field.
  """
  size, run_devices = config.sweep.group_size, config.sweep.run_devices
  if size != "auto":
    size = int(errors.check_range("sweep.group_size", size, 1, None, integer=True))
  run_devices = int(errors.check_range("sweep.run_devices", run_devices, 1, None,
                                       integer=True))
  if size == "auto":
    keyed: dict[str, list[int]] = {}
    for i, (_, run_config, _) in enumerate(runs):
      keyed.setdefault(stacked.shape_key(run_config), []).append(i)
    groups = list(keyed.values())
  else:
    groups = [list(range(i, min(i + size, len(runs)))) for i in range(0, len(runs), size)]
  if any(len(g) > 1 for g in groups) and jax.process_count() > 1:
    raise errors.HfcError(f"sweep.group_size={size!r}: run-parallel groups train on one "
                          f"host; this run has {jax.process_count()} processes.")
  for group in groups:
    if len(group) > 1:
      stacked.check_group([runs[i][1] for i in group], [runs[i][0] for i in group])
      if len(group) % run_devices:
        raise errors.HfcError(
            f"sweep.run_devices={run_devices} must divide the run count of every group; "
            f"the group {[runs[i][0] for i in group]} has {len(group)} runs (set "
            f"sweep.group_size to a multiple of {run_devices}).")
  if run_devices > 1:
    devices = sharding.mesh_size(config.num_devices)
    if devices % run_devices:
      raise errors.HfcError(f"sweep.run_devices={run_devices} must divide the {devices} "
                            "devices of the mesh.")
    data = devices // run_devices
    if config.train.batch_size % data:
      raise errors.HfcError(
          f"sweep.run_devices={run_devices} leaves {data} devices per run, which "
          f"train.batch_size={config.train.batch_size} does not divide.")
  return groups
