"""The one exception type a user sees, and helpers that raise it.

Every bad input (an unknown name, a value out of range, missing data) is reported as an
`HfcError` whose message is one line naming the config field and what is allowed. `main`
catches it, prints the line and exits non-zero without a traceback.
"""

from collections.abc import Iterable
from typing import Any


class HfcError(Exception):
  """A user-facing error: one line, naming the field and the allowed values."""


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> Any:
  """Returns `value` if it is one of `allowed`, else raises a one-line HfcError."""
  allowed = list(allowed)
  if value not in allowed:
    names = ", ".join(repr(a) for a in allowed)
    raise HfcError(f"{field}={value!r} is not allowed; choose one of: {names}.")
  return value


def check_range(field: str, value: float, low: float | None = None,
                high: float | None = None, *, integer: bool = False) -> float:
  """Returns `value` if low <= value <= high (bounds optional), else raises HfcError."""
  if integer and (isinstance(value, bool) or int(value) != value):
    raise HfcError(f"{field}={value!r} must be an integer.")
  if (low is not None and value < low) or (high is not None and value > high):
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    raise HfcError(f"{field}={value!r} is out of range; allowed: [{lo}, {hi}].")
  return value


class RunFailed(Exception):
  """A run that cannot go on, though its input was fine: training diverged, a checkpoint
  could not be written. One line; `main` prints it and exits with `exit_status`. The
  workdir keeps its last good checkpoint."""

  def __init__(self, message: str, exit_status: int):
    super().__init__(message)
    self.exit_status = exit_status


EXIT_DIVERGED = 3      # a non-finite loss or parameter stopped training
EXIT_SAVE_FAILED = 4   # a checkpoint could not be written (disk full, no permission)
