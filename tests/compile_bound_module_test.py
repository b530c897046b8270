"""A module marked `compile_bound` as a whole (tests/conftest.py): its module fixtures and
its tests compile with jax_disable_most_optimizations (unless the session fixed the mode
with JAX_DISABLE_MOST_OPTIMIZATIONS); tests/compile_mode_test.py checks one marked test."""

import jax
import pytest

from tests.compile_mode_test import expected_mode

pytestmark = pytest.mark.compile_bound


@pytest.fixture(scope="module")
def mode_in_a_module_fixture():
  return jax.config.values["jax_disable_most_optimizations"]


def test_module_fixtures_and_tests_compile_unoptimised(mode_in_a_module_fixture):
  assert mode_in_a_module_fixture is expected_mode(True)
  assert jax.config.values["jax_disable_most_optimizations"] is expected_mode(True)
