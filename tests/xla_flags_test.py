"""The CPU default XLA flags: when they are added, that a user's flags win, and that XLA
then compiles convolutions without YNNPACK (dots keep it)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from hfc_jax import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tested_jaxlib(monkeypatch):
  monkeypatch.setattr(xla_flags, "jaxlib_minor", lambda: xla_flags.TESTED_JAXLIB[0])


def test_with_defaults_appends_only_flags_not_named():
  assert xla_flags.with_defaults("") == f"{FLAG}=-individual_convolution"
  assert (xla_flags.with_defaults(" --xla_dump_to=/tmp/d ")
          == f"--xla_dump_to=/tmp/d {FLAG}=-individual_convolution")
  mine = f"--xla_dump_to=/tmp/d {FLAG}=+individual_convolution"
  assert xla_flags.with_defaults(mine) == mine
  assert xla_flags.with_defaults(FLAG) == FLAG                      # bare flag counts
  # A flag whose name only starts like ours is not ours.
  assert xla_flags.with_defaults(f"{FLAG}_x=1") == f"{FLAG}_x=1 {FLAG}=-individual_convolution"


def test_cpu_device_count_reads_xla_flags_then_jax_num_cpu_devices():
  count = xla_flags.cpu_device_count
  assert count({}) == 1
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}) == 8
  assert count({"XLA_FLAGS": "--a=1 --xla_force_host_platform_device_count=1"}) == 1
  assert count({"JAX_NUM_CPU_DEVICES": "4"}) == 4
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                "JAX_NUM_CPU_DEVICES": "4"}) == 2


@pytest.mark.parametrize("environ, added", [
    ({"JAX_PLATFORMS": "cpu"}, True),
    ({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, True),
    ({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, False),
    ({"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}, False),
    ({"JAX_PLATFORMS": "cuda"}, False),
    ({"JAX_PLATFORMS": "tpu,cpu"}, False),
])
def test_set_cpu_defaults_only_on_one_cpu_device(tested_jaxlib, environ, added):
  before = environ.get("XLA_FLAGS", "")
  result = xla_flags.set_cpu_defaults(environ)
  assert result == environ.get("XLA_FLAGS", "")
  assert (f"{FLAG}=-individual_convolution" in result) == added
  if added:
    assert result.startswith(before)          # the user's flags are kept, in order
  else:
    assert result == before


def test_set_cpu_defaults_skips_untested_jaxlib(monkeypatch):
  monkeypatch.setattr(xla_flags, "jaxlib_minor", lambda: "9.99")
  environ = {"JAX_PLATFORMS": "cpu"}
  assert xla_flags.set_cpu_defaults(environ) == ""
  assert "XLA_FLAGS" not in environ


def _conv_and_dot_hlo() -> tuple[str, str]:
  """Compiled HLO of a (8, 16, 16, 64) 3x3 conv and a 128x512 @ 512x256 matmul (large
  enough for XLA to pick YNNPACK by default)."""
  x, w = jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64))
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  a, b = jnp.ones((128, 512)), jnp.ones((512, 256))
  return (jax.jit(conv).lower(x, w).compile().as_text(),
          jax.jit(jnp.matmul).lower(a, b).compile().as_text())


_CHILD = """
import sys
from hfc_jax import xla_flags
assert "jax" not in sys.modules, "xla_flags must not import JAX"
print(xla_flags.set_cpu_defaults())
from tests import xla_flags_test
conv, dot = xla_flags_test._conv_and_dot_hlo()
print("conv:", "__ynn_fusion" in conv, "dot:", "__ynn_fusion" in dot)
"""


def test_flag_takes_convolutions_off_ynnpack_and_keeps_dots():
  """On a tested jaxlib the child process gets the flag and its convolutions leave YNNPACK;
  on any other (a new release under `.ci/run`'s newest Python) it starts without the flag."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=120, check=True).stdout.splitlines()
  if xla_flags.jaxlib_minor() not in xla_flags.TESTED_JAXLIB:
    assert out[0] == "" and out[1].startswith("conv: "), out
    return
  # This process: 8 simulated devices (conftest), no flag; XLA's default lowering.
  conv, dot = _conv_and_dot_hlo()
  assert "__ynn_fusion" in conv and "__ynn_fusion" in dot
  assert out[0] == f"{FLAG}=-individual_convolution"
  assert out[1] == "conv: False dot: True"
