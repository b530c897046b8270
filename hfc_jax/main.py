r"""Runs an hfc_jax experiment.

  python -m hfc_jax.main --config=configs/default.py --workdir=/tmp/hfc_default
  python -m hfc_jax.main --config=configs/default.py --workdir=/tmp/run \
      --config.train.epochs=3 --config.model.name=resnet18

The workdir may be local or remote (`gs://bucket/run`, with the `gcs` extra).

Exit status, each failure with one line on stderr ("hfc_jax: ..."):
  0    the run is done (a finished workdir returns at once, untouched);
  2    bad input (a config value, a flag, the data, a locked or differently-configured
       workdir): nothing in the workdir is changed;
  3    training diverged (an inf or NaN in the loss, parameters, optimiser state or BN
       statistics, or a loss above train.divergence_loss): nothing of it was saved;
  4    a checkpoint or another workdir file could not be written (disk full,
       permissions): the run stopped;
  130  Ctrl-C; 143  SIGTERM (a preemption), after saving a checkpoint at the current
       step. After 3, 4, 130 and 143 the workdir keeps its last good checkpoint and the
       same command resumes from it.
"""

import functools
import importlib.util
import os
import re
import signal
import sys
import time
import traceback
import types

from absl import app, flags, logging
from ml_collections import config_flags

from hfc_jax import analysis, defaults, errors, fileio, xla_flags
from hfc_jax.workdir.layout import Workdir


def load_config_source(module_name: str, module_path: str) -> types.ModuleType:
  """Loads a config file as a module with `exec_module`.

  ml_collections (1.1.0, the newest) loads `--config` files with the loader's
  `load_module()`, which Python deprecates (a DeprecationWarning since 3.10) and will
  remove; this is the same load the way Python recommends, put in its place below.
  """
  spec = importlib.util.spec_from_file_location(module_name, module_path)
  if spec is None or spec.loader is None:
    raise ImportError(f"cannot load a config from {module_path!r}")
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module   # as load_module() did
  spec.loader.exec_module(module)
  return module


# ml_collections' private loader, replaced by `load_config_source` when main parses its
# flags (not on import). tests/main_test.py pins its name, signature and body, so that a
# new ml_collections that renames or fixes it fails a test instead of passing silently.
CONFIG_LOADER = ("ml_collections.config_flags.config_flags", "_load_source")


def use_exec_module_loader() -> bool:
  """Makes ml_collections load --config files with `load_config_source`; False when
  its private loader is gone (then its own, whatever it is, stays)."""
  module = sys.modules.get(CONFIG_LOADER[0])
  if not hasattr(module, CONFIG_LOADER[1]):
    return False
  setattr(module, CONFIG_LOADER[1], load_config_source)
  return True

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() first: multi-host TPU pods and GPU "
                  "clusters. With no address flags JAX detects the cluster itself "
                  "(TPU metadata, SLURM, Open MPI, ...).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (manual set-up).")
flags.DEFINE_integer("num_processes", None, "Number of processes (manual set-up).")
flags.DEFINE_integer("process_id", None, "This process's id (manual set-up).")
flags.DEFINE_bool("allow_changed_config", False,
                  "Resume a workdir although fields that change the result ("
                  + defaults.summary(defaults.RESULT, defaults.TRAINING_DATA)
                  + ") differ from its checkpoint's; the change is recorded in "
                  "config_history.jsonl.")
# --config and --workdir are required; parse_flags checks that rather than
# flags.mark_flags_as_required, whose validators would bind every program that
# imports this module (the report command, tests) to these two flags.
REQUIRED = ("config", "workdir")

MODES = ("train", *analysis.MODES)


def check_paths(config) -> None:
  """One-line HfcErrors for remote data paths whose backend is not installed."""
  for field in ("data_dir", "path"):
    value = config.data[field]
    if value and fileio.is_remote(value):
      fileio.check(f"data.{field}", value)


def run(config, workdir: str, *, allow_changed_config: bool = False):
  """Dispatches on `config.mode` of `config` (completed by `defaults.complete`) with
  `workdir` (a path, made a `Workdir` here: every module below receives that); returns
  what the driver returns."""
  config = defaults.complete(config)
  mode = errors.check_choice("mode", config.mode, MODES)
  workdir = Workdir.of(workdir)
  check_paths(config)
  if fileio.scheme(workdir) == "gs":   # seconds and one line, not minutes of retries
    from hfc_jax import cloud_storage  # pylint: disable=g-import-not-at-top
    cloud_storage.check_bucket("workdir", workdir.path)
  if mode == "train":
    from hfc_jax import train, validation  # pylint: disable=g-import-not-at-top
    from hfc_jax.run import resume, sweep  # pylint: disable=g-import-not-at-top
    from hfc_jax.importing import write as imported  # pylint: disable=g-import-not-at-top
    imported.refuse_training(workdir)   # no optimiser state to resume from
    if sweep.is_sweep(config):
      for _, run_config, _ in sweep.expand(config):   # every run, before any work
        validation.check(run_config)
      from hfc_jax.run import group  # pylint: disable=g-import-not-at-top
      group.plan(config, sweep.expand(config))   # and how they train together
      train_fn = functools.partial(train.train_and_evaluate,
                                   allow_changes=allow_changed_config)
      return _in_new_workdir(workdir, lambda: sweep.run_sweep(
          config, workdir, train_fn, allow_changes=allow_changed_config))
    validation.check(config)
    return _in_new_workdir(workdir, lambda: train.train_and_evaluate(
        config, workdir, allow_changes=allow_changed_config))
  from hfc_jax.workdir import checkpointing  # pylint: disable=g-import-not-at-top
  checkpointing.open_existing(workdir).close()   # fails at once on an empty workdir
  workdir.create()
  started = time.perf_counter()
  results = analysis.run(mode, config, workdir)
  _closing_study(mode, workdir, time.perf_counter() - started)
  return results


def _closing_study(mode: str, workdir: Workdir, seconds: float) -> None:
  """A study's last line (stdout, process 0): how long it took and where its files are."""
  import jax  # pylint: disable=g-import-not-at-top
  from hfc_jax.workdir import records  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  out = workdir.study(mode)
  tables = sorted(p.name for p in fileio.path(out).iterdir() if p.name.endswith(".md"))
  shown = f"; tables: {', '.join(tables)}" if tables else ""
  print(f"hfc_jax: {mode} done in {records.duration(seconds)}: results in {out}{shown}",
        flush=True)


def _in_new_workdir(workdir: Workdir, work):
  """Creates `workdir` (`Workdir.create`) and returns `work()`. When `work` refuses its
  input (an HfcError: data that does not load, a batch larger than the data) and the
  workdir is new, the workdir is removed again: bad input writes nothing."""
  existed = workdir.exists()
  workdir.create()
  try:
    return work()
  except errors.HfcError:
    if not existed:
      fileio.remove_new_tree(workdir.path, disposable=(Workdir.SWEEP,))
    raise


def _one_line(error: BaseException) -> str:
  """The innermost message of a (possibly wrapped) exception, on one line."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config file reported as one line
  ("hfc_jax: error: ...") and exit status 2, like every other bad input.

  A config file's own exception (e.g. an unknown data set argument,
  `--config=x.py:bogus`) arrives as a traceback inside the flag error: its last line
  is the message. A `--config.*` override of a field that does not exist raises from
  inside ml_collections, and a missing config file only when the config is first read,
  so the config is read here. `--help`, `-h`, `--helpfull` print the usage, the flags and
  every config field with its default and meaning (`config_help`), and, with a
  `--config` file, the fields that config sets; then exit 0. A config file that does
  not load (a syntax error, a failing import, its own exception) is one line naming the
  file and line (`config_file_error`), exit 2.
  """
  from hfc_jax import config_help  # pylint: disable=g-import-not-at-top
  use_exec_module_loader()
  wants_help = config_help.wants_help(argv)
  try:
    if wants_help:   # with --config=FILE, it is loaded and the fields it sets are listed
      FLAGS([a for a in argv if a not in config_help.HELP_ARGS])
      given = config_arg(argv)
      config_help.print_help(FLAGS, __doc__, FLAGS.config if given else None,
                             f"--config={given}")
      sys.exit(0)
    argv = FLAGS(argv)
    missing = [f"--{name}" for name in REQUIRED if FLAGS[name].value is None]
    if missing:
      print(f"hfc_jax: error: {' and '.join(missing)} must be given, e.g. "
            "--config=configs/default.py --workdir=workdirs/default.", file=sys.stderr)
      sys.exit(2)
    FLAGS.config.get("mode")  # a config file that failed to load raises here
    return argv
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1] if lines else "")
    print(f"hfc_jax: error: {message or type(e).__name__}", file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except  (a config file may raise anything)
    in_file = config_file_error(e, config_file_arg(argv))
    if in_file:
      print(f"hfc_jax: error: {in_file}", file=sys.stderr)
    elif isinstance(e, (AttributeError, KeyError, OSError, TypeError, ValueError)):
      print(f"hfc_jax: error: bad --config or --config.* flag: {_one_line(e)}",
            file=sys.stderr)
    else:
      raise
  sys.exit(2)


def config_arg(argv: list[str]) -> str | None:
  """The value of `--config=FILE[:ARG]` (or `--config FILE[:ARG]`) in argv, else None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def config_file_arg(argv: list[str]) -> str | None:
  """The FILE of `--config=FILE[:ARG]` in argv, else None."""
  value = config_arg(argv)
  return None if value is None else value.split(":", 1)[0]


def config_file_error(error: BaseException, config_file: str | None) -> str | None:
  """One line for an exception raised while a config file loaded or ran (a syntax error,
  an import that fails, its own raise), naming the file and line; None when the
  exception did not come from that file."""
  if not config_file:
    return None
  path = os.path.realpath(config_file)
  where = None
  if isinstance(error, SyntaxError) and error.filename:
    if os.path.realpath(error.filename) == path:
      where = error.lineno
  else:
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.realpath(f.filename) == path]
    where = frames[-1].lineno if frames else None
  if where is None:
    return None
  message = (error.msg if isinstance(error, SyntaxError) else _one_line(error)).rstrip(".")
  hint = ""
  if isinstance(error, ImportError) and (error.name or "").split(".")[0] == "configs":
    hint = ("; a config file imports hfc_jax (hfc_jax.defaults, hfc_jax.presets), not "
            "other config files, so that it loads from any directory")
  return (f"config file {config_file} failed at line {where}: "
          f"{type(error).__name__}: {message}{hint}.")


def main(argv):
  if len(argv) > 1:
    print(f"hfc_jax: error: unexpected arguments {argv[1:]}; every setting is a flag "
          "(--workdir, --config, --config.FIELD=VALUE; see --help).", file=sys.stderr)
    sys.exit(2)
  xla_flags.set_cpu_defaults()   # before JAX creates its backend, which reads XLA_FLAGS
  import jax  # pylint: disable=g-import-not-at-top
  from hfc_jax import library_logs  # pylint: disable=g-import-not-at-top
  from hfc_jax.run import preemption  # pylint: disable=g-import-not-at-top
  library_logs.divert(verbose=FLAGS.verbosity >= 1)
  if FLAGS.jax_distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s), XLA_FLAGS=%r",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind,
               os.environ.get("XLA_FLAGS", ""))
  try:
    run(FLAGS.config, FLAGS.workdir, allow_changed_config=FLAGS.allow_changed_config)
  except errors.HfcError as e:
    _exit(f"hfc_jax: error: {e}", 2)
  except errors.RunFailed as e:
    _exit(f"hfc_jax: error: {e}{library_logs.suffix()}", e.exit_status,
          now=e.exit_status == errors.EXIT_SAVE_FAILED)
  except preemption.Preempted as e:   # SIGTERM or Ctrl-C during training, saved
    _exit(f"hfc_jax: {e}", e.exit_status)
  except KeyboardInterrupt:            # Ctrl-C anywhere else (a second one, a study)
    _exit("hfc_jax: interrupted (Ctrl-C); the workdir keeps its last finished checkpoint; "
          "run the same command to resume from it.", preemption.EXIT_INTERRUPTED)


def _exit(line: str, status: int, *, now: bool = False) -> None:
  """Prints the run's closing error `line` on stderr and exits with `status`. Ctrl-C
  pressed again from here on is ignored: the line is already the run's last word, and
  a second KeyboardInterrupt inside the interpreter's shutdown (Orbax joins its save
  threads there) would print a traceback after it.

  `now`: exit without the interpreter's shutdown. After a failed save, Orbax's commit
  threads wait for a signal that the failed save never sends, and the shutdown, which
  joins them, hung for good (seen on 8 devices). Everything the run keeps is on disk
  by then: the checkpoints before, closed files, flushed streams."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  print(line, file=sys.stderr, flush=True)
  if now:
    sys.stdout.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
