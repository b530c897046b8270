"""The `compile_bound` marker of tests/conftest.py: JAX's jax_disable_most_optimizations
on for a marked test (in this process and, through the environment, in those it starts)
and off again after it. With JAX_DISABLE_MOST_OPTIMIZATIONS set by hand every test
compiles that one way, and these tests check that instead."""

import os

import jax
import pytest
from jax._src import compiler

from tests import conftest

# The environment's value set by hand before the session, or None; and the mode JAX read
# from it (this module is imported at collection, before any fixture switches the mode).
FIXED = os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS") if conftest.COMPILE_MODE_FIXED else None
SESSION_MODE = jax.config.values["jax_disable_most_optimizations"]


def expected_mode(marked: bool) -> bool:
  """Whether a (marked) test compiles unoptimised."""
  return marked if FIXED is None else SESSION_MODE


def test_an_unmarked_test_compiles_optimised():
  assert jax.config.values["jax_disable_most_optimizations"] is expected_mode(False)
  assert ("JAX_DISABLE_MOST_OPTIMIZATIONS" in os.environ) is (FIXED is not None)


@pytest.mark.compile_bound
def test_a_marked_test_compiles_unoptimised_here_and_in_its_subprocesses():
  assert jax.config.values["jax_disable_most_optimizations"] is expected_mode(True)
  expected_env = "1" if FIXED is None else FIXED
  assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == expected_env
  # What JAX hands XLA (a private helper; the option is read there at each compile).
  options = compiler.get_compile_options(num_replicas=1, num_partitions=1)
  level = options.executable_build_options.debug_options.xla_backend_optimization_level
  assert (level == 0) is expected_mode(True)


def test_the_next_unmarked_test_is_optimised_again():
  test_an_unmarked_test_compiles_optimised()
