"""hfc_jax.models.initializers: JAX's variance scaling, bit for bit, drawn in 2-D or 3-D."""

import jax
import numpy as np
import pytest

from hfc_jax.models import initializers

# (ours, JAX's) for every initialiser the models use, and LeCun normal (nnx's default).
PAIRS = {
    "he_normal": (initializers.he_normal(), jax.nn.initializers.he_normal()),
    "glorot_uniform": (initializers.glorot_uniform(), jax.nn.initializers.glorot_uniform()),
    "lecun_normal": (initializers.lecun_normal(), jax.nn.initializers.lecun_normal()),
    "fan_out_normal": (initializers.variance_scaling(2.0, "fan_out", "normal"),
                       jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("shape", [(3, 3, 3, 16), (2, 5, 4), (64, 10)])
def test_the_same_numbers_as_jax(name, shape):
  ours, theirs = PAIRS[name]
  key = jax.random.key(3)
  a, b = np.asarray(ours(key, shape)), np.asarray(theirs(key, shape))
  assert a.shape == shape and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert np.unique(a).size == a.size          # really drawn, not a constant


def test_drawn_shapes_and_variances_by_hand():
  # A 3x3 conv from 16 to 32 channels: fan_in 3*3*16 = 144, fan_out 3*3*32 = 288. He
  # normal reads fan_in alone, kept by (144, 32); the others keep both in (9, 16, 32).
  assert initializers.drawn_shape((3, 3, 16, 32), "fan_in") == (144, 32)
  assert initializers.drawn_shape((3, 3, 16, 32), "fan_out") == (9, 16, 32)
  assert initializers.drawn_shape((3, 3, 16, 32), "fan_avg") == (9, 16, 32)
  assert initializers.drawn_shape((64, 10), "fan_avg") == (64, 10)
  # Over the 4,608 numbers the sample variance is within 7% of scale / fan (about three
  # standard errors, sqrt(2 / 4608) = 2.1%) and the mean within 0.05 standard deviations.
  key = jax.random.key(0)
  for init, variance in ((initializers.he_normal(), 2 / 144),
                         (initializers.glorot_uniform(), 2 / (144 + 288)),
                         (initializers.variance_scaling(2.0, "fan_out", "normal"), 2 / 288)):
    x = np.asarray(init(key, (3, 3, 16, 32)))
    assert abs(x.var() / variance - 1) < 0.07 and abs(x.mean()) < 0.05 * x.std()


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="mode must be one of"):
    initializers.variance_scaling(1.0, "fan_sum", "normal")
  with pytest.raises(ValueError, match="distribution"):
    initializers.variance_scaling(1.0, "fan_in", "cauchy")
  with pytest.raises(ValueError, match="1-dimensional weights tensor"):   # JAX's own check
    initializers.he_normal()(jax.random.key(0), (7,))
