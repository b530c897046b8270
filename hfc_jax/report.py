"""`python -m hfc_jax.report`: runs hfc_jax/reporting/report.py as the main module."""

import runpy

if __name__ == "__main__":
  runpy.run_module("hfc_jax.reporting.report", run_name="__main__", alter_sys=True)
