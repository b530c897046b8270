"""Every post-training study: each restores a trained workdir (written on any mesh, local
or gs://), computes on it and writes `<workdir>/<mode>/`.

`MODES` maps each `--config.mode` of a study to the module whose `run(config, workdir)`
carries it out; modules are imported when their mode runs, so choosing a mode costs no
JAX start-up. `common` holds what the studies share (restore, test set, batched scoring,
output writing).
"""

import importlib

MODES = {
    "robust_eval": "hfc_jax.analysis.robustness",   # attacks, minimal eps, low-pass defence
    "figure2": "hfc_jax.analysis.figure2",          # HFC keeps / LFC changes the prediction
    "kernels": "hfc_jax.analysis.kernels",          # first-layer kernels, eq. 3 smoothing
    "fourier_heatmap": "hfc_jax.analysis.fourier_heatmap",  # error per Fourier basis perturbation
    "perturbation_spectrum": "hfc_jax.analysis.perturbation_spectrum",  # where attacks put energy
    "bands": "hfc_jax.analysis.bands",              # band-pass and every-radius LFC/HFC accuracy
}


def run(mode: str, config, workdir):
  """Runs study `mode` (a key of MODES) on `workdir` (a `hfc_jax.workdir.Workdir`);
  returns its results."""
  return importlib.import_module(MODES[mode]).run(config, workdir)
