"""Run-parallel groups (hfc_jax/stacked.py, hfc_jax/run/group.py): each run of a group
trains as it would alone.

Tolerances, measured on this CPU (XLA may fuse the vmapped program differently from the
lone one, and then the float rounding differs, even in the forward pass). Max
|grouped - alone| after 3 SGD steps of 64 images, losses / parameters:
  1 device (1x1):          4.8e-6 / 6.7e-5 (seeds), 0 / 0 (radii with dropout rates)
  8 devices, 1x8 mesh:     4.5e-6 / 6.7e-5
  8 devices, 4x2 mesh:     4.8e-7 / 1.2e-7
  8 devices, 2x4 mesh:     2.4e-7 / 6e-8 (learning rates)
  8 devices, 8x1 mesh:     4.8e-7 / 3.3e-5 (each run's batch on one device against the
                           lone run's over 8: the 1-vs-8-device difference of train_test)
The tests assert 1e-4 / 1e-3. Adam is not compared parameter by parameter: it turns
float noise in near-zero gradients into steps of +-lr (see tests/train_test.py).
"""

import json
import os

import jax
import numpy as np
import pytest

from hfc_jax import errors, optimizers, sharding, stacked, train
from hfc_jax.analysis import common
from hfc_jax.data import pipeline
from hfc_jax.run import group, group_memory, sweep
from hfc_jax.workdir.layout import Workdir
from tests.conftest import assert_refused_in_process, random_batch, tiny_config

LOSS_ATOL = 1e-4
PARAM_ATOL = 1e-3
# Steps of the driver (2 epochs of 4 here): float noise grows to ~1e-4 in the losses and
# may flip a test image or two, as between lone runs on 1 and on 2 devices (measured
# over 16 steps: 1.47309 vs 1.47113 train loss, 0.691 vs 0.707 test accuracy at lr 0.05).
DRIVER_RTOL = 1.5e-2
DRIVER_PARAM_ATOL = 5e-3


def _sgd(**overrides):
  return tiny_config(**{"optim.name": "sgd", "optim.learning_rate": 0.05, **overrides})


# ---------------------------------------------------------------------------
# Fast: data order, settings, planning and refusals
# ---------------------------------------------------------------------------
def test_group_batches_are_each_runs_own_batches():
  x, y = random_batch(96)
  configs = [tiny_config(seed=s, **{"data.augment": True, "train.batch_size": 16})
             for s in (0, 5, 7)]
  grouped = list(stacked.group_batches(x, y, configs, epoch=1, start_step=2))
  assert len(grouped) == 96 // 16 - 2 and grouped[0][0].shape == (3, 16, 32, 32, 3)
  for r, c in enumerate(configs):
    alone = list(pipeline.train_batches(x, y, batch_size=16, seed=c.seed, epoch=1,
                                        augment=True, pad=2, pad_mode="zero", flip=True,
                                        start_step=2))
    for (gx, gy), (ax, ay) in zip(grouped, alone):
      np.testing.assert_array_equal(gx[r], ax)
      np.testing.assert_array_equal(gy[r], ay)
  assert not np.array_equal(grouped[0][1][0], grouped[0][1][1])   # seeds differ


def test_settings_that_differ_become_per_run_arrays():
  configs = [tiny_config(seed=s, **{"optim.learning_rate": lr})
             for s, lr in ((0, 0.1), (1, 0.2), (2, 0.2))]
  assert stacked.varying(configs) == ("optim.learning_rate",)
  arrays = stacked.settings_arrays(configs)
  np.testing.assert_array_equal(arrays["optim.learning_rate"],
                                np.float32([0.1, 0.2, 0.2]))
  assert stacked.settings_arrays(configs[:1]) == {}


def _sweep_config(overrides: dict, group_size, run_devices=1, base=None):
  config = tiny_config() if base is None else base
  config.sweep.runs = tuple(overrides)
  config.sweep.overrides = overrides
  config.sweep.group_size = group_size
  config.sweep.run_devices = run_devices
  return config


def test_plan_groups_runs_and_refuses_what_cannot_share_a_step():
  overrides = {"s0": {"seed": 0}, "s1": {"seed": 1}, "bn": {"model": {"norm": "batchnorm"}},
               "lr": {"optim": {"learning_rate": 0.01}}}
  config = _sweep_config(overrides, "auto")
  assert group.plan(config, sweep.expand(config)) == [[0, 1, 3], [2]]
  config = _sweep_config(overrides, 1)
  assert group.plan(config, sweep.expand(config)) == [[0], [1], [2], [3]]
  config = _sweep_config(overrides, 2)   # [s0, s1], [bn, lr]
  with pytest.raises(errors.HfcError, match="runs 'bn' and 'lr' differ in model.norm"):
    group.plan(config, sweep.expand(config))
  config = _sweep_config(overrides, 3)   # s0, s1, bn: the norm changes the model
  with pytest.raises(errors.HfcError, match=r"^sweep.group_size: runs 's0' and 'bn' "
                     r"differ in model.norm \('paper_bn' vs 'batchnorm'\)"):
    group.plan(config, sweep.expand(config))
  config = _sweep_config({"a": {"seed": 0}, "b": {"model": {"dropout": 0.5}}}, 2)
  with pytest.raises(errors.HfcError, match="whether model.dropout is on"):
    group.plan(config, sweep.expand(config))
  config = _sweep_config({"a": {"seed": 0}, "b": {"optim": {"weight_decay": 1e-4}}}, 2)
  with pytest.raises(errors.HfcError, match="whether optim.weight_decay is on"):
    group.plan(config, sweep.expand(config))
  config = _sweep_config({"a": {"seed": 0}, "b": {"seed": 1}, "c": {"seed": 2}}, 3,
                         run_devices=2)
  with pytest.raises(errors.HfcError, match=r"^sweep.run_devices=2 must divide the run "
                     "count of every group"):
    group.plan(config, sweep.expand(config))
  config = _sweep_config({"a": {"seed": 0}, "b": {"seed": 1}}, 0)
  with pytest.raises(errors.HfcError, match=r"^sweep.group_size=0 is out of range"):
    group.plan(config, sweep.expand(config))


# ---------------------------------------------------------------------------
# The step: a group against the same runs alone
# ---------------------------------------------------------------------------
def _lone_losses_and_state(config, batches, devices, step_cache):
  """3 steps of the lone run `config` on a 1-D mesh of `devices` devices."""
  mesh = sharding.make_mesh(devices)
  tx = optimizers.make_optimizer(config.optim, 8, config.train.epochs)
  functional, state = train.create_train_state(train.create_model(config, 10, 3, 32), tx,
                                               config.seed, mesh)
  key = (devices, config.optim.learning_rate, config.train.input_radius,
         config.model.dropout)
  if key not in step_cache:
    step_cache[key] = train.make_config_train_step(config, functional, tx, mesh, 10,
                                                   adversary=None)
  losses = []
  for x, y in batches:
    state, metrics = step_cache[key](state, *sharding.put_batch(mesh, x, y))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state)


def _group_losses_and_states(configs, batches, mesh_shape):
  """3 steps of `configs` as one group on a (runs, data) mesh of `mesh_shape`."""
  runs, data = mesh_shape
  mesh = sharding.make_group_mesh(runs, runs * data)
  run_mesh = sharding.make_mesh(runs * data)
  states = []
  for c in configs:
    tx = optimizers.make_optimizer(c.optim, 8, c.train.epochs)
    functional, state = train.create_train_state(train.create_model(c, 10, 3, 32), tx,
                                                 c.seed, run_mesh)
    states.append(state)
  state = stacked.stack(states, mesh)
  assert state.params["head"]["kernel"].sharding.spec[0] == sharding.RUNS_AXIS
  step = stacked.make_group_step(configs, functional, mesh, steps_per_epoch=8,
                                 num_classes=10)
  n, losses = len(configs), []
  for x, y in batches:
    images, labels = sharding.put_group_batch(mesh, np.stack([x] * n), np.stack([y] * n))
    state, metrics = step(state, images, labels)
    assert metrics["loss"].shape == (n,)
    losses.append(np.asarray(metrics["loss"]))
  return np.stack(losses, 1), [jax.device_get(s) for s in stacked.unstack(state, run_mesh)]


def _assert_group_matches_lone(configs, mesh_shape):
  # Batches of 64, the driver tests' train.batch_size: the 1x1 group of 2 seeds is then
  # the very program the memory tests compile (one compile for the module).
  batches = [random_batch(64, seed=i) for i in range(3)]
  grouped_losses, grouped = _group_losses_and_states(configs, batches, mesh_shape)
  cache, worst = {}, [0.0, 0.0]
  for r, config in enumerate(configs):
    losses, alone = _lone_losses_and_state(config, batches, mesh_shape[0] * mesh_shape[1],
                                           cache)
    np.testing.assert_allclose(grouped_losses[r], losses, rtol=0, atol=LOSS_ATOL)
    worst[0] = max(worst[0], float(np.max(np.abs(grouped_losses[r] - losses))))
    assert int(grouped[r].step) == 3
    np.testing.assert_array_equal(grouped[r].rng, alone.rng)
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(grouped[r].params)):
      np.testing.assert_allclose(b, a, rtol=0, atol=PARAM_ATOL)
      worst[1] = max(worst[1], float(np.max(np.abs(a - b))))
  # The runs really differ (a group that trained one run R times would fail here).
  assert np.max(np.abs(grouped_losses[0] - grouped_losses[1])) > 1e-3
  print(f"mesh {mesh_shape}: max |loss diff| {worst[0]:.2e}, max |param diff| {worst[1]:.2e}")


# Each distinct program costs seconds to compile, the 3 steps nothing: a group of a
# traced setting has 2 runs (each run needs its own lone program, its value a constant
# there), and the 1x1 seed group of 2 is the memory tests' group (`_sgd`, batch 64).
@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape,runs", [((1, 1), 2), ((1, 8), 3), ((4, 2), 4),
                                             ((8, 1), 8)])
def test_a_seed_group_trains_each_run_as_alone(mesh_shape, runs):
  _assert_group_matches_lone([_sgd(seed=s) for s in range(runs)], mesh_shape)


@pytest.mark.slow
@pytest.mark.compile_bound
def test_a_learning_rate_group_trains_each_run_as_alone():
  # A warm-up and a cosine decay: the traced rate goes through the whole schedule. On a
  # 2x4 mesh each run, with its own rate, is on its own 4 devices; how a traced setting
  # is vmapped on one device is what the 1x1 groups below test (the rate's code is the
  # same on every mesh; the meshes themselves are the seed groups').
  configs = [_sgd(**{"optim.learning_rate": lr, "optim.schedule": "cosine",
                     "optim.warmup_epochs": 0.25, "optim.weight_decay": 1e-3})
             for lr in (0.01, 0.1)]
  _assert_group_matches_lone(configs, (2, 4))


@pytest.mark.slow
@pytest.mark.compile_bound
def test_an_input_radius_and_dropout_rate_group_trains_each_run_as_alone():
  # Table 1's set-up, training on the LFC with one radius per run, and figure 5's
  # dropout run at two rates, in one group (one group program and two lone ones, not
  # two and four): both settings traced in the step. Each run's traced rate drops the
  # units its own key drops alone (the same mask), so the runs match as the seeds do.
  configs = [_sgd(**{"train.input_component": "lfc", "train.input_radius": r,
                     "model.dropout": rate}) for r, rate in ((4.0, 0.25), (12.5, 0.75))]
  assert stacked.varying(configs) == ("train.input_radius", "model.dropout")
  _assert_group_matches_lone(configs, (1, 1))


# ---------------------------------------------------------------------------
# The driver: workdirs as a lone run leaves them
# ---------------------------------------------------------------------------
def _files(workdir) -> set[str]:
  """The workdir's file names, with checkpoint steps but without Orbax's internals."""
  out = set()
  for root, dirs, files in os.walk(workdir):
    rel = os.path.relpath(root, workdir)
    if rel.count(os.sep) >= 1 and rel.startswith(Workdir.CHECKPOINTS):
      continue
    out |= {os.path.normpath(os.path.join(rel, f)) for f in files + dirs
            if not f.startswith("events.out")}
  return out


def _history_close(a: list[dict], b: list[dict]) -> None:
  assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
  for ra, rb in zip(a, b):
    assert set(ra) == set(rb)
    for k in ra:
      if k.endswith("time_s"):
        continue
      assert ra[k] == pytest.approx(rb[k], rel=DRIVER_RTOL, abs=DRIVER_RTOL), k


# The driver tests' data: 256 training images (4 steps of 64 an epoch), and 128 test
# and 128 training images scored at each epoch's end (one evaluation batch each). Their
# cost is the evaluations and steps they run as much as their compiles.
SMALL = {"data.num_train": 256, "data.num_test": 128, "eval.train_subset": 128}


# Tests of the driver's control flow score the clean images alone (`_small(**CLEAN)`);
# the workdir tests keep the default evaluators, the epoch records a lone run writes.
CLEAN = {"eval.evaluators": ("clean",)}


def _small(**overrides):
  return _sgd(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def trained_group(tmp_path_factory):
  """Two runs (seeds 0 and 1) trained as one group, one run on each of 2 devices along
  `runs`, where each run alone trains on a 2-device data mesh: 2 epochs of 4 steps, a
  checkpoint every 2 steps. Returns (configs, workdirs, histories); the tests only
  read the workdirs."""
  configs = [_small(seed=s, num_devices=2, tensorboard=True,
                    **{"checkpoint.every_steps": 2, "optim.learning_rate": 0.01})
             for s in (0, 1)]
  root = tmp_path_factory.mktemp("group")
  workdirs = [Workdir.of(str(root / f"s{s}")) for s in (0, 1)]
  return configs, workdirs, group.train_group(configs, workdirs, run_devices=2)


@pytest.mark.slow
def test_a_group_leaves_each_workdir_as_a_lone_run_does(tmp_path, trained_group):
  configs, grouped, histories = trained_group
  for config, workdir, history in zip(configs, grouped, histories):
    alone = str(tmp_path / "alone" / workdir.name)
    lone_history = train.train_and_evaluate(config, alone)
    _history_close(history, lone_history)
    assert [json.loads(l) for l in open(workdir.metrics)] == history
    assert json.load(open(workdir.config)) == json.load(open(Workdir.of(alone).config))
    assert _files(workdir.path) == _files(alone)
    assert len(workdir.read_starts()) == 1
    mine, theirs = common.restore(workdir.path), common.restore(alone)
    assert mine.history == history and int(mine.step) == int(theirs.step) == 8
    for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(theirs.params)):
      np.testing.assert_allclose(a, b, rtol=0, atol=DRIVER_PARAM_ATOL)
  # The finished group is answered from its checkpoints, as a finished run is.
  assert group.train_group(configs, grouped, run_devices=2) == histories


@pytest.mark.slow
def test_a_killed_group_resumes_every_run_at_one_step_exactly(tmp_path, trained_group):
  configs, full, _ = trained_group   # the same runs trained without a stop
  cut = [Workdir.of(str(tmp_path / "cut" / w.name)) for w in full]
  short = [c.copy_and_resolve_references() for c in configs]
  for c in short:
    c.train.epochs = 1
  group.train_group(short, cut, run_devices=2)   # steps 2 and 4 saved for both runs
  # Killed between two runs' commits: run s1 lacks the newest checkpoint.
  from hfc_jax.workdir import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(cut[1])
  assert ckpt.all_steps() == [2, 4]
  ckpt.drop_after(2)
  ckpt.close()
  group.train_group(configs, cut, run_devices=2)
  assert checkpointing.Checkpointer(cut[0], read_only=True).all_steps()[-1] == 8
  for a, b in zip(full, cut):
    pa, pb = common.restore(a.path).params, common.restore(b.path).params
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(x, y)   # the same group program: bit-exact
    assert len(b.read_starts()) == 2


@pytest.mark.slow
def test_a_diverging_run_stops_alone_and_the_others_finish(tmp_path):
  configs = [_small(num_devices=1, **{"optim.learning_rate": lr, **CLEAN})
             for lr in (0.05, 1e30)]
  workdirs = [Workdir.of(str(tmp_path / n)) for n in ("good", "bad")]
  with pytest.raises(errors.RunFailed, match=r"^run bad: training diverged at step \d+: inf or NaN"):
    group.train_group(configs, workdirs)
  good = [json.loads(l) for l in open(workdirs[0].metrics)]
  assert [r["epoch"] for r in good] == [1, 2] and good[-1]["train_loss"] < 3
  assert not os.path.exists(workdirs[1].metrics) or not open(workdirs[1].metrics).read()


# ---------------------------------------------------------------------------
# Memory: a group larger than a device holds
# ---------------------------------------------------------------------------
def test_check_memory_refuses_in_one_line_how_many_fit():
  gib = 2 ** 30
  group_memory.check_memory(2 * gib, runs=4, run_devices=1, device_bytes=3 * gib)   # 2 <= 2.7
  cases = [  # step bytes per device, runs, run_devices, device bytes -> runs that fit
      (4 * gib, 4, 1, 2.5 * gib, 2),    # 1 GiB a run, 2.25 GiB usable
      (2 * gib, 4, 2, 1.5 * gib, 2),    # 2 runs a device, 1 GiB each, 1.35 usable: 1 x 2
      (8 * gib, 8, 1, 4.0 * gib, 3),
      (4 * gib, 4, 1, 0.5 * gib, 0)]    # not one
  for step_bytes, runs, run_devices, device_bytes, fit in cases:
    assert group_memory.runs_that_fit(step_bytes, runs // run_devices, device_bytes,
                               run_devices) == fit
    with pytest.raises(group_memory.GroupTooLarge) as raised:
      group_memory.check_memory(step_bytes, runs, run_devices, device_bytes)
    text = str(raised.value)
    assert raised.value.fit == fit and "\n" not in text
    assert text.startswith(f"sweep.group_size: a group of {runs} runs needs "
                           f"{step_bytes / gib:.2f} GiB")
    assert (f"at most {fit} runs fit" if fit else "set sweep.group_size=1") in text


def test_device_memory_on_the_cpu_is_the_hosts_share():
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert group_memory.device_memory_bytes(jax.devices()[0]) == host // len(jax.devices())


def _compiled_step_bytes(runs, run_devices, num_devices):
  # `_sgd` with batches of 64: these steps are those the next test and the seed groups
  # compile (2 runs on 1x1, 4 on 1x1, 8 on 8x1).
  configs = [_sgd(seed=s, num_devices=num_devices) for s in range(runs)]
  x = np.zeros((512, 32, 32, 3), np.uint8)
  tx = optimizers.make_optimizer(configs[0].optim, 8, 2)
  model = train.create_model(configs[0], 10, 3, 32)
  functional, state = train.create_train_state(model, tx, 0,
                                               sharding.make_mesh(num_devices))
  mesh = sharding.make_group_mesh(run_devices, num_devices)
  step = stacked.make_group_step(configs, functional, mesh, steps_per_epoch=8,
                                 num_classes=10)
  return stacked.compiled_bytes(step.compile(*stacked.abstract_arguments(
      state, runs, 64, x, mesh)))


@pytest.mark.slow
@pytest.mark.compile_bound
def test_the_compiled_step_needs_memory_in_proportion_to_its_runs_per_device():
  two = _compiled_step_bytes(2, 1, 1)
  # Measured (SGD with momentum, 64 images a run): 55.3 MB for 2 small_cnn runs on one
  # device, 2.00x that for 4; 8 runs over 8 devices along `runs` hold one each: 27.3 MB,
  # what one run alone on one device needs.
  assert 1e6 < two < 1e9
  assert _compiled_step_bytes(4, 1, 1) == pytest.approx(2 * two, rel=0.1)
  assert _compiled_step_bytes(8, 8, 8) == pytest.approx(two / 2, rel=0.1)


@pytest.mark.slow
def test_a_group_larger_than_memory_is_refused_and_auto_trains_it_in_parts(
    tmp_path, monkeypatch):
  from hfc_jax import main  # pylint: disable=g-import-not-at-top
  seen = []
  real = stacked.compiled_bytes
  monkeypatch.setattr(stacked, "compiled_bytes", lambda c: seen.append(real(c)) or seen[-1])
  # A device that holds the step of 2.2 of the 4 runs: 2 fit.
  monkeypatch.setattr(group_memory, "device_memory_bytes",
                      lambda device: 0.55 * seen[0] / group_memory.MEMORY_SHARE)
  config = _sweep_config({f"s{s}": {"seed": s} for s in range(4)}, group_size=4,
                         base=_small(num_devices=1, **CLEAN))
  config.train.epochs = 1
  config.data.num_train = 128   # 2 steps
  with pytest.raises(group_memory.GroupTooLarge, match="^sweep.group_size: a group of 4 runs "
                     r"needs .* at most 2 runs fit: set sweep.group_size=2 or 'auto'\.$"):
    main.run(config, str(tmp_path / "fixed"))
  assert not (tmp_path / "fixed").exists()   # refused before any run wrote: removed

  config.sweep.group_size = "auto"
  main.run(config, str(tmp_path / "auto"))
  share = group_memory.MEMORY_SHARE
  assert len(seen) == 4 and seen[2] == seen[3] < share * (0.55 * seen[0] / share)
  for s in range(4):
    records = [json.loads(l) for l in open(tmp_path / "auto" / f"s{s}" / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1]


def test_main_refuses_a_group_that_cannot_share_a_step(tmp_path):
  # In process (main_test runs a refusal's exit status 2 and its stderr line).
  config = tmp_path / "sweep.py"
  config.write_text(
      "from configs import default\nimport ml_collections\n"
      "def get_config():\n  c = default.get_config()\n  c.sweep.runs = ('a', 'b')\n"
      "  c.sweep.overrides = ml_collections.ConfigDict({'a': {}, 'b': {'model': "
      "{'norm': 'none'}}})\n  c.sweep.group_size = 2\n  return c\n")
  assert_refused_in_process(tmp_path, "sweep.group_size: runs 'a' and 'b' differ in "
                            "model.norm", config=str(config))
