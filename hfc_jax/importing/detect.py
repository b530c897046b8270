"""Which `--arch` a state dict fits: the hint of an error for a file imported as the
wrong architecture ('... the file fits --arch=preact_resnet18').

Each architecture of `archs.FIXED` is tried as it is; a WideResNet's depth and width
factor are read off the file first (the blocks of RobustBench's `block1`, and the
output channels of its first conv over 16). A candidate fits when every key and shape
checks (`convert.check`). Only run on the error path: each try builds the candidate's
shapes (`nnx.eval_shape`), a fraction of a second.
"""

import re
from collections.abc import Mapping

import numpy as np

from hfc_jax import errors
from hfc_jax.importing import archs, convert

_WRN_BLOCK = re.compile(r"block1\.layer\.(\d+)\.")


def wrn_guess(tensors: Mapping[str, np.ndarray]) -> str | None:
  """'wrn-D-K' read off a RobustBench WideResNet's keys (after `convert.prepare`), or
  None when the file has no `block1.layer.0.conv1.weight`."""
  first = tensors.get("block1.layer.0.conv1.weight")
  if first is None or np.ndim(first) != 4:
    return None
  blocks = {int(m.group(1)) for k in tensors for m in [_WRN_BLOCK.match(k)] if m}
  return f"wrn-{6 * len(blocks) + 4}-{max(int(first.shape[0]) // 16, 1)}"


def fits(tensors: Mapping[str, np.ndarray], spelling: str) -> bool:
  """Whether the raw state dict `tensors` imports as `--arch=spelling` without error."""
  try:
    arch = archs.parse(spelling)
    prepared = convert.prepare(tensors, arch)
    classes, channels = convert.head_and_channels(prepared, arch, "")
    _, params, model_state = convert.abstract_split(arch, classes, channels)
    convert.check(prepared, convert.targets(arch.name_map(), params, model_state), "")
  except errors.HfcError:
    return False
  return True


def detect(tensors: Mapping[str, np.ndarray], exclude: str = "") -> str | None:
  """The first `--arch` other than `exclude` that `tensors` fits, or None."""
  stripped, _ = convert.strip_prefixes(tensors)
  candidates = [*archs.FIXED, wrn_guess(stripped)]
  return next((c for c in candidates if c and c != exclude and fits(tensors, c)), None)
