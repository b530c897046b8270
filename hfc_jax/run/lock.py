"""One training run per workdir: the lock file `<workdir>/.lock`.

Process 0 of a run writes the lock before it touches the workdir and removes it on any
exit it lives through. It holds {host, pid, started, heartbeat, token}. A second run on
the same workdir refuses with one line naming the holder. A lock is stale, and is taken
over with a logged line, when its process is gone: on the same host when that pid no
longer runs; from another host (a preempted VM that restarts elsewhere) when its
heartbeat, refreshed by the train loop every `HEARTBEAT_S`, is older than `STALE_S`.
Studies (`--config.mode=robust_eval` etc.) take no lock: they only read checkpoints and
write their own subdirectory, so they may run beside training.
"""

import json
import os
import socket
import time
import uuid

import jax
from absl import logging

from hfc_jax import errors, fileio
from hfc_jax.workdir.layout import Workdir

HEARTBEAT_S = 60.0
STALE_S = 600.0


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def is_stale(holder: dict, now: float) -> bool:
  """Whether the run that wrote `holder` is gone (see the module docstring)."""
  if holder.get("host") == socket.gethostname():
    return not _pid_running(int(holder.get("pid", -1)))
  return now - float(holder.get("heartbeat", 0.0)) > STALE_S


class WorkdirLock:
  """The lock of one workdir; a no-op on processes other than 0."""

  def __init__(self, workdir: Workdir):
    self.workdir = workdir
    self.path = workdir.lock
    self.active = jax.process_index() == 0
    self.token = uuid.uuid4().hex
    self.started = time.time()
    self._beat = 0.0
    self.held = False

  def _read(self) -> dict | None:
    try:
      return json.loads(fileio.read_text(self.path))
    except (OSError, ValueError):
      return None

  def _write(self) -> None:
    self._beat = time.time()
    fileio.write_text(self.path, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
        "heartbeat": self._beat, "token": self.token}))

  def acquire(self) -> None:
    """Takes the lock, or raises a one-line HfcError naming the live holder."""
    if not self.active:
      return
    holder = self._read()
    if holder is not None and holder.get("token") != self.token:
      if not is_stale(holder, time.time()):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        raise errors.HfcError(
            f"workdir={self.workdir.path!r} is in use by another run (pid {holder.get('pid')} "
            f"on {holder.get('host')}, started {started}); wait for it, stop it, or use "
            f"another --workdir (a lock of a dead run is taken over by itself).")
      logging.warning("taking over the stale lock of pid %s on %s in %s", holder.get("pid"),
                      holder.get("host"), self.workdir)
    fileio.makedirs(self.workdir.path)
    self._write()
    if (self._read() or {}).get("token") != self.token:   # another start wrote after us
      raise errors.HfcError(f"workdir={self.workdir.path!r} was just taken by another run; "
                            "use another --workdir.")
    self.held = True

  def heartbeat(self) -> None:
    """Refreshes the heartbeat when it is older than HEARTBEAT_S (cheap otherwise)."""
    if self.held and time.time() - self._beat > HEARTBEAT_S:
      self._write()

  def release(self) -> None:
    if self.held and (self._read() or {}).get("token") == self.token:
      fileio.remove(self.path)
    self.held = False
