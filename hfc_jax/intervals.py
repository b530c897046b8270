"""Confidence intervals for accuracies measured on a finite test set.

A robust accuracy of k correct images out of n is a binomial proportion; its 95% Wilson
score interval (Wilson, "Probable inference, the law of succession, and statistical
inference", JASA 1927; recommended over the normal approximation by Brown, Cai &
DasGupta, "Interval estimation for a binomial proportion", Statistical Science 2001,
section 4.1) is

  centre    = (p + z^2 / (2n)) / (1 + z^2 / n)
  half      = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
  interval  = [centre - half, centre + half],   p = k / n,

which stays inside [0, 1] and is not empty at k = 0 or k = n (where the normal
approximation collapses to a point). z = 1.96 (the 97.5% normal quantile) for 95%.
"""

import math

Z_95 = 1.959963984540054   # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
  """The Wilson score interval (low, high) of the proportion successes / n, both in
  [0, 1]; (0.0, 1.0) when n = 0 (nothing measured). Raises ValueError unless
  0 <= successes <= n."""
  if not 0 <= successes <= n:
    raise ValueError(f"successes={successes} must lie in [0, n={n}].")
  if n == 0:
    return 0.0, 1.0
  p = successes / n
  z2 = z * z
  denominator = 1.0 + z2 / n
  centre = (p + z2 / (2 * n)) / denominator
  half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
  low = 0.0 if successes == 0 else max(0.0, centre - half)
  high = 1.0 if successes == n else min(1.0, centre + half)
  return low, high


def describe(successes: int, n: int) -> dict:
  """{'correct': k, 'n': n, 'accuracy': k / n, 'low', 'high'}: a JSON-ready accuracy
  with its 95% Wilson interval (accuracy 0.0 when n = 0)."""
  low, high = wilson(successes, n)
  return {"correct": int(successes), "n": int(n),
          "accuracy": successes / n if n else 0.0, "low": low, "high": high}


def format_cell(successes: int, n: int) -> str:
  """'0.4520 [0.4213, 0.4831]': an accuracy and its 95% Wilson interval."""
  low, high = wilson(successes, n)
  return f"{successes / n if n else 0.0:.4f} [{low:.4f}, {high:.4f}]"
