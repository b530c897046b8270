"""hfc_jax.models.initializers: JAX's variance scaling, bit for bit, cut from shared draws."""

import logging
import re

import jax
import numpy as np
import pytest

from hfc_jax.models import initializers

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

# (ours, JAX's) for every initialiser the models use (LeCun normal: the heads', nnx's
# default).
PAIRS = {
    "he_normal": (initializers.he_normal(), jax.nn.initializers.he_normal()),
    "glorot_uniform": (initializers.glorot_uniform(), jax.nn.initializers.glorot_uniform()),
    "lecun_normal": (initializers.lecun_normal(), jax.nn.initializers.lecun_normal()),
    "fan_out_normal": (initializers.variance_scaling(2.0, "fan_out", "normal"),
                       jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")),
}


# A first conv and a head below, a kernel at (256 * 256) and one above (3 * 3 * 64 * 128)
# the smallest draw, 2**16 numbers. (Each case compiles JAX's own draw: about 0.7 CPU-s.)
@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("shape", [(3, 3, 3, 16), (64, 10), (1, 1, 256, 256),
                                   (3, 3, 64, 128)])
def test_the_same_numbers_as_jax(name, shape):
  ours, theirs = PAIRS[name]
  key = jax.random.key(3)
  a, b = np.asarray(ours(key, shape)), np.asarray(theirs(key, shape))
  assert a.shape == shape and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert np.unique(a).size > 0.9 * a.size      # really drawn, not a constant


def test_a_3d_kernel_and_the_mode_no_model_uses_give_the_same_numbers_as_jax():
  ours = initializers.variance_scaling(0.7, "fan_geo_avg", "normal")
  theirs = jax.nn.initializers.variance_scaling(0.7, "fan_geo_avg", "normal")
  key = jax.random.key(5)
  np.testing.assert_array_equal(ours(key, (2, 5, 4)), theirs(key, (2, 5, 4)))


def test_draw_sizes_and_fans_by_hand():
  # At least 2**16 numbers, else the next power of two: 3*3*128*256 = 294,912 -> 2**19.
  assert [initializers.draw_size(n) for n in (1, 432, 65536, 65537, 294912)] == [
      65536, 65536, 65536, 131072, 524288]
  # A 3x3 conv from 16 to 32 channels: fan_in 3*3*16 = 144, fan_out 3*3*32 = 288.
  assert initializers.fans((3, 3, 16, 32)) == (144, 288)
  assert initializers.fans((64, 10)) == (64, 10)
  # Over the 4,608 numbers the sample variance is within 7% of scale / fan (about three
  # standard errors, sqrt(2 / 4608) = 2.1%) and the mean within 0.05 standard deviations.
  key = jax.random.key(0)
  for init, variance in ((initializers.he_normal(), 2 / 144),
                         (initializers.glorot_uniform(), 2 / (144 + 288)),
                         (initializers.variance_scaling(2.0, "fan_out", "normal"), 2 / 288)):
    x = np.asarray(init(key, (3, 3, 16, 32)))
    assert abs(x.var() / variance - 1) < 0.07 and abs(x.mean()) < 0.05 * x.std()


def test_kernels_of_one_draw_size_share_one_compiled_draw(caplog):
  # Three shapes under 2**16 numbers, in float16 (a dtype no other test draws, so the
  # draw is new to this process): the truncated-normal draw is compiled once, not three
  # times; each kernel still gets its own numbers from its own key.
  init = initializers.variance_scaling(1.3, "fan_avg", "truncated_normal")
  with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
    kernels = [np.asarray(init(jax.random.key(s), shape, np.float16))
               for s, shape in enumerate([(3, 3, 5, 7), (11, 13), (2, 2, 9, 9)])]
  draws = [r for r in caplog.records
           if re.search(r"Finished XLA compilation of jit\(_truncated_normal\)", r.getMessage())]
  assert len(draws) == 1, [r.getMessage() for r in draws]
  assert len({float(k.ravel()[0]) for k in kernels}) == 3


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="mode must be one of"):
    initializers.variance_scaling(1.0, "fan_sum", "normal")
  with pytest.raises(ValueError, match="distribution"):
    initializers.variance_scaling(1.0, "fan_in", "cauchy")
  with pytest.raises(ValueError, match=r"at least 2 axes .* got shape \(7,\)"):
    initializers.he_normal()(jax.random.key(0), (7,))
