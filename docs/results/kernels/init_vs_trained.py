"""Smoothness measures of each workdir's first conv at initialisation and as trained.

  python docs/results/kernels/init_vs_trained.py WORKDIR [WORKDIR ...]

Run from the repository root. Rebuilds each run's model from its own config and seed
(the initial kernel W0), restores the trained kernel W, prints ||W - W0|| / ||W0|| and
the `hfc_jax.smoothness` measures of W0, W and W - W0, and writes them as JSON to
init_vs_trained.json in the current directory (the copy beside this script came from
the runs of docs/results.md, "First-layer kernels").
"""
import json
import sys

import numpy as np

from hfc_jax.analysis import common

common.apply_backend_settings()

from hfc_jax import models, smoothness  # noqa: E402  (after the backend settings)

out = {}
for w in sys.argv[1:]:
  t = common.restore(w, mesh=common.cpu_mesh())
  init = models.from_config(t.config.model, num_classes=t.num_classes,
                            in_channels=t.channels, seed=t.config.seed)
  k0 = np.asarray(models.first_conv_kernel(init))
  k = np.asarray(smoothness.first_conv_of(t.params))
  rel = float(np.linalg.norm(k - k0) / np.linalg.norm(k0))
  m0, m = smoothness.smoothness_measures(k0), smoothness.smoothness_measures(k)
  md = smoothness.smoothness_measures(k - k0)
  out[w] = {"rel_change": rel, "init": m0, "trained": m, "delta": md,
            "norm_init": float(np.linalg.norm(k0)), "norm_trained": float(np.linalg.norm(k))}
  print(f"{w}: ||W-W0||/||W0|| = {rel:.3f}; ||W0|| {np.linalg.norm(k0):.3f}, "
        f"||W|| {np.linalg.norm(k):.3f}")
  for name in m:
    print(f"   {name:30s} init {m0[name]:9.4f} trained {m[name]:9.4f} (W-W0) {md[name]:9.4f}")
with open("init_vs_trained.json", "w") as f:
  json.dump(out, f, indent=1)
