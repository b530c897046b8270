"""What may change when a run is resumed, and the record of what did.

Running the same command again resumes a workdir. The config given then is compared
with the one stored in the checkpoint:

- Fields that change the result (`RESULT_FIELDS`: the seed, the model, the data, the
  optimiser and learning rate, the batch size, what the step trains on, adversarial
  training) must match: a difference refuses the run with one line listing the
  differences, and nothing in the workdir changes. `--allow_changed_config` continues
  anyway (the run then mixes two settings; the change is recorded).
- Every other field may change, and is recorded: `train.epochs` (to extend a run),
  evaluation (`eval.*`), logging, checkpointing, the device count.

Every start that resumes with changes appends one line to `<workdir>/config_history.jsonl`
({"time", "step", "changes": {field: [old, new]}}); `config.json` holds the config of
the latest start.
"""

import json
import time
from typing import Any

from hfc_jax import errors, fileio

RESULT_FIELDS = ("seed", "model", "data", "optim", "adv", "train.batch_size",
                 "train.input_component", "train.input_radius", "train.mixup_alpha",
                 "train.smooth_kernel_weight")
LOCATION_FIELDS = ("data.data_dir",)   # where the data is read from, not what it is
HISTORY = "config_history.jsonl"
_SHOWN = 6   # differences spelled out in the refusal line


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; tuples and lists compare as lists."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, (tuple, list)) else value
  return out


def changes(saved: dict, config: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (saved value, new value)} for every field of both that differs. A
  field only one of them has (added or removed by a later version of hfc_jax) is not
  a change: it did not exist when the other was written."""
  old, new = flatten(saved), flatten(config)
  return {k: (old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]}


def changes_result(field: str) -> bool:
  """Whether a change of dotted `field` changes what the run computes."""
  if field in LOCATION_FIELDS:
    return False
  return any(field == f or field.startswith(f + ".") for f in RESULT_FIELDS)


def check(saved: dict, config: dict, workdir: str, *, allow: bool = False
          ) -> dict[str, tuple[Any, Any]]:
  """Returns the changes from the saved config; raises a one-line HfcError when one
  of them changes the result and `allow` is False."""
  found = changes(saved, config)
  fixed = {k: v for k, v in found.items() if changes_result(k)}
  if fixed and not allow:
    shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(fixed.items())[:_SHOWN])
    more = f" and {len(fixed) - _SHOWN} more" if len(fixed) > _SHOWN else ""
    raise errors.HfcError(
        f"workdir={workdir!r} holds a run with other settings that change the result: "
        f"{shown}{more}; use a new --workdir, the same values, or --allow_changed_config "
        "to continue it anyway.")
  return found


def record(workdir: str, step: int, found: dict[str, tuple[Any, Any]]) -> None:
  """Appends this start's changes to config_history.jsonl. Call from process 0 only."""
  if not found:
    return
  entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
           "changes": {k: [old, new] for k, (old, new) in found.items()}}
  fileio.append_line(fileio.join(workdir, HISTORY), json.dumps(entry, default=str))

