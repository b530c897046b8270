"""What made a result: the code version, the library versions and the command.

Every start of a run appends one line to the workdir's `provenance.jsonl`, and every
analysis output directory gets a `provenance.json`:

  {"time": ISO-8601 UTC, "hfc_jax": package version, "commit": git commit of the
   hfc_jax source tree or null (an installed wheel), "dirty": whether tracked files
   differed from that commit, "versions": {"jax": ..., "jaxlib": ..., "flax": ...,
   "optax": ..., "orbax-checkpoint": ...}, "python": "3.11.9", "command": the command line}

(plus "step", the step the run started from, in provenance.jsonl)

so a results table can say which commit and command made it (`hfc_jax.report` prints
them), and a number that changes between two commits can be traced. Nothing here
imports JAX: the versions come from the installed package metadata.
"""

import datetime
import functools
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys

import hfc_jax
from hfc_jax.workdir import layout

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


@functools.cache
def git_state() -> tuple[str | None, bool]:
  """(commit, dirty) of the git work tree holding the hfc_jax sources; (None, False)
  when they are not in one (an installed wheel) or git is missing."""
  source = os.path.dirname(os.path.abspath(hfc_jax.__file__))
  try:
    commit = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True, timeout=10).stdout.strip()
    status = subprocess.run(["git", "-C", source, "status", "--porcelain",
                             "--untracked-files=no"], capture_output=True, text=True,
                            check=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return None, False
  return commit or None, bool(status.strip())


def versions() -> dict[str, str | None]:
  """Installed versions of the numerical libraries (None for one not installed)."""
  found = {}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def command_line(argv: list[str] | None = None) -> str:
  """The command as typed: `python -m hfc_jax.<module>` when run as a module."""
  argv = list(sys.argv if argv is None else argv)
  if not argv:
    return ""
  head = argv[0]
  package_dir = os.path.dirname(os.path.abspath(hfc_jax.__file__))
  if head.endswith(".py") and os.path.dirname(os.path.abspath(head)).startswith(package_dir):
    relative = os.path.relpath(os.path.abspath(head), os.path.dirname(package_dir))
    head = "python -m " + relative[:-len(".py")].replace(os.sep, ".")
  return " ".join([head] + [shlex.quote(a) for a in argv[1:]])


def describe(argv: list[str] | None = None) -> dict:
  """The provenance record of this process (see the module docstring)."""
  commit, dirty = git_state()
  return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "hfc_jax": hfc_jax.__version__, "commit": commit, "dirty": dirty,
          "versions": versions(), "python": platform.python_version(),
          "command": command_line(argv)}


def record_start(workdir: layout.Workdir, step: int) -> None:
  """Appends this start of a run at `step` to the workdir's provenance.jsonl (read back
  with `Workdir.read_starts`). Call from process 0 only."""
  workdir.append_start({"step": step, **describe()})


def short(record: dict) -> str:
  """One line for a results page: 'commit 1a2b3c4 (dirty), jax 0.10.2'."""
  code = (f"commit {record['commit'][:7]}" if record.get("commit")
          else f"hfc_jax {record.get('hfc_jax', '?')}")
  if record.get("dirty"):
    code += " (with uncommitted changes)"
  jax_version = (record.get("versions") or {}).get("jax")
  return f"{code}, jax {jax_version}" if jax_version else code
