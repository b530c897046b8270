"""Third-party log records off the terminal: a run's stderr holds its own lines only.

Orbax logs a failed save as ERROR records with tracebacks (about 350 lines on a full
disk), gcsfs warns once per request when it cannot find credentials (1,441 times in a
33 s run against an emulator), JAX probes for a TPU at INFO. A user then has to dig
the one line that says what happened (`hfc_jax: error: ...`) out of them. So every
record logged from outside the hfc_jax package (Orbax, etils, gcsfs, fsspec, JAX,
tensorflow-datasets, absl itself, and Python warnings raised outside hfc_jax) is
taken off the terminal handler:

- WARNING and above go to a log file, `library.log` in a local temporary folder
  (`$TMPDIR/hfc_jax_logs/<pid>.log`, never the workdir: a refused run writes nothing
  there, a full disk or an unreachable bucket cannot take it), opened at the first such
  record, each distinct message written at most `REPEATS` times; `path()` names it, and
  `main` adds it to its closing error line;
- INFO and below are dropped, as Orbax's dozens of lines per checkpoint were before.

`--verbosity=1` (absl's flag, or `-v 1`) lets them all through to the terminal as well.
"""

import collections
import logging as pylogging
import os
import sys
import tempfile
import traceback

from absl import logging

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
REPEATS = 3   # copies of one message kept in the file


def is_ours(record: pylogging.LogRecord) -> bool:
  """Whether `record` was logged by hfc_jax code (a warning raised in hfc_jax, too)."""
  if record.name == "py.warnings":   # logging.captureWarnings: the path is in the text
    return PACKAGE_DIR in str(record.msg)
  return record.pathname.startswith(PACKAGE_DIR)


class LibraryLog(pylogging.Filter):
  """A filter on the terminal handler that keeps hfc_jax's own records and diverts every
  other one (`is_ours`): WARNING+ to the log file, the rest dropped; `verbose` lets
  them through as well."""

  def __init__(self, directory: str | None = None, *, verbose: bool = False):
    super().__init__()
    self.directory = directory or os.path.join(tempfile.gettempdir(), "hfc_jax_logs")
    self.verbose = verbose
    self.file_path: str | None = None
    self.seen: collections.Counter = collections.Counter()

  def filter(self, record: pylogging.LogRecord) -> bool:
    if is_ours(record):
      return True
    if record.levelno >= pylogging.WARNING:
      self.keep(record)
    return self.verbose

  def keep(self, record: pylogging.LogRecord) -> None:
    """Appends `record` (with its traceback) to the file; a failure to write (a full
    disk) loses the record, never the run."""
    try:
      message = record.getMessage()
      self.seen[message] += 1
      if self.seen[message] > REPEATS:
        return
      if self.file_path is None:
        os.makedirs(self.directory, exist_ok=True)
        self.file_path = os.path.join(self.directory, f"{os.getpid()}.log")
      text = f"{record.levelname} {record.pathname}:{record.lineno} {message}\n"
      if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
      with open(self.file_path, "a", encoding="utf-8") as f:
        f.write(text)
    except Exception:  # pylint: disable=broad-except
      pass


_active: LibraryLog | None = None


def _library_traceback(kind, value, tb) -> bool:
  """Whether to keep an exception's traceback off the terminal: one with no hfc_jax frame
  goes to the log file, and stays off unless `verbose`; one that passed through hfc_jax
  code is a real crash, printed as usual."""
  frames = traceback.extract_tb(tb)
  if _active is None or any(f.filename.startswith(PACKAGE_DIR) for f in frames):
    return False
  last = frames[-1] if frames else None
  _active.keep(pylogging.LogRecord(
      "traceback", pylogging.ERROR, last.filename if last else "?",
      last.lineno if last else 0, "%s: %s", (kind.__name__, value), (kind, value, tb)))
  return not _active.verbose


def _excepthook(kind, value, tb) -> None:
  if not _library_traceback(kind, value, tb):
    sys.__excepthook__(kind, value, tb)


def _unraisablehook(unraisable) -> None:
  """Tensorstore reports an exception raised in one of its callbacks as unraisable:
  after a failed save, every array write still in flight calls back into Orbax's
  closed event loop, and each printed a bare "RuntimeError: Event loop is closed"
  traceback (dozens on a full disk)."""
  if not _library_traceback(unraisable.exc_type, unraisable.exc_value,
                            unraisable.exc_traceback):
    sys.__unraisablehook__(unraisable)


def divert(*, verbose: bool = False, directory: str | None = None) -> LibraryLog:
  """Installs the filter on absl's terminal handler (once; later calls update
  `verbose`) and routes Python warnings through logging; returns it."""
  global _active
  if _active is None:
    _active = LibraryLog(directory, verbose=verbose)
    logging.get_absl_handler().addFilter(_active)
    pylogging.captureWarnings(True)
    sys.excepthook, sys.unraisablehook = _excepthook, _unraisablehook
  _active.verbose = verbose
  return _active


def path() -> str | None:
  """The log file, if any library record was written to it in this process."""
  return _active.file_path if _active is not None else None


def suffix() -> str:
  """' (library messages: PATH)' when the log file exists, else ''."""
  where = path()
  return f" (library messages: {where})" if where else ""
