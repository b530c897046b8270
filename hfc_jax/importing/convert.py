"""From a PyTorch state dict to this project's parameters and BatchNorm statistics.

`prepare` sorts the file's keys: it drops the `module.` prefix of `nn.DataParallel`
and the `model.` prefix of RobustBench's `normalize_model` wrapper (when every weight
carries it), takes out the standardisation buffers (RobustBench's `mu` / `sigma`, the
wrapper's `normalize.mean` / `normalize.std`), and sets aside what forward() never
reads: BatchNorm's `num_batches_tracked` counters and the architecture's unused modules.

`convert` checks the rest against the model the architecture builds (`targets`: every
Flax leaf and the PyTorch key it comes from, through the architecture's name map) and
converts it:

  conv weight (O, I, kh, kw)   -> kernel (kh, kw, I, O)     (OIHW -> HWIO)
  linear weight (out, in)      -> kernel (in, out)
  BN weight, bias              -> scale, bias               (params)
  BN running_mean, running_var -> mean, var                 ('batchnorm' state)
  conv/linear bias             -> bias

Any unknown key, missing key or shape that does not fit raises one HfcError naming the
first such key and what the architecture expects there: the file's keys in its order
(unknown, or of another shape), then the missing ones in the model's order. Arrays come out
float32, in nested dicts shaped as `Functional.split` gives them.
"""

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from hfc_jax import errors, models
from hfc_jax.importing import archs, names
from hfc_jax.models.functional import Functional

# PyTorch parameter or buffer name (the key's last part) of each Flax leaf name.
TORCH_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var"}
PREFIXES = ("module.", "model.")   # nn.DataParallel; RobustBench's normalize_model
STANDARDIZE_KEYS = (("mu", "sigma"), ("normalize.mean", "normalize.std"))
COUNTERS = ".num_batches_tracked"   # BatchNorm's step counter, not read in eval


@dataclasses.dataclass(frozen=True)
class Target:
  """One Flax leaf of the model and the PyTorch key that fills it."""
  key: str                   # PyTorch state-dict key
  collection: str            # 'params' or 'model_state'
  path: tuple                # Flax path, ('blocks', 0, 'conv1', 'kernel')
  shape: tuple[int, ...]     # Flax shape

  @property
  def torch_shape(self) -> tuple[int, ...]:
    """The shape PyTorch stores it in (OIHW conv weights, (out, in) linear weights)."""
    return torch_shape(self.path[-1], self.shape)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A state dict sorted by `prepare`."""
  weights: dict[str, np.ndarray]      # the keys the model must account for
  mean: tuple[float, ...] = ()        # the file's standardisation buffers ((): none)
  std: tuple[float, ...] = ()
  standardize_keys: tuple[str, ...] = ()   # the keys they came from
  ignored: tuple[str, ...] = ()       # keys set aside (counters, unused modules)
  stripped: tuple[str, ...] = ()      # prefixes removed from every key


def torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """PyTorch's shape of Flax leaf `leaf` of `shape`."""
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  """A PyTorch array as Flax leaf `leaf` stores it: float32, HWIO / (in, out) kernels."""
  array = np.asarray(array, np.float32)
  if leaf == "kernel" and array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if leaf == "kernel" and array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return array


def strip_prefixes(tensors: Mapping[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
  """(the state dict without the `PREFIXES` that every key carries, those prefixes);
  the standardisation buffers of RobustBench's wrapper do not count ('normalize.mean'
  beside 'model.conv1.weight')."""
  weights, stripped = dict(tensors), []
  for prefix in PREFIXES:
    keys = [k for k in weights if k not in _flat(STANDARDIZE_KEYS)]
    if keys and all(k.startswith(prefix) for k in keys):
      weights = {(k[len(prefix):] if k.startswith(prefix) else k): v
                 for k, v in weights.items()}
      stripped.append(prefix)
  return weights, tuple(stripped)


def prepare(tensors: Mapping[str, np.ndarray], arch: archs.Arch) -> Prepared:
  """Sorts a state dict's keys (see the module docstring)."""
  weights, stripped = strip_prefixes(tensors)
  mean = std = ()
  found: tuple[str, ...] = ()
  for mean_key, std_key in STANDARDIZE_KEYS:
    if mean_key in weights and std_key in weights:
      mean = tuple(float(v) for v in np.ravel(weights.pop(mean_key)))
      std = tuple(float(v) for v in np.ravel(weights.pop(std_key)))
      found = (mean_key, std_key)
      break
  ignored = tuple(k for k in weights
                  if k.endswith(COUNTERS) or k.startswith(arch.ignored))
  for key in ignored:
    del weights[key]
  return Prepared(weights, mean, std, found, ignored, stripped)


def _flat(pairs) -> set[str]:
  return {k for pair in pairs for k in pair}


def abstract_split(arch: archs.Arch, num_classes: int, channels: int
                   ) -> tuple[Functional, dict, dict]:
  """(functional, params, model_state) of the model `arch` builds, shapes only
  (`nnx.eval_shape`), with standard BatchNorm ('batchnorm')."""
  fields = archs.model_fields(arch)
  model = nnx.eval_shape(lambda: models.create(
      fields["name"], num_classes=num_classes, in_channels=channels, norm="batchnorm",
      depth=fields["depth"], width_factor=fields["width_factor"]))
  return Functional.split(model)


def targets(name_map: names.NameMap, params: dict, model_state: dict) -> dict[str, Target]:
  """{PyTorch key: Target} for every leaf of `params` and `model_state` (abstract or
  real nested dicts), in the name map's order. Entries whose Flax module does not exist
  are skipped; a leaf that no entry (or two) reaches is a bug in the map: RuntimeError."""
  out: dict[str, Target] = {}
  for torch_name, path in name_map:
    for collection, tree in (("params", params), ("model_state", model_state)):
      node = _get(tree, path)
      for leaf, value in (node or {}).items():
        target = Target(f"{torch_name}.{TORCH_SUFFIX[leaf]}", collection, (*path, leaf),
                        tuple(value.shape))
        if target.key in out:
          raise RuntimeError(f"name map: {target.key} fills two leaves")
        out[target.key] = target
  mapped = {(t.collection, t.path) for t in out.values()}
  for collection, tree in (("params", params), ("model_state", model_state)):
    for path in _leaf_paths(tree):
      if (collection, path) not in mapped:
        raise RuntimeError(f"name map: no PyTorch key for {collection} {path}")
  return out


def _get(tree: Mapping, path: tuple) -> Mapping | None:
  for part in path:
    if not isinstance(tree, Mapping) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _leaf_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
  if isinstance(tree, Mapping):
    return [p for k, v in tree.items() for p in _leaf_paths(v, (*prefix, k))]
  return [prefix]


def _closest(key: str, candidates) -> str:
  """The candidate most like `key` (difflib), or the first one."""
  candidates = list(candidates)
  close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
  return close[0] if close else (candidates[0] if candidates else "")


def check(prepared: Prepared, expected: dict[str, Target], where: str, hint: str = "") -> None:
  """One HfcError for the first bad key of `prepared` against `expected` (see the
  module docstring); `where` names the file and --arch, `hint` is appended. Keys are
  checked in a fixed order, unknown ones (by name) first, then the architecture's own
  order: a safetensors header need not keep the order the file was written in."""
  weights, order = prepared.weights, {k: i for i, k in enumerate(expected)}
  for key in sorted(weights, key=lambda k: (k in order, order.get(k, 0), k)):
    array, target = weights[key], expected.get(key)
    if target is None:
      unknown = sum(k not in expected for k in weights)
      missing = [k for k in expected if k not in weights]
      raise errors.HfcError(f"{where}: unknown key {key!r} (expected e.g. "
                            f"{_closest(key, missing or expected)!r}; {unknown} unknown, "
                            f"{len(missing)} missing){hint}.")
    if tuple(array.shape) != target.torch_shape:
      raise errors.HfcError(f"{where}: {key!r} has shape {tuple(array.shape)}, expected "
                            f"{target.torch_shape}{hint}.")
    if not np.issubdtype(array.dtype, np.floating):
      raise errors.HfcError(f"{where}: {key!r} holds {array.dtype} values, expected "
                            f"floating point{hint}.")
  missing = [k for k in expected if k not in weights]
  if missing:
    raise errors.HfcError(f"{where}: missing key {missing[0]!r} of shape "
                          f"{expected[missing[0]].torch_shape} ({len(missing)} missing){hint}.")


def convert(prepared: Prepared, expected: dict[str, Target]) -> tuple[dict, dict]:
  """(params, model_state): nested dicts of float32 numpy arrays, every leaf of
  `expected` filled from `prepared` (checked first with `check`)."""
  trees: dict[str, dict] = {"params": {}, "model_state": {}}
  for key, target in expected.items():
    node = trees[target.collection]
    for part in target.path[:-1]:
      node = node.setdefault(part, {})
    node[target.path[-1]] = to_flax(target.path[-1], prepared.weights[key])
  return trees["params"], trees["model_state"]


def head_and_channels(prepared: Prepared, arch: archs.Arch, where: str) -> tuple[int, int]:
  """(classes, input channels) of the file: the rows of the head's weight and the
  input channels of the first conv's; HfcError naming a missing one."""
  keys = {path: torch for torch, path in arch.name_map()}
  found = []
  for module, what, ndim, axis in ((("head",), "classifier", 2, 0),
                                   (("first_conv",), "first conv", 4, 1)):
    key = f"{keys[module]}.weight"
    if key not in prepared.weights:
      alike = [k for k, v in prepared.weights.items() if np.ndim(v) == ndim]
      raise errors.HfcError(f"{where}: missing key {key!r} (the {what}'s weight; the file "
                            f"has e.g. {_closest(key, alike or prepared.weights)!r}).")
    shape = tuple(np.shape(prepared.weights[key]))
    if len(shape) != ndim:
      raise errors.HfcError(f"{where}: {key!r} (the {what}'s weight) has shape {shape}, "
                            f"expected {ndim} dimensions.")
    found.append(int(shape[axis]))
  return found[0], found[1]
