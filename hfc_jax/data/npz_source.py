"""Bring-your-own data: one `.npz` file with x_train, y_train, x_test, y_test.

Images are uint8, NHWC or NHW (a channel axis is then added), square, with 1 or 3 channels,
the same (H, W, C) in both splits. Labels are (N,) or (N, 1) class ids in [0, num_classes).
An optional scalar integer key `num_classes` gives the class count; without it
data.num_classes does, else max label + 1. This module reads the file and checks its layout;
`hfc_jax.data.load` then checks the labels and the class count for every source.
Every problem is reported as a one-line HfcError naming `data.path`.
"""

import os
import zipfile

import numpy as np

from hfc_jax.errors import HfcError

KEYS = ("x_train", "y_train", "x_test", "y_test")
NUM_CLASSES_KEY = "num_classes"  # optional scalar integer in the file
INT32_MAX = int(np.iinfo(np.int32).max)


def _fail(path: str, what: str) -> HfcError:
  """Returns the one-line error for a bad file."""
  return HfcError(f"data.path={path!r}: {what}")


def _images(path: str, key: str, x: np.ndarray) -> np.ndarray:
  """Returns `x` as (N, S, S, C) uint8 with C in {1, 3}, or raises HfcError."""
  if x.dtype != np.uint8:
    raise _fail(path, f"{key} has dtype {x.dtype}; expected uint8 in [0, 255].")
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise _fail(path, f"{key} has shape {x.shape}; expected (N, H, W) or (N, H, W, C).")
  if x.shape[1] != x.shape[2]:
    raise _fail(path, f"{key} images are {x.shape[1]}x{x.shape[2]}; expected square images.")
  if x.shape[3] not in (1, 3):
    raise _fail(path, f"{key} has {x.shape[3]} channels; expected 1 or 3.")
  return x


def _labels(path: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
  """Returns `y` as (n,), dtype unchanged (load checks the values), or raises HfcError."""
  y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
  if y.shape != (n,):
    raise _fail(path, f"{key} has shape {y.shape} but there are {n} images; expected ({n},).")
  return y


def _num_classes(path: str, value: np.ndarray) -> int:
  """Returns the file's num_classes key as an int, or raises HfcError."""
  if (value.shape != () or not np.issubdtype(value.dtype, np.integer)
      or not 1 <= value <= INT32_MAX):
    raise _fail(path, f"{NUM_CLASSES_KEY} is {value.tolist()!r} ({value.dtype}, shape "
                f"{value.shape}); expected one integer in [1, {INT32_MAX}].")
  return int(value)


def _read(path: str) -> dict[str, np.ndarray]:
  """Returns the four arrays of the file, or raises HfcError if it is unreadable or lacks one."""
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise _fail(path, f"cannot be read by numpy.load ({type(e).__name__}).") from e
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise _fail(path, "is a single .npy array; expected an .npz archive (numpy.savez).")
  with f:
    missing = [k for k in KEYS if k not in f.files]
    if missing:
      have = ", ".join(f.files) or "nothing"
      raise _fail(path, f"missing key(s) {', '.join(missing)}; the file has {have}.")
    try:
      return {k: f[k] for k in (*KEYS, NUM_CLASSES_KEY) if k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise _fail(path, f"cannot read its arrays ({type(e).__name__}).") from e


def load_npz(path: str) -> dict:
  """Reads and validates the file.

  Returns:
    A dict with x_train (N, S, S, C) uint8, y_train (N,) labels as stored, x_test, y_test,
    and num_classes if the file has that key.
  """
  if not path or not os.path.isfile(path):
    raise _fail(path, f"no such file; set --config.data.path to an .npz with {', '.join(KEYS)}.")
  arrays = _read(path)
  out = {}
  for split in ("train", "test"):
    x = _images(path, f"x_{split}", arrays[f"x_{split}"])
    out[f"x_{split}"] = x
    out[f"y_{split}"] = _labels(path, f"y_{split}", arrays[f"y_{split}"], len(x))
  if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
    raise _fail(path, f"x_train images are {out['x_train'].shape[1:]} but x_test images are "
                f"{out['x_test'].shape[1:]}; expected the same (H, W, C).")
  if NUM_CLASSES_KEY in arrays:
    out["num_classes"] = _num_classes(path, arrays[NUM_CLASSES_KEY])
  return out
