"""The sections of `python -m hfc_jax.bench`; each one times one hot path.

A section is `fn(opts, cache) -> (result dict, table rows)` (see `common` for the
units, the timing protocol and the shared train-step cache). Modules:

  common             options, rows, timing in turns, FLOP counts, cached train steps
  train_steps        train, pgd, scaling
  torch_reference    PyTorch's ResNet-18 step for the train section (optional)
  frequency_passes   eval, split
  host_io            input, checkpoint
  heatmap            heatmap (the Fourier heat map's chunk against plain evaluation)
  autoattack         autoattack (APGD / PGD, Square / forward pass, the whole ensemble)
"""

from hfc_jax.benchmarks import autoattack, frequency_passes, heatmap, host_io, train_steps
from hfc_jax.benchmarks.common import RECIPES

SECTIONS = {"train": train_steps.train_section, "pgd": train_steps.pgd_section,
            "eval": frequency_passes.eval_section, "split": frequency_passes.split_section,
            "input": host_io.input_section, "scaling": train_steps.scaling_section,
            "checkpoint": host_io.checkpoint_section, "heatmap": heatmap.heatmap_section,
            "autoattack": autoattack.autoattack_section}

__all__ = ["RECIPES", "SECTIONS"]
