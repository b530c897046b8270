"""MNIST-format data: a directory of IDX files, read with numpy alone.

The directory at `data.path` holds the four files of the MNIST layout, each plain or gzipped
(`NAME` or `NAME.gz`; the plain file wins when both are there):

  train-images-idx3-ubyte   t10k-images-idx3-ubyte    (N, H, W) uint8 images
  train-labels-idx1-ubyte   t10k-labels-idx1-ubyte    (N,) uint8 labels

An IDX file is a big-endian header followed by the raw values: a 4-byte magic number
0x0000TTDD (TT = 0x08 for uint8, DD = the number of dimensions), then DD int32 sizes. Images
must have magic 0x00000803, labels 0x00000801, and the value bytes must number exactly the
product of the sizes. Values are np.frombuffer views of the decompressed bytes, so nothing is
copied (the arrays are read-only).

Fashion-MNIST (the paper's appendix) comes as the Debian/Ubuntu package `dataset-fashion-mnist`,
which installs these files gzipped in FASHION_MNIST_DIR:

  apt-get install dataset-fashion-mnist
  python -m hfc_jax.main --config=... --workdir=... \
      --config.data.name=idx --config.data.path=/usr/share/datasets/fashion-mnist

Every problem is reported as a one-line HfcError naming `data.path`.
"""

import os
import zlib

import numpy as np

from hfc_jax.errors import HfcError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where `dataset-fashion-mnist` puts it
FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions (N, H, W)
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension (N,)


def _fail(path, what: str) -> HfcError:
  """Returns the one-line error for a bad directory or file."""
  return HfcError(f"data.path={path!r}: {what}")


def _find(path: str, name: str) -> str:
  """Returns the file `name` or `name.gz` in directory `path`, or raises HfcError."""
  for candidate in (name, name + ".gz"):
    if os.path.isfile(os.path.join(path, candidate)):
      return os.path.join(path, candidate)
  raise _fail(path, f"has no {name} or {name}.gz; expected the four MNIST-format IDX files "
              f"{', '.join(FILES.values())} (each plain or .gz).")


def _gunzip(raw: bytes) -> bytes:
  """Returns the decompressed bytes of gzip data (one or more members); zlib.error if bad."""
  parts = []
  while raw:
    member = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    parts.append(member.decompress(raw))
    if not member.eof:
      raise zlib.error("the gzip stream ends before its end-of-stream marker")
    raw = member.unused_data
  return b"".join(parts)


def read_bytes(path: str, file: str) -> bytes:
  """Returns the (decompressed, if .gz) contents of `file` in directory `path`, or raises."""
  name = os.path.basename(file)
  try:
    with open(file, "rb") as f:
      raw = f.read()
    return _gunzip(raw) if file.endswith(".gz") else raw
  except (OSError, zlib.error) as e:
    raise _fail(path, f"cannot read {name} ({type(e).__name__}: {e}).") from e


def parse_idx(buf: bytes, magic: int, where: str) -> np.ndarray:
  """Returns the uint8 array an IDX file holds, checking its magic number and length.

  Args:
    buf: the whole (decompressed) file.
    magic: the expected magic number, IMAGES_MAGIC or LABELS_MAGIC.
    where: the file's name, for error messages.

  Raises:
    ValueError: one line, if the header or the length is wrong (load_idx adds data.path).
  """
  ndim = magic & 0xFF
  header = 4 * (1 + ndim)
  if len(buf) < header:
    raise ValueError(f"{where} is truncated: {len(buf)} bytes, shorter than its "
                     f"{header}-byte header.")
  found = int(np.frombuffer(buf, ">u4", count=1)[0])
  if found != magic:
    raise ValueError(f"{where} has magic number 0x{found:08x}; expected 0x{magic:08x} "
                     f"(uint8, {ndim} dimension{'s' if ndim > 1 else ''}).")
  shape = tuple(int(d) for d in np.frombuffer(buf, ">i4", count=ndim, offset=4))
  if min(shape) < 0:
    raise ValueError(f"{where} has a negative size in its header shape {shape}.")
  expected = int(np.prod(shape, dtype=np.int64))
  if len(buf) - header != expected:
    what = "truncated" if len(buf) - header < expected else "longer than its header says"
    raise ValueError(f"{where} is {what}: header says shape {shape} ({expected} bytes of "
                     f"values) but {len(buf) - header} bytes follow the header.")
  return np.frombuffer(buf, np.uint8, offset=header).reshape(shape)


def _read(path: str, key: str) -> np.ndarray:
  """Returns the array of one of the four files (key as in FILES), or raises HfcError."""
  file = _find(path, FILES[key])
  magic = IMAGES_MAGIC if key.startswith("x") else LABELS_MAGIC
  try:
    return parse_idx(read_bytes(path, file), magic, os.path.basename(file))
  except ValueError as e:
    raise _fail(path, str(e)) from e


def load_idx(path: str) -> dict:
  """Reads and validates the four IDX files in directory `path`.

  Returns:
    A dict with x_train (N, S, S, 1) uint8, y_train (N,) uint8, x_test (M, S, S, 1), y_test
    (M,) uint8; `hfc_jax.data.load` checks the labels and finds num_classes (data.num_classes,
    else max label + 1).
  """
  if not path or not os.path.isdir(path):
    raise _fail(path, f"no such directory; set --config.data.path to a directory with "
                f"{', '.join(FILES.values())} (each plain or .gz), e.g. {FASHION_MNIST_DIR} "
                f"from `apt-get install dataset-fashion-mnist`.")
  out = {}
  for split in ("train", "test"):
    x, y = _read(path, f"x_{split}"), _read(path, f"y_{split}")
    if len(x) != len(y):
      raise _fail(path, f"{FILES['x_' + split]} has {len(x)} images but "
                  f"{FILES['y_' + split]} has {len(y)} labels; expected the same count.")
    if x.shape[1] != x.shape[2]:
      raise _fail(path, f"{FILES['x_' + split]} images are {x.shape[1]}x{x.shape[2]}; "
                  "expected square images.")
    out[f"x_{split}"], out[f"y_{split}"] = x[..., None], y
  if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
    raise _fail(path, f"training images are {out['x_train'].shape[1:3]} but test images are "
                f"{out['x_test'].shape[1:3]}; expected the same size.")
  return out
