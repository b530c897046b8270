"""`python -m hfc_jax.main` end to end: outputs, kill-and-resume, and bad input."""

import concurrent.futures
import importlib
import inspect
import json
import os
import pathlib
import subprocess
import sys
import struct
import time

import jax
import numpy as np
import pytest

from hfc_jax import defaults, errors, main
from hfc_jax.analysis import common
from hfc_jax import data as data_lib
from hfc_jax.workdir.layout import Workdir
from tests.conftest import (ROOT, TINY_RADII, config_from_flags, main_command, numpy_split,
                            run_main, xla_flags_env)

def tensorboard_scalars(logdir) -> dict[tuple[str, int], float]:
  """{(tag, step): value} of the scalar summaries in the event files under `logdir`,
  read as TFRecords (length, crc, Event proto, crc) without TensorFlow."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  found = {}
  for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        found[(value.tag, event.step)] = value.simple_value
  return found


def _params(workdir):
  """The latest parameters of a workdir, restored onto the CPU whatever the topology."""
  return common.restore(str(workdir)).params


@pytest.mark.slow
def test_main_end_to_end_writes_metrics_and_checkpoints(tmp_path):
  result = run_main(tmp_path / "run")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["epoch"] for r in records] == [1, 2]
  expected = {"epoch", "step", "train_loss", "train_accuracy", "train_time_s",
              "epoch_time_s", "test/loss", "train_eval/loss", "first_conv_smoothness"}
  for split in ("test", "train_eval"):
    expected |= {f"{split}/clean"} | {f"{split}/{kind}_{r}" for kind in ("lfc", "hfc")
                                      for r in TINY_RADII}
  assert set(records[-1]) == expected
  for key in expected - {"epoch", "step"}:
    assert np.isfinite(records[-1][key])
  assert records[-1]["step"] == 2 * 512 // 64
  # Keyed by step: 8 steps per epoch, and a step checkpoint every 500 steps (none here).
  assert sorted(int(s) for s in os.listdir(tmp_path / "run" / "checkpoints")) == [8, 16]
  # TensorBoard holds every epoch's scalars, at the epoch's last step.
  scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
  for record in records:
    assert scalars[("test/clean", record["step"])] == pytest.approx(record["test/clean"])
    assert scalars[("test/hfc_8", record["step"])] == pytest.approx(record["test/hfc_8"])
  assert "images/s" in result.stderr
  # A laptop-style restore onto the CPU reproduces the recorded test accuracy.
  trained = common.restore(str(tmp_path / "run"))
  assert trained.epoch == 2 and trained.history == records
  assert trained.params["first_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert trained.params["first_conv"]["kernel"].devices() == {jax.devices("cpu")[0]}
  dataset = data_lib.load(trained.config.data)
  # The default model normalises with batch statistics: score in eval-size batches.
  logits_fn = jax.jit(trained.functional.logits)
  x = dataset.x_test.astype(np.float32) / 255
  logits = np.concatenate([logits_fn(trained.params, trained.model_state, x[i:i + 128])
                           for i in range(0, len(x), 128)])
  accuracy = np.mean(np.argmax(logits, -1) == dataset.y_test)
  assert accuracy == pytest.approx(records[-1]["test/clean"], abs=1e-6)
  # And the recorded HFC accuracy at r = 8, with the split done the original code's way.
  hfc = numpy_split(x, 8)[1].astype(np.float32)
  logits = np.concatenate([logits_fn(trained.params, trained.model_state, hfc[i:i + 128])
                           for i in range(0, len(x), 128)])
  accuracy = np.mean(np.argmax(logits, -1) == dataset.y_test)
  assert accuracy == pytest.approx(records[-1]["test/hfc_8"], abs=2 / 256)


def test_a_bad_config_value_is_one_line_and_exit_2(tmp_path):
  """The command line's side of every refusal of `validation.check` (each one is tested
  in process in validation_test): exit status 2, that one line, no traceback, and no
  workdir (checked before it is created)."""
  result = run_main(tmp_path / "bad", "--config.optim.b2=1.0", timeout=120)
  assert result.returncode == 2
  err_lines = [l for l in result.stderr.splitlines() if l.startswith("hfc_jax: error:")]
  assert err_lines == ["hfc_jax: error: optim.b2=1.0 is out of range; allowed: [0.0, 1.0)."], (
      result.stderr[-2000:])
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_unwritable_workdir_is_refused(tmp_path):
  """In process: main prints this HfcError after "hfc_jax: error: " and exits 2
  (test_a_bad_config_value_is_one_line_and_exit_2 runs that path as a process)."""
  locked = tmp_path / "locked"
  locked.mkdir()
  (locked / "keep.txt").write_text("precious")
  os.chmod(locked, 0o500)
  try:
    if os.access(locked, os.W_OK):   # root ignores permission bits: use a file path
      target = locked / "keep.txt" / "run"
    else:
      target = locked / "run"
    with pytest.raises(errors.HfcError) as raised:
      main.run(config_from_flags(), str(target))
  finally:
    os.chmod(locked, 0o700)
  text = str(raised.value)
  assert text.startswith("workdir=") and "is not writable" in text and "\n" not in text
  assert (locked / "keep.txt").read_text() == "precious"


def test_workdir_check_is_safe_when_processes_check_at_once(tmp_path):
  """The processes of a multi-host run check one shared workdir together: each probe
  must be its own file (a fixed name raced: one process removed the other's probe)."""
  workdir = tmp_path / "shared"
  workdir.mkdir()
  (workdir / ".write_probe").mkdir()   # a fixed probe name would collide with this
  Workdir.of(workdir).create()
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(lambda _: Workdir.of(workdir).create(), range(400)))
  assert results == [None] * 400   # no error from any of them
  assert sorted(p.name for p in workdir.iterdir()) == [".write_probe"]   # no probe left


def test_cifar10_missing_offline_fails_fast_with_instructions(tmp_path):
  config = defaults.get_config()
  config.data.name, config.data.data_dir = "cifar10", str(tmp_path / "tfds")
  start = time.time()
  with pytest.raises(errors.HfcError) as raised:
    main.run(config, str(tmp_path / "cifar"))
  assert time.time() - start < 60
  line = str(raised.value)
  assert "\n" not in line
  assert "cifar10" in line and "data_dir" in line and "tfds build" in line
  assert not (tmp_path / "cifar").exists()


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  """Two processes x 4 CPU devices (JAX's distributed runtime, gloo collectives) train
  the same model as one process with 8 devices. Compared after 2 steps, where the two
  must agree: the all-reduces sum in another order, and over more steps training
  amplifies those last-digit differences (chaos, not a bug) past any fixed tolerance."""
  env = xla_flags_env(4)
  # SGD: Adam would turn the float-noise gradients of the biases in front of the
  # batch-statistic norm into full-size steps, hiding real differences.
  # The clean evaluation alone: each of the three compiles its own (the processes' is
  # a two-process program), and test/clean is what is compared.
  sgd = ("--config.optim.name=sgd", "--config.optim.learning_rate=0.05",
         "--config.data.num_train=128",   # 2 steps of 64
         "--config.eval.evaluators=('clean',)")
  port = 20000 + os.getpid() % 20000
  procs = [subprocess.Popen(
      main_command(tmp_path / "multi", "--jax_distributed",
               f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={pid}", "--config.train.epochs=1", *sgd),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for pid in (0, 1)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert "process 1/2, 4 local / 8 global devices" in outputs[1]
  # The one-process run in this process (8 devices): the config the same flags give.
  main.run(config_from_flags("--config.train.epochs=1", *sgd), str(tmp_path / "single"))
  multi = [json.loads(l) for l in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
  one = [json.loads(l) for l in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
  assert multi[-1]["step"] == one[-1]["step"] == 2
  assert multi[-1]["test/clean"] == pytest.approx(one[-1]["test/clean"], abs=1 / 256)
  assert multi[-1]["train_loss"] == pytest.approx(one[-1]["train_loss"], rel=1e-5)
  for a, b in zip(jax.tree.leaves(_params(tmp_path / "multi")),
                  jax.tree.leaves(_params(tmp_path / "single"))):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
@pytest.mark.compile_bound
def test_npz_grey_images_of_another_size_train_end_to_end(tmp_path):
  """Bring-your-own data: 20x20 grey NHW images; model and split adapt to them."""
  rng = np.random.default_rng(0)
  y_train, y_test = rng.integers(0, 3, 192), rng.integers(0, 3, 64)
  def images(labels):   # class = brightness band, so the model can learn something
    base = 60 + 60 * labels[:, None, None] + rng.integers(0, 30, (len(labels), 20, 20))
    return base.astype(np.uint8)
  path = tmp_path / "mine.npz"
  np.savez(path, x_train=images(y_train), y_train=y_train, x_test=images(y_test),
           y_test=y_test)
  # In process: main.run on the config these flags give (the command line: other tests).
  main.run(config_from_flags("--config.data.name=npz", f"--config.data.path={path}",
                             "--config.eval.radii=(2,5,10)", "--config.train.epochs=1",
                             "--config.eval.batch_size=64", "--config.eval.train_subset=0"),
           str(tmp_path / "npz"))
  record = json.loads((tmp_path / "npz" / "metrics.jsonl").read_text().splitlines()[-1])
  assert {"test/lfc_2", "test/hfc_10", "train_eval/lfc_5"} <= set(record)
  trained = common.restore(str(tmp_path / "npz"))
  assert trained.params["first_conv"]["kernel"].shape == (3, 3, 1, 16)
  assert trained.params["head"]["kernel"].shape[-1] == 3
  # A radius is checked against the loaded images' size; the new workdir is removed again.
  bad = defaults.get_config()
  bad.data.name, bad.data.path, bad.eval.radii = "npz", str(path), (4, 21)
  with pytest.raises(errors.HfcError) as raised:
    main.run(bad, str(tmp_path / "npz_bad"))
  assert str(raised.value) == "eval.radii=21 is out of range; allowed: [1, 20]."
  assert not (tmp_path / "npz_bad").exists()


@pytest.mark.parametrize("flags_,expected", [
    (["--config=configs/fig5_heuristics.py:bogus"],
     "hfc_jax: error: config argument 'bogus' is not a data set preset; choose one of: "
     "embedded, fashion_mnist, cifar10."),
    (["--config=configs/default.py", "--config.model.nme=3"],
     "hfc_jax: error: bad --config or --config.* flag: 'nme' Did you mean \"name\""),
    (["--config=configs/no_such_file.py"],
     "hfc_jax: error: bad --config or --config.* flag: Configuration is not available"),
    (["--config=configs/default.py", "--config.train.epochs=abc"],
     "hfc_jax: error: flag --config.train.epochs=abc: invalid literal for int()"),
    ([], "hfc_jax: error: --config must be given"),
])
@pytest.mark.slow
def test_bad_flags_are_one_line_errors(tmp_path, flags_, expected):
  command = [sys.executable, "-m", "hfc_jax.main", f"--workdir={tmp_path / 'w'}", *flags_]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_config_files_load_without_the_deprecated_load_module(tmp_path):
  """Python deprecates `load_module()`, which ml_collections uses to load --config files;
  main loads them with `exec_module` instead, so even -W error runs it."""
  command = [sys.executable, "-W", "error::DeprecationWarning",
             *main_command(tmp_path / "w", "--config.train.epochs=0",
                           config="configs/fig5_heuristics.py:fashion_mnist")[1:]]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "hfc_jax: error: train.epochs=0 is out of range; allowed: [1, inf].")


def test_the_patched_ml_collections_loader_is_still_the_one_we_replace():
  """main replaces ml_collections' private `_load_source` (it calls the deprecated
  `load_module()`). This fails loudly when a new ml_collections renames it, changes its
  signature, or stops calling `load_module()` (then the patch can go). The module's
  source file is read, so an earlier in-process patch does not hide it."""
  module_name, attr = main.CONFIG_LOADER
  module = importlib.import_module(module_name)
  source = inspect.getsource(module)
  assert f"def {attr}(module_name: str, module_path: str)" in source
  body = source.split(f"def {attr}(", 1)[1].split("\ndef ", 1)[0]
  assert "load_module()" in body
  saved = getattr(module, attr)
  try:
    assert main.use_exec_module_loader() and getattr(module, attr) is main.load_config_source
  finally:
    setattr(module, attr, saved)


def _shipped_configs() -> list[str]:
  """Every shipped config file, with each data-set argument for those that take one."""
  out = []
  for path in sorted(pathlib.Path(ROOT, "configs").glob("*.py")):
    if path.stem == "__init__":
      continue
    takes_arg = "def get_config(dataset" in path.read_text()
    out += ([f"{path}:{d}" for d in ("embedded", "fashion_mnist", "cifar10")]
            if takes_arg else [str(path)])
  return out


# `python -m hfc_jax.main --config=CONFIG --help` for each config of argv[1:], each in
# its own process forked from one that has imported hfc_jax.main (as `python -m` has
# before it parses flags) and the third-party modules every config's hfc_jax imports
# load (numpy, etils), in its working directory: {config: [exit status, stdout,
# stderr]} as JSON on stdout. One interpreter start instead of one a config (0.7 s).
_HELP_EACH = r"""
import json, os, sys, tempfile, traceback
import etils.epath, numpy
from absl import app
from hfc_jax import main
results = {}
for config in sys.argv[1:]:
  out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
  sys.stdout.flush(); sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    status = 1
    try:
      os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
      sys.argv = [main.__file__, f"--config={config}", "--help"]   # as `python -m` has it
      app.run(main.main, flags_parser=main.parse_flags)
      status = 0
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else (e.code is not None)
    except BaseException:
      traceback.print_exc()
    finally:
      sys.stdout.flush(); sys.stderr.flush()
      os._exit(status)
  status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
  out.seek(0); err.seek(0)
  results[config] = [status, out.read().decode(), err.read().decode()]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_shipped_config_loads_from_any_directory(tmp_path):
  """`--config=/abs/path/configs/X.py --help` from a folder outside the repository loads
  the config (config files import only hfc_jax) and lists the fields it sets."""
  configs = _shipped_configs()
  assert len(configs) >= 20
  found = subprocess.run([sys.executable, "-c", _HELP_EACH, *configs], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
  assert found.returncode == 0 and not found.stderr, found.stderr[-2000:]
  results = json.loads(found.stdout)
  assert list(results) == configs
  for config, (status, stdout, stderr) in results.items():
    assert status == 0 and not stderr, (config, stderr[-2000:])
    assert f"--config={config} sets (" in stdout, config
  adv_config = os.path.join(ROOT, "configs", "cifar10_resnet32_adv.py")
  adv = results[adv_config][1]
  assert "  adv.enabled = True   (default: False)" in adv
  assert "  model.name = 'preact_resnet32'   (default: 'small_cnn')" in adv
  fig4 = results[os.path.join(ROOT, "configs", "fig4_batch_size.py:fashion_mnist")][1]
  assert "  data.name = 'idx'   (default: 'embedded')" in fig4
  assert "sweep.runs = ['batch_32', 'batch_64', 'batch_128', 'batch_256']" in fig4
  # The forked processes print what the command itself prints.
  command = subprocess.run([sys.executable, "-m", "hfc_jax.main", f"--config={adv_config}",
                            "--help"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
  assert (command.returncode, command.stdout, command.stderr) == (0, adv, "")


@pytest.mark.parametrize("source,expected", [
    ("def get_config(:\n  pass\n", "failed at line 1: SyntaxError: invalid syntax."),
    ("def get_config():\n  raise RuntimeError('no such setting')\n",
     "failed at line 2: RuntimeError: no such setting."),
    ("import numpy\nimport no_such_module_here\n",
     "failed at line 2: ModuleNotFoundError: No module named 'no_such_module_here'."),
    ("from configs import presets\n",
     "failed at line 1: ModuleNotFoundError: No module named 'configs'; a config file "
     "imports hfc_jax"),
])
@pytest.mark.slow
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, source, expected):
  config = tmp_path / "my_config.py"
  config.write_text(source)
  for extra in ([f"--workdir={tmp_path / 'w'}"], ["--help"]):
    result = subprocess.run([sys.executable, "-m", "hfc_jax.main", f"--config={config}",
                             *extra], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"hfc_jax: error: config file {config} {expected}"), (
        result.stderr)
    assert result.stderr.count("\n") == 1 and not result.stdout
    assert not (tmp_path / "w").exists()
