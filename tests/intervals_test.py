"""The 95% Wilson score interval against hand-computed values and the textbook formula."""

import math

import pytest

from hfc_jax import intervals


def _textbook(k, n, z=1.96):
  """Wilson (1927) as usually printed: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) /
  (1 + z^2/n)."""
  p = k / n
  centre = p + z * z / (2 * n)
  spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


@pytest.mark.parametrize("k,n,expected", [
    # Worked by hand with z = 1.96: 0 of 10 -> [0, 3.8416 / 13.8416]; 5 of 10 ->
    # 0.5 +- 1.96 sqrt(0.025 + 0.0096) / 1.38416; 1000 of 1000 -> [1000 / 1003.8416, 1].
    (0, 10, (0.0, 0.27754)),
    (5, 10, (0.23659, 0.76341)),
    (1000, 1000, (0.99617, 1.0)),
    (1, 128, (0.00138, 0.04293)),
])
def test_wilson_matches_hand_computed_values(k, n, expected):
  low, high = intervals.wilson(k, n)
  assert low == pytest.approx(expected[0], abs=1e-5)
  assert high == pytest.approx(expected[1], abs=1e-5)
  tb_low, tb_high = _textbook(k, n)
  assert low == pytest.approx(max(tb_low, 0.0), abs=1e-5)
  assert high == pytest.approx(min(tb_high, 1.0), abs=1e-5)


def test_wilson_edges_and_bad_counts():
  assert intervals.wilson(0, 0) == (0.0, 1.0)        # nothing measured
  low, high = intervals.wilson(3, 7)
  assert 0 < low < 3 / 7 < high < 1
  # Symmetric: k of n and n - k of n mirror around 1/2.
  assert intervals.wilson(7 - 3, 7) == pytest.approx((1 - high, 1 - low))
  with pytest.raises(ValueError, match="successes=11"):
    intervals.wilson(11, 10)
  assert intervals.describe(5, 10) == {"correct": 5, "n": 10, "accuracy": 0.5,
                                       "low": pytest.approx(0.23659, abs=1e-5),
                                       "high": pytest.approx(0.76341, abs=1e-5)}
  assert intervals.format_cell(5, 10) == "0.5000 [0.2366, 0.7634]"
