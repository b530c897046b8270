# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # hfc_jax tutorial: a trained model, its kernels, its LFC/HFC images, a heat map
#
# Wang et al., "High-frequency Component Helps Explain the Generalization of CNNs"
# (CVPR 2020) split an image's centred 2-D Fourier spectrum with a disc of radius r
# (eq. 1-2): inside is the low-frequency component (LFC), outside the high-frequency
# component (HFC). A CNN often classifies the HFC image correctly although to a person it
# looks black. This notebook, in a few minutes on a CPU:
#
# 1. trains the default run for 2 epochs, or reuses the workdir if it holds a checkpoint;
# 2. restores it with the Python API;
# 3. draws its first-layer kernels as trained and after the paper's eq. 3 (section 6);
# 4. splits a few test images at r = 4, 8, 12 and shows the model's predictions;
# 5. computes a small Fourier heat map (Yin et al., NeurIPS 2019).
#
# Open it with jupytext (`jupytext --to notebook docs/tutorial.py`, or Jupyter with the
# jupytext extension) or run it as a script, `python docs/tutorial.py`, from any
# directory: figures are then saved as PNGs. Images are NHWC float32 in [0, 1]
# throughout. The API it uses is listed in docs/outputs.md, "Python API".

# %% [markdown]
# ## Settings
#
# `WORKDIR` is where the run lives (relative to the working directory, or a `gs://` URL
# with the `gcs` extra installed). `TRAIN_FLAGS` make the default run short: 2 of its
# 6 epochs. Figures and `results.json` go to `<WORKDIR>/tutorial/` (`./tutorial/` for a
# `gs://` workdir).

# %%
import json
import pathlib
import subprocess
import sys

import matplotlib

IN_NOTEBOOK = "ipykernel" in sys.modules
if not IN_NOTEBOOK:
  matplotlib.use("Agg")   # a script draws into PNG files only
import matplotlib.pyplot as plt
import numpy as np

import hfc_jax
from hfc_jax import fileio

WORKDIR = "workdirs/default"
TRAIN_FLAGS = ["--config.train.epochs=2"]
ROOT = pathlib.Path(hfc_jax.__file__).resolve().parents[1]   # the repository (editable)
CONFIG = ROOT / "configs" / "default.py"
OUT = pathlib.Path("tutorial" if fileio.is_remote(WORKDIR) else f"{WORKDIR}/tutorial")
OUT.mkdir(parents=True, exist_ok=True)


def show(fig, name: str) -> None:
  """Saves `fig` as <OUT>/<name>.png and shows it (inline in a notebook)."""
  fig.savefig(OUT / f"{name}.png", dpi=100, bbox_inches="tight")
  if IN_NOTEBOOK:
    from IPython.display import Image, display
    display(Image(filename=OUT / f"{name}.png"))
  plt.close(fig)


# %% [markdown]
# ## 1. Train, or reuse the workdir
#
# Normally you would have trained the model already, possibly on a TPU or GPU host
# (docs/cloud.md), and copied its workdir here or read it in place (`gs://` works with
# the `gcs` extra). Here, if `WORKDIR` has no `checkpoints/` yet, we run the command
# line for the default config (the embedded data set, a small CNN with the paper's
# batch-statistic BatchNorm) with 2 epochs instead of 6: about a minute on a CPU. It
# runs in a subprocess so that its JAX device set-up stays out of this process.

# %%
if fileio.is_dir(fileio.join(WORKDIR, "checkpoints")):
  print(f"{WORKDIR} holds checkpoints: reusing it.")
else:
  command = [sys.executable, "-m", "hfc_jax.main", f"--config={CONFIG}",
             f"--workdir={WORKDIR}", *TRAIN_FLAGS]
  print("running:", " ".join(command))
  done = subprocess.run(command, capture_output=True, text=True)
  print(done.stdout[-1500:])
  if done.returncode:
    raise RuntimeError(f"training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")

# %% [markdown]
# ## 2. Restore the model
#
# `common.restore(workdir)` reads the newest checkpoint onto one CPU device, whatever
# mesh wrote it, and returns a `Trained`: `functional` (the model as pure functions),
# `params` and `model_state` (nested dicts of arrays), the run's `config`, its per-epoch
# `history` (the records of `metrics.jsonl`), `step`, `num_classes`, `channels`. It sets
# the XLA flags `main` uses, so call it before any other JAX computation.

# %%
from hfc_jax.analysis import common

trained = common.restore(WORKDIR)
last = trained.history[-1]
print(f"step {trained.step}, epoch {trained.epoch}, model {trained.config.model.name} "
      f"(norm {trained.config.model.norm}), {trained.num_classes} classes")
print({k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()
       if k in ("epoch", "step", "train_loss") or k.startswith("test/")})

# %% [markdown]
# ## 3. First-layer kernels, as trained and after eq. 3
#
# The first conv kernel is HWIO, (3, 3, in channels, filters). Section 6 of the paper
# smooths each 3x3 slice with eq. 3, `w_ij <- w_ij + rho * (sum of its 8 neighbours)`,
# and finds that robust models have smoother kernels (figure 7). `filter_figure` draws
# each filter as an RGB tile, as trained and after eq. 3 at rho = 1. The scale-free
# measures (all but `total_variation`) are lower for smoother kernels; `total_variation`
# also grows with eq. 3's gain of up to 1 + 8 rho (each is defined in
# `hfc_jax/smoothness.py`).

# %%
from hfc_jax import smoothness
from hfc_jax.analysis import kernels

kernel = smoothness.first_conv_of(trained.params)
smoothed = smoothness.smooth_eq3(kernel, rho=1.0)
print("kernel", kernel.shape)
for name, k in (("as trained", kernel), ("eq. 3, rho=1", smoothed)):
  measures = smoothness.smoothness_measures(k)
  print(f"{name:13s}", {m: round(v, 4) for m, v in measures.items()})
show(kernels.filter_figure([(WORKDIR, trained)], kernels.Variant("eq3", 1.0)), "kernels")

# %% [markdown]
# ## 4. LFC and HFC images, and what the model says
#
# `common.load_test_set` gives the run's own test set as uint8 NHWC; divide by 255 for
# float32 in [0, 1]. `frequency.split_many(x, radii)` returns (LFC, HFC), each
# (R, N, H, W, C) float32; LFC + HFC is the image. The HFC has zero mean and negative
# values: drawn clipped to [0, 1] it looks black, yet the model is fed it as it is.
#
# The paper's BatchNorm normalises with the statistics of the batch at test time too,
# so an image's prediction depends on its batch: we score a batch of `eval.batch_size`
# images, as the per-epoch evaluation does, and show the first few.

# %%
from hfc_jax import frequency

RADII = (4, 8, 12)
x, y, dataset = common.load_test_set(trained, trained.config.eval.batch_size)
x = x.astype(np.float32) / 255.0                  # (N, 32, 32, 3) in [0, 1]
lfc, hfc = frequency.split_many(x, RADII)          # each (3, N, 32, 32, 3)


def predict(images):
  """Class predictions of a batch of images: (N,) int."""
  logits = trained.functional.logits(trained.params, trained.model_state, images)
  return np.asarray(logits.argmax(-1))


variants = {"clean": x, **{f"lfc_{r}": lfc[i] for i, r in enumerate(RADII)},
            **{f"hfc_{r}": hfc[i] for i, r in enumerate(RADII)}}
predictions = {name: predict(images) for name, images in variants.items()}
accuracy = {name: float(np.mean(p == y)) for name, p in predictions.items()}
print(f"accuracy on {len(y)} test images:", {k: round(v, 3) for k, v in accuracy.items()})
print("last epoch's test accuracy:   ", {k: round(last.get(f"test/{k}", np.nan), 3)
                                         for k in variants})

# %% [markdown]
# Four test images (rows): the image, its LFC and its HFC at each radius, each titled
# with the model's prediction (true label in the first column).

# %%
SHOW = 4
fig, axes = plt.subplots(SHOW, len(variants), figsize=(1.6 * len(variants), 1.8 * SHOW))
for row in range(SHOW):
  for col, (name, images) in enumerate(variants.items()):
    ax = axes[row, col]
    ax.imshow(np.clip(np.asarray(images[row]), 0, 1), interpolation="nearest")
    guess = predictions[name][row]
    title = f"{name}\npred {guess}" + (f" (y={y[row]})" if col == 0 else "")
    ax.set_title(title, fontsize=7, color="black" if guess == y[row] else "red")
    ax.set_axis_off()
show(fig, "lfc_hfc")

# %% [markdown]
# ## 5. A small Fourier heat map
#
# For each frequency (i, j) of the centred spectrum, Yin et al. add the unit-norm
# Fourier basis image U_ij, `clip(x + eps * s * U_ij, 0, 1)` with a random sign s per
# image and channel, and record the test error. eps = 4 is an L2 norm per channel on
# 32x32 images in [0, 1]. `fourier_heatmap.heatmap` computes the map over placed
# batches; here only 100 images and the frequencies with |k| <= 8 (NaN elsewhere), a
# few seconds on a CPU. `--config.mode=fourier_heatmap` computes the full map.

# %%
from hfc_jax.analysis import fourier_heatmap

HEAT_IMAGES, HEAT_RADIUS = 100, 8
mesh = common.cpu_mesh()
hx, hy, _ = common.load_test_set(trained, HEAT_IMAGES)
placed = common.batches(hx, hy, mesh=mesh, batch_size=HEAT_IMAGES, field="tutorial")
chunk_fn = fourier_heatmap.make_chunk_fn(trained.functional.logits, mesh)
height, width = hx.shape[1:3]
heat = fourier_heatmap.heatmap(
    chunk_fn, (trained.params, trained.model_state), placed, height=height, width=width,
    eps=fourier_heatmap.default_eps(height, width), batch_size=HEAT_IMAGES, seed=0,
    per_call=64, max_radius=HEAT_RADIUS)
print(f"{heat['frequencies']} frequency pairs in {heat['seconds']:.1f} s; clean error "
      f"{heat['clean_error']:.3f}, largest {np.nanmax(heat['errors']):.3f}")

# %% [markdown]
# The map, zero frequency in the centre: `heat["errors"]` is float32 (H, W), the error
# rate at each frequency (k_i, k_j) = (i - H // 2, j - W // 2), the same at (i, j) and at
# its conjugate; NaN (blank) beyond |k| = 8. Compare the centre with the rim.

# %%
fig, ax = plt.subplots(figsize=(4.5, 3.8))
extent = (-(width // 2) - 0.5, width - width // 2 - 0.5,
          -(height // 2) - 0.5, height - height // 2 - 0.5)
image = ax.imshow(heat["errors"], origin="lower", extent=extent, vmin=0,
                  interpolation="nearest")
ax.set_xlim(-HEAT_RADIUS - 1, HEAT_RADIUS + 1)
ax.set_ylim(-HEAT_RADIUS - 1, HEAT_RADIUS + 1)
ax.set_xlabel("horizontal frequency kj")
ax.set_ylabel("vertical frequency ki")
fig.colorbar(image, label="test error")
ax.set_title(f"Fourier heat map, {HEAT_IMAGES} images", fontsize=9)
show(fig, "heatmap")

# %% [markdown]
# ## Results
#
# A few numbers to check the notebook by (tests/tutorial_test.py reads
# `<WORKDIR>/tutorial/results.json`).

# %%
results = {
    "step": trained.step, "history_step": int(last["step"]), "epochs": trained.epoch,
    "kernel_shape": list(kernel.shape),
    "split_max_error": float(np.max(np.abs(lfc + hfc - x[None]))),
    "accuracy": accuracy,
    "heatmap_frequencies": heat["frequencies"],
    "heatmap_min": float(np.nanmin(heat["errors"])),
    "heatmap_max": float(np.nanmax(heat["errors"])),
    "clean_error": heat["clean_error"],
}
(OUT / "results.json").write_text(json.dumps(results, indent=1))
results
