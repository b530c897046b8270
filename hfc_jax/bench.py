"""`python -m hfc_jax.bench`: runs hfc_jax/benchmarks/driver.py as the main module."""

import runpy

if __name__ == "__main__":
  runpy.run_module("hfc_jax.benchmarks.driver", run_name="__main__", alter_sys=True)
