"""Failure safety: runs that die cleanly, never save a bad state, and say what happened.

Each test is one failure seen on a real workdir: a diverged run, a corrupt checkpoint,
a changed config, two runs on one workdir, a full disk, Ctrl-C, a bad value, and a
finished run started again.
"""

import errno
import importlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hfc_jax import defaults, errors, fileio, main, sharding, train
from hfc_jax.analysis import common
from hfc_jax.run import resume
from hfc_jax.run import progress as progress_lib
from hfc_jax.workdir.layout import Workdir
from tests.conftest import ROOT, config_from_flags, main_command, run_main, tiny_config


def _snapshot(workdir):
  """Every file under `workdir` with its size and modification time."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in workdir.rglob("*") if p.is_file()}


def _error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith("hfc_jax:")]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
  """A finished 1-epoch default.py workdir (8 steps), made by `main.run` in process with
  the config `run_main(workdir, "--config.train.epochs=1")` runs (tests copy it with
  shutil.copytree before they change it)."""
  workdir = tmp_path_factory.mktemp("failure") / "run"
  main.run(config_from_flags("--config.train.epochs=1"), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
  """A finished 2-epoch `tiny_config` workdir (checkpoints 8 and 16) on 8 devices; tests
  copy it with shutil.copytree before they change it."""
  workdir = tmp_path_factory.mktemp("failure") / "two_epochs"
  train.train_and_evaluate(tiny_config(), str(workdir), mesh=sharding.make_mesh(8))
  return workdir


# In process, as main runs them (main_test runs exit statuses 0 and 2 as a command; the
# diverged run below runs 3): what a second process would add is a start of JAX.
@pytest.mark.slow
def test_a_finished_run_started_again_returns_at_once_and_writes_nothing(one_epoch, capsys,
                                                                          caplog):
  before = _snapshot(one_epoch)
  start = time.time()
  with caplog.at_level(logging.INFO, logger="absl"):   # whatever verbosity absl was left at
    main.run(config_from_flags("--config.train.epochs=1"), str(one_epoch))
  assert time.time() - start < 10
  assert ("is finished: it holds all 1 epochs (step 8); nothing to do"
          in capsys.readouterr().out)
  logged = " ".join(r.getMessage() for r in caplog.records)
  assert "images/s" not in logged and "data embedded" not in logged
  assert _snapshot(one_epoch) == before


@pytest.mark.slow
def test_a_finished_run_whose_newest_checkpoint_is_cut_short_says_so_and_retrains(
    tmp_path, two_epochs, capsys, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(two_epochs, workdir)
  for path in (workdir / "checkpoints" / "16").rglob("*"):   # as a disk cut short leaves it
    if path.is_file() and "ocdbt.process_0" in str(path) and path.stat().st_size > 1000:
      with open(path, "r+b") as f:
        f.truncate(100)
  with caplog.at_level(logging.INFO, logger="absl"):   # whatever verbosity absl was left at
    main.run(config_from_flags("--config.tensorboard=False"), str(workdir))
  assert "is finished" not in capsys.readouterr().out
  logged = " ".join(r.getMessage() for r in caplog.records)
  assert "the finished run's newest checkpoint" in logged
  assert "/16 cannot be read" in logged and "resumed at step 8" in logged
  assert "data embedded" in logged   # what the finished run above must not log
  assert os.listdir(workdir / "unreadable_checkpoints") == ["16"]
  assert common.restore(str(workdir)).step == 16     # retrained, readable again


@pytest.mark.slow
def test_a_changed_result_field_refuses_in_one_line_and_changes_nothing(one_epoch):
  before = _snapshot(one_epoch)
  with pytest.raises(errors.HfcError) as raised:
    main.run(config_from_flags("--config.train.epochs=2", "--config.optim.name=sgd"),
             str(one_epoch))
  line = str(raised.value)
  assert "\n" not in line and "optim.name 'adam' -> 'sgd'" in line
  assert "--allow_changed_config" in line
  assert _snapshot(one_epoch) == before
  # The same refusal for the other fields that change the result.
  for field, value, shown in (
      ("optim.learning_rate", 0.01, "optim.learning_rate 0.001 -> 0.01"),
      ("train.batch_size", 32, "train.batch_size 64 -> 32"),
      ("model.name", "plain_cnn", "model.name 'small_cnn' -> 'plain_cnn'")):
    with pytest.raises(errors.HfcError, match=re.escape(shown)):
      train.train_and_evaluate(tiny_config(**{"train.epochs": 2, field: value}),
                               str(one_epoch), mesh=sharding.make_mesh(8))
    assert _snapshot(one_epoch) == before


@pytest.mark.slow
def test_extending_epochs_is_allowed_and_recorded(tmp_path, one_epoch):
  mesh = sharding.make_mesh(8)
  workdir = str(tmp_path / "run")
  shutil.copytree(one_epoch, workdir)   # trained 1 epoch with tensorboard on, kept here
  history = train.train_and_evaluate(
      tiny_config(**{"train.epochs": 2, "eval.radii": (4,), "tensorboard": True}),
      workdir, mesh=mesh)
  assert [r["epoch"] for r in history] == [1, 2] and "test/hfc_8" not in history[-1]
  entries = [json.loads(l) for l in open(os.path.join(workdir, "config_history.jsonl"))]
  assert entries[-1]["step"] == 8
  assert entries[-1]["changes"]["train.epochs"] == [1, 2]
  assert entries[-1]["changes"]["eval.radii"] == [[4, 8], [4]]
  assert sorted(entries[-1]["changes"]) == ["eval.radii", "train.epochs"], entries[-1]
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["epochs"] == 2


def test_a_config_compares_equal_to_its_json_copy_and_unused_fields_are_no_change():
  config = defaults.get_config()
  config.bands.bands = ((0, 4), (4, 8))     # nested tuples read back as nested lists
  config.eval.bands = ((0, 4),)
  saved = json.loads(json.dumps(config.to_dict()))
  assert resume.changes(saved, config.to_dict()) == {}
  # The radius of a run trained on the original images changes nothing ...
  config.train.input_radius = 12.0
  assert resume.check(saved, config.to_dict(), Workdir("w")) == {}
  # ... but does once the run trains on a component.
  saved["train"]["input_component"] = config.train.input_component = "hfc"
  with pytest.raises(errors.HfcError, match="train.input_radius 8.0 -> 12.0"):
    resume.check(saved, config.to_dict(), Workdir("w"))


def test_a_run_saved_with_the_old_norm_name_resumes_with_the_new_one():
  """model.norm 'batch_stats' was renamed 'paper_bn': a checkpoint's config holding the
  old name is no change of the model; another norm is."""
  config = defaults.get_config()
  config.model.norm = "paper_bn"
  saved = json.loads(json.dumps(config.to_dict()))
  saved["model"]["norm"] = "batch_stats"
  assert resume.check(saved, config.to_dict(), Workdir("w")) == {}
  config.model.norm = "batchnorm"
  with pytest.raises(errors.HfcError, match="model.norm 'paper_bn' -> 'batchnorm'"):
    resume.check(saved, config.to_dict(), Workdir("w"))


@pytest.mark.slow
def test_a_diverged_run_stops_at_once_and_keeps_the_good_checkpoint(tmp_path):
  # The case: SGD without BN, continued at lr 1e6, reaches NaN in a few steps.
  workdir = tmp_path / "diverge"
  sgd = {"optim.name": "sgd", "optim.learning_rate": 0.01, "model.norm": "none",
         "train.epochs": 1}
  train.train_and_evaluate(tiny_config(**sgd), str(workdir), mesh=sharding.make_mesh(8))
  good = common.restore(str(workdir))
  before_metrics = (workdir / "metrics.jsonl").read_text()
  result = run_main(workdir, "--config.train.epochs=2", "--config.optim.name=sgd",
                    "--config.optim.learning_rate=1e6", "--config.model.norm=none",
                    "--config.checkpoint.every_steps=2", "--allow_changed_config")
  assert result.returncode == errors.EXIT_DIVERGED == 3, result.stderr[-3000:]
  lines = _error_lines(result.stderr)
  assert len(lines) == 1 and "training diverged at step" in lines[0], lines
  assert "the last checkpoint is kept" in lines[0]
  diverged = int(lines[0].split("training diverged at step ")[1].split(":")[0])
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
  assert 8 in steps and max(steps) < diverged, (steps, diverged)
  assert (workdir / "metrics.jsonl").read_text() == before_metrics
  for step in steps:   # every checkpoint holds finite parameters; step 8 the good ones
    restored = common.restore(str(workdir), step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
  for a, b in zip(jax.tree.leaves(common.restore(str(workdir), 8).params),
                  jax.tree.leaves(good.params)):
    np.testing.assert_array_equal(a, b)


def _saved_leaves(workdir) -> dict[int, list[np.ndarray]]:
  """{step: every array leaf of the saved train state (parameters, optimiser state, BN
  statistics)}, read back raw from each checkpoint."""
  out = {}
  for step in sorted(int(s) for s in os.listdir(workdir / "checkpoints")):
    tree = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    out[step] = [np.asarray(x) for x in jax.tree.leaves(tree)]
  return out


def test_a_run_whose_optimiser_state_overflows_stops_with_nothing_nonfinite_saved(tmp_path):
  """Adam at lr 1e4 without BN: the loss reaches ~1e27 but stays finite, and so do the
  parameters, while Adam's second moment overflows to inf (every later update is then
  0). The run must stop with exit 3, not end "done" at chance accuracy."""
  workdir = tmp_path / "adam"
  config = tiny_config(**{"optim.name": "adam", "optim.learning_rate": 1e4,
                          "model.norm": "none", "checkpoint.every_steps": 1,
                          "train.log_every_steps": 1})
  with pytest.raises(errors.RunFailed) as raised:
    train.train_and_evaluate(config, str(workdir), mesh=sharding.make_mesh(8))
  assert raised.value.exit_status == errors.EXIT_DIVERGED
  assert "inf or NaN in the optimiser state" in str(raised.value), raised.value
  diverged = int(str(raised.value).split("at step ")[1].split(":")[0])
  saved = _saved_leaves(workdir)
  assert saved and max(saved) < diverged, (sorted(saved), diverged)
  for step, leaves in saved.items():
    floats = [x for x in leaves if np.issubdtype(x.dtype, np.floating)]
    assert floats and all(np.isfinite(x).all() for x in floats), step


def test_nonfinite_parts_names_each_part_of_the_state():
  state = train.TrainState(step=jnp.zeros((), jnp.int32),
                           params={"w": jnp.ones(3)}, model_state={"m": jnp.ones(2)},
                           opt_state=(jnp.zeros((), jnp.int32), {"nu": jnp.ones(3)}),
                           rng=jnp.zeros(2, jnp.uint32))
  assert train.nonfinite_parts(state).tolist() == [False, False, False]
  for part, index in (("params", 0), ("opt_state", 1), ("model_state", 2)):
    bad = jax.tree.map(lambda x: x.at[0].set(jnp.inf) if x.dtype == jnp.float32 else x,
                       getattr(state, part))
    flags = train.nonfinite_parts(state.replace(**{part: bad})).tolist()
    assert flags == [i == index for i in range(3)], (part, flags)
  nan = state.replace(params={"w": jnp.array([0.0, jnp.nan, 1.0])})
  assert train.nonfinite_parts(nan).tolist() == [True, False, False]


@pytest.mark.slow
def test_a_loss_above_the_divergence_threshold_stops_after_the_set_log_points(tmp_path):
  watch = progress_lib.LossWatch(10.0, 3)
  for step, loss in enumerate((11.0, 12.0, 9.0, 11.0, 13.0), 1):   # a dip resets it
    watch.add(step, loss)
  with pytest.raises(errors.RunFailed, match="above train.divergence_loss=10 for 3 log "
                     "intervals in a row") as raised:
    watch.add(6, 14.0)
  assert raised.value.exit_status == errors.EXIT_DIVERGED
  progress_lib.LossWatch(0.0, 1).add(1, 1e30)   # off at 0
  # Wired into training: a threshold below any loss stops the run at the 2nd log point.
  config = tiny_config(**{"train.divergence_loss": 1e-6, "train.divergence_log_points": 2})
  with pytest.raises(errors.RunFailed, match="training diverged at step 8: the mean loss"):
    train.train_and_evaluate(config, str(tmp_path / "run"), mesh=sharding.make_mesh(8))


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog,
                                                                  two_epochs):
  mesh = sharding.make_mesh(8)
  workdir = tmp_path / "run"
  shutil.copytree(two_epochs, workdir)   # checkpoints 8, 16
  data_files = [p for p in (workdir / "checkpoints" / "16").rglob("*")
                if p.is_file() and "ocdbt.process_0" in str(p) and p.stat().st_size > 1000]
  assert data_files
  for path in data_files:      # as a copy or a disk cut short would leave them
    with open(path, "r+b") as f:
      f.truncate(100)
  # What the run gives with checkpoint 16 intact: epoch 3 from there (resuming is
  # bit-exact, tests/resume_test.py, so falling back to 8 must give the same).
  shutil.copytree(two_epochs, tmp_path / "reference")
  reference = train.train_and_evaluate(tiny_config(**{"train.epochs": 3}),
                                       str(tmp_path / "reference"), mesh=mesh)
  with caplog.at_level("WARNING"):
    history = train.train_and_evaluate(tiny_config(**{"train.epochs": 3}), str(workdir),
                                       mesh=mesh)
  warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
  assert len(warnings) == 1 and "/16 cannot be read" in warnings[0]
  assert os.listdir(workdir / "unreadable_checkpoints") == ["16"]
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert history[-1]["test/clean"] == reference[-1]["test/clean"]
  # A missing metadata file is the same: the newest readable checkpoint is used.
  (workdir / "checkpoints" / "24" / "meta" / "metadata").unlink()
  trained = common.restore(str(workdir))
  assert trained.step == 16


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_refuses_naming_the_holder(tmp_path):
  workdir = tmp_path / "locked"
  workdir.mkdir()
  holder = subprocess.Popen(["sleep", "60"])
  try:
    (workdir / Workdir.LOCK).write_text(json.dumps({
        "host": socket.gethostname(), "pid": holder.pid, "started": time.time(),
        "heartbeat": time.time(), "token": "other"}))
    # In process (main's exit status 2 for a refusal: test_a_changed_result_field_...).
    with pytest.raises(errors.HfcError) as raised:
      main.run(tiny_config(), str(workdir))
    line = str(raised.value)
    assert "\n" not in line and f"is in use by another run (pid {holder.pid} on" in line
    assert sorted(os.listdir(workdir)) == [Workdir.LOCK]
  finally:
    holder.kill()
    holder.wait()
  # The holder is dead now: its lock is stale and the next run takes it over.
  history = train.train_and_evaluate(tiny_config(**{"train.epochs": 1}), str(workdir),
                                     mesh=sharding.make_mesh(8))
  assert len(history) == 1 and not (workdir / Workdir.LOCK).exists()


def full_disk_serialize(original):
  """Orbax's array writer `original` (ArrayHandler.serialize) made to fail with ENOSPC
  from its second call on: the first checkpoint is written, the next save fails."""
  calls = {"n": 0}

  async def full_disk(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] > 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    return await original(self, *args, **kwargs)
  return full_disk


FULL_DISK_RUN = """
import sys
import orbax.checkpoint as ocp
from absl import app
from tests.failure_test import full_disk_serialize
handler = ocp.type_handlers.ArrayHandler
handler.serialize = full_disk_serialize(handler.serialize)
from hfc_jax import main
sys.argv = ["hfc_jax.main", *sys.argv[1:]]
app.run(main.main, flags_parser=main.parse_flags)
"""


@pytest.mark.slow
def test_a_full_disk_in_a_real_run_is_one_line_and_nothing_else(tmp_path):
  """As a user sees it: the second checkpoint write fails with ENOSPC inside Orbax's
  background save (a patched array writer); stderr holds absl's info lines and one error
  line, no Orbax error log, no traceback; the last good checkpoint is intact. (In a
  process that lives on, such as pytest's, Orbax's commit thread of the failed save
  waits minutes for a signal that never comes: main exits at once instead.)"""
  command = main_command(tmp_path / "run", "--config.checkpoint.every_steps=3")
  result = subprocess.run([command[0], "-c", FULL_DISK_RUN, *command[3:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == errors.EXIT_SAVE_FAILED, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if not l.startswith("I")]
  assert len(lines) == 1, lines[:20]
  assert lines[0].startswith("hfc_jax: error: a checkpoint could not be written to "), lines
  assert "(no space left on device); the run stopped; the last good checkpoint: step 3" \
      in lines[0]
  # The checkpoint before stands, no epoch was recorded, and the lock is released.
  workdir = tmp_path / "run"
  assert common.restore(str(workdir)).step == 3
  assert (workdir / "metrics.jsonl").read_text() == ""
  assert not (workdir / Workdir.LOCK).exists()


def test_a_workdir_file_that_cannot_be_written_stops_the_run_in_one_line(tmp_path,
                                                                        monkeypatch):
  target = tmp_path / "metrics.jsonl"
  fileio.write_text(target, "old\n")

  def no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(fileio.os, "replace", no_space)
  with pytest.raises(errors.RunFailed, match=r"metrics.jsonl could not be written \(No "
                     r"space left on device\); the run stopped") as raised:
    fileio.write_text(target, "new\n")
  assert raised.value.exit_status == errors.EXIT_SAVE_FAILED
  assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path, caplog):
  proc = subprocess.Popen(main_command(tmp_path / "run", "--config.train.log_every_steps=1",
                                       "--config.train.epochs=2"),
                          cwd=ROOT, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if "] step 3/" in line:
      proc.send_signal(signal.SIGINT)
      break
  lines.extend(proc.stderr)
  assert proc.wait(timeout=120) == 130
  stderr = "".join(lines)
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  lines = _error_lines(stderr)
  assert len(lines) == 1 and lines[0].startswith("hfc_jax: stopped by Ctrl-C at step "), lines
  step = int(lines[0].split("at step ")[1].split(";")[0])
  assert str(step) in os.listdir(tmp_path / "run" / "checkpoints")
  # The same run started again resumes there (in process: the command line's resume is
  # tests/resume_test.py's).
  with caplog.at_level("INFO", logger="absl"):   # whatever verbosity absl was left at
    main.run(config_from_flags("--config.train.log_every_steps=1",
                               "--config.train.epochs=2"), str(tmp_path / "run"))
  assert any(r.getMessage().startswith(f"resumed at step {step}:") for r in caplog.records)


@pytest.mark.parametrize("overrides,message", [
    ({"train.batch_size": 1024}, "train.batch_size=1024 exceeds the 512 training images."),
    ({"data.name": "npz", "data.path": "/nonexistent/data.npz"},
     "data.path='/nonexistent/data.npz': no such file; set --config.data.path to an .npz "
     "with x_train, y_train, x_test, y_test."),
])
def test_a_value_refused_once_the_data_is_loaded_leaves_no_workdir(tmp_path, overrides,
                                                                  message):
  """Refused in seconds, after the new workdir was created: it is removed again. (The
  data-free refusals come before it is created: validation_test, main_test.)"""
  start = time.time()
  with pytest.raises(errors.HfcError) as raised:
    main.run(tiny_config(**overrides), str(tmp_path / "new"))
  assert time.time() - start < 20
  assert str(raised.value) == message
  assert not (tmp_path / "new").exists()


def test_an_unexpected_argument_is_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as raised:
    main.main(["hfc_jax.main", "extra_argument"])
  assert raised.value.code == 2
  assert capsys.readouterr().err == (
      "hfc_jax: error: unexpected arguments ['extra_argument']; every setting is a flag "
      "(--workdir, --config, --config.FIELD=VALUE; see --help).\n")


def test_a_sweep_refused_for_its_data_leaves_no_workdir(tmp_path):
  config = importlib.import_module("configs.fig4_batch_size").get_config()
  config.data.num_train = 16
  with pytest.raises(errors.HfcError) as raised:
    main.run(config, str(tmp_path / "sweep"))
  assert str(raised.value) == "train.batch_size=32 exceeds the 16 training images."
  assert not (tmp_path / "sweep").exists()
