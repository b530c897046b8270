"""`python -m hfc_jax.bench`: each section times one hot path.

A section is `fn(opts, cache) -> (result dict, table rows)` (see `common` for the
units, the timing protocol and the shared train-step cache). Modules:

  driver             the command: flags, the SECTIONS it runs, the table and the JSON
  common             options, rows, timing in turns, FLOP counts, cached train steps
  train_steps        train, pgd, scaling
  torch_reference    PyTorch's ResNet-18 step for the train section (optional)
  frequency_passes   eval, split
  host_io            input, checkpoint
  heatmap            heatmap (the Fourier heat map's chunk against plain evaluation)
  autoattack         autoattack (APGD / PGD, Square / forward pass, the whole ensemble)
  groups             groups (run-parallel groups of small_cnn runs / the runs one by one)

This file imports nothing: `driver` sets XLA_FLAGS before the sections import JAX.
"""
