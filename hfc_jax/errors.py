"""The two exception types a user sees, and helpers that raise them.

Every bad input (an unknown name, a value out of range, missing data) is reported as an
`HfcError` whose message is one line naming the config field and what is allowed (exit
2). A run that fails once it is under way (training diverged, a checkpoint cannot be
written) raises `RunFailed`, which carries its own exit status (3, 4). `main` catches
both, prints the line and exits non-zero without a traceback.
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
                high: float | None = None, *, integer: bool = False,
                open_low: bool = False, open_high: bool = False) -> float:
  """Returns `value` if low <= value <= high (bounds optional), else raises HfcError.

  `open_low` / `open_high` make that bound strict (low < value, value < high), shown as
  '(' / ')' in the message. NaN is out of every range (it compares false to any bound).
  """
  nan = value != value   # pylint: disable=comparison-with-itself
  if integer and not nan and not _whole(value):
    raise HfcError(f"{field}={value!r} must be an integer.")
  lo = ("(" if open_low else "[") + ("-inf" if low is None else repr(low))
  hi = "inf]" if high is None else repr(high) + (")" if open_high else "]")
  try:
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
  except TypeError:   # not a number: a string, None, a tuple
    raise HfcError(f"{field}={value!r} is not a number; allowed: {lo}, {hi}.") from None
  if nan or below or above:
    raise HfcError(f"{field}={value!r} is out of range; allowed: {lo}, {hi}.")
  return value


def _whole(value: Any) -> bool:
  """Whether `value` is a whole number (3, 3.0), not a bool, string or inf."""
  try:
    return not isinstance(value, bool) and int(value) == value
  except (TypeError, ValueError, OverflowError):
    return False


class RunFailed(Exception):
  """A run that cannot go on, though its input was fine: training diverged, a checkpoint
  could not be written. One line; `main` prints it and exits with `exit_status`. The
  workdir keeps its last good checkpoint."""

  def __init__(self, message: str, exit_status: int):
    super().__init__(message)
    self.exit_status = exit_status


EXIT_DIVERGED = 3      # a non-finite loss or parameter stopped training
EXIT_SAVE_FAILED = 4   # a checkpoint could not be written (disk full, no permission)
