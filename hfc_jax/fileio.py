"""Every read and write of a user-given path, local or remote (gs://, s3://, ...).

Workdirs on Cloud TPU live in a Cloud Storage bucket, which every host and the user's
laptop see. All paths a user gives (the workdir, a report's output directory, a compare
workdir) go through `etils.epath`, the path library Orbax itself uses, so the
checkpoints, metrics.jsonl, config.json, TensorBoard events, sweep and analysis outputs
all land in the same place. `os.path` is never applied to such a path: it would turn
`gs://bucket/run` into a local directory named `gs:`.

Why epath rather than `tf.io.gfile`: Orbax already depends on it, it needs no
tensorflow (gs:// goes through fsspec's gcsfs, installed by the `gcs` extra:
`pip install 'hfc_jax[gcs]'`), and it uses `tf.io.gfile` by itself where tensorflow is
installed. A remote path whose backend is missing is a one-line HfcError naming the
config field, raised before anything is written.

Object stores have no rename and no append: a remote file is written whole and becomes
visible when it is closed (atomic by the store); a local one is written to a temporary
name and renamed, so a reader never sees half a file.
"""

import importlib.util
import io
import os
import re
import shutil
import uuid

from etils import epath

from hfc_jax import errors

# scheme -> (Python module that serves it without tensorflow, the extra that installs it)
REMOTE_SCHEMES = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", "s3"), "az": ("adlfs", "az")}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(path) -> str | None:
  """'gs' for 'gs://bucket/x', None for a local path."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_remote(path) -> bool:
  return scheme(path) is not None


def _has_module(name: str) -> bool:
  return importlib.util.find_spec(name) is not None


def check(field: str, path) -> str:
  """Returns `path` normalised (local paths made absolute), or raises a one-line
  HfcError naming `field` when its scheme is unknown or its backend is not installed."""
  path = os.fspath(path)
  kind = scheme(path)
  if kind is None:
    return os.path.abspath(os.path.expanduser(path))
  if kind not in REMOTE_SCHEMES:
    raise errors.HfcError(
        f"{field}={path!r}: the scheme {kind}:// is not supported; use a local path or one "
        f"of {', '.join(s + '://' for s in REMOTE_SCHEMES)}.")
  module, extra = REMOTE_SCHEMES[kind]
  if not (_has_module(module) or _has_module("tensorflow")):
    raise errors.HfcError(
        f"{field}={path!r} needs the {module} package for {kind}:// paths: "
        f"pip install 'hfc_jax[{extra}]' (or install tensorflow).")
  return path.rstrip("/")


def path(p) -> epath.Path:
  """The epath.Path of a local or remote path."""
  return epath.Path(p)


def join(base, *parts: str) -> str:
  """`base/part/...` as a string; keeps the `gs://` of a remote base intact."""
  return os.fspath(path(base).joinpath(*parts))


def is_dir(p) -> bool:
  return path(p).is_dir()


def is_file(p) -> bool:
  p = path(p)
  return p.exists() and not p.is_dir()


def makedirs(p) -> None:
  """Creates directory `p` and its parents (on object stores: nothing to create)."""
  path(p).mkdir(parents=True, exist_ok=True)


def remove_new_tree(p, *, disposable: tuple[str, ...] = ()) -> bool:
  """Removes local directory `p`, which this run created, when it holds no file but
  empty folders and files named in `disposable` (a sweep's plan): a run refused
  for its data leaves nothing behind. Returns whether it was removed. Remote paths
  are left alone (an object store has no empty folders to remove)."""
  if is_remote(p) or not os.path.isdir(p):
    return False
  for _, _, files in os.walk(p):
    if any(name not in disposable for name in files):
      return False
  shutil.rmtree(p, ignore_errors=True)
  return True


def basename(p) -> str:
  """The last component of `p` ('run' for 'gs://b/run/' and for 'x/run/.')."""
  if is_remote(p):
    return path(p).name
  return os.path.basename(os.path.normpath(os.path.abspath(os.fspath(p))))


def remove(p) -> None:
  """Removes file `p` if it exists."""
  p = path(p)
  if p.exists():
    p.unlink()


def read_text(p) -> str:
  return path(p).read_text()


def write_bytes(p, data: bytes) -> None:
  """Writes `data` to `p` so that a reader sees the old file or the new one, never half.
  A write that fails (a full disk, no permission) raises `errors.RunFailed` (exit 4):
  the run stops, and the old file is kept."""
  try:
    _write_bytes(path(p), data, remote=is_remote(p))
  except OSError as e:
    raise errors.RunFailed(
        f"{p} could not be written ({e.strerror or type(e).__name__}); the run stopped "
        "and the workdir keeps its last finished checkpoint: fix the cause (e.g. free "
        "disk space), then run the same command to resume.", errors.EXIT_SAVE_FAILED
    ) from None


def _write_bytes(target: epath.Path, data: bytes, *, remote: bool) -> None:
  if remote:
    target.write_bytes(data)
    return
  tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def append_line(p, line: str) -> None:
  """Appends `line` and a newline to a text file, creating it. Object stores cannot
  append, so the whole file is rewritten (these files are a few lines long)."""
  before = read_text(p) if is_file(p) else ""
  write_text(p, before + line + "\n")


def save_npy(p, array) -> None:
  """`numpy.save` to a local or remote path."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  np.save(buffer, array)
  write_bytes(p, buffer.getvalue())


def save_figure(fig, p, **savefig_kwargs) -> None:
  """Saves a matplotlib figure as PNG to a local or remote path."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", **savefig_kwargs)
  write_bytes(p, buffer.getvalue())


def check_writable(field: str, p) -> str:
  """Creates directory `p` if needed and writes, then removes, a probe file of a name of
  its own (so the processes of a multi-host run can check one shared workdir at once).
  Returns the normalised path; raises a one-line HfcError naming `field` otherwise."""
  p = check(field, p)
  probe = join(p, f".write_probe_{uuid.uuid4().hex}")
  try:
    makedirs(p)
    path(probe).write_text("ok")
    remove(probe)
  except OSError as e:
    raise errors.HfcError(
        f"{field}={p!r} is not writable ({e.strerror or type(e).__name__}).") from None
  except Exception as e:  # pylint: disable=broad-except  (remote backends raise their own types)
    raise errors.HfcError(f"{field}={p!r} is not writable ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}).") from None
  return p
