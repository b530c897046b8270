"""Reading a weights file into {name: numpy array}, without running code from it.

  .safetensors    `safetensors.numpy.load` (no PyTorch needed)
  anything else   `torch.load(weights_only=True)` (PyTorch's `.pt` / `.pth`): only
                  tensors and plain containers are unpickled, never arbitrary objects,
                  so a whole pickled `nn.Module` is refused rather than run

The file is read once, as bytes (local or gs://, through `hfc_jax.fileio`), and its
SHA-256 is taken of those bytes. A training checkpoint that holds the state dict under
'state_dict' (RobustBench's, and many others') or 'model_state_dict' is unwrapped. Floating
tensors become float32 arrays (bfloat16 and float16 included); integer buffers keep
their type. Every failure is one HfcError line naming --weights.
"""

import dataclasses
import hashlib
import io
import os
from collections.abc import Mapping

import numpy as np

from hfc_jax import errors, fileio

WRAPPERS = ("state_dict", "model_state_dict")   # keys a training checkpoint nests it under


@dataclasses.dataclass(frozen=True)
class Weights:
  """A weights file as read: its tensors, format and SHA-256."""
  path: str                          # as given, made absolute when local
  tensors: dict[str, np.ndarray]     # state-dict key -> array, in the file's order
  format: str                        # 'safetensors' or 'torch'
  sha256: str
  size: int                          # bytes


def read(path: str) -> Weights:
  """Reads `path` (see the module docstring); HfcError naming --weights when it is
  missing, unreadable, or not a state dict of tensors."""
  path = fileio.check("--weights", path)
  if not fileio.is_file(path):
    raise errors.HfcError(f"--weights={path!r}: no such file.")
  try:
    data = fileio.path(path).read_bytes()
  except OSError as e:
    raise errors.HfcError(f"--weights={path!r} cannot be read ({e.strerror or e}).") from None
  kind = "safetensors" if path.endswith(".safetensors") else "torch"
  tensors = _read_safetensors(data, path) if kind == "safetensors" else _read_torch(data, path)
  return Weights(path, tensors, kind, hashlib.sha256(data).hexdigest(), len(data))


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _read_safetensors(data: bytes, path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.HfcError(f"--weights={path!r}: reading .safetensors files needs the "
                          "safetensors package: pip install safetensors.") from None
  try:
    loaded = st_numpy.load(data)
  except Exception as e:  # pylint: disable=broad-except  (safetensors raises its own types)
    raise errors.HfcError(f"--weights={path!r} is not a readable safetensors file "
                          f"({_first_line(e)}).") from None
  return {k: _float32(np.asarray(v)) for k, v in loaded.items()}


def _read_torch(data: bytes, path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.HfcError(
        f"--weights={path!r}: reading PyTorch files needs PyTorch (pip install -e "
        "'.[torch]'); or save the weights as .safetensors (safetensors.torch.save_file), "
        "which needs no PyTorch to read.") from None
  try:
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (pickle, zip and torch errors)
    raise errors.HfcError(
        f"--weights={path!r} cannot be read by torch.load(weights_only=True) "
        f"({_first_line(e)}); save the model's state dict: "
        "torch.save(model.state_dict(), FILE).") from None
  state = _unwrap(loaded, path)
  out = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise errors.HfcError(f"--weights={path!r}: {key!r} holds a {type(value).__name__}, "
                            "not a tensor; expected a state dict (name -> tensor).")
    value = value.detach().cpu()
    out[key] = (value.float() if value.is_floating_point() else value).numpy()
  return out


def _unwrap(loaded, path: str) -> Mapping:
  """The state dict inside what torch.load returned: itself, or its 'state_dict' /
  'model_state_dict' entry (a training checkpoint)."""
  if not isinstance(loaded, Mapping):
    raise errors.HfcError(f"--weights={path!r} holds a {type(loaded).__name__}, not a state "
                          "dict; save one with torch.save(model.state_dict(), FILE).")
  for key in WRAPPERS:
    if isinstance(loaded.get(key), Mapping):
      return loaded[key]
  return loaded


def _float32(array: np.ndarray) -> np.ndarray:
  """Floating arrays as float32, others unchanged."""
  return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def describe(weights: Weights) -> dict:
  """The file's provenance: {'path', 'sha256', 'bytes', 'format'}."""
  return {"path": os.fspath(weights.path), "sha256": weights.sha256, "bytes": weights.size,
          "format": weights.format}
