r"""The paper's figure 2 on a trained workdir (`--config.mode=figure2`).

  python -m hfc_jax.main --config=configs/default.py --workdir=W --config.mode=figure2

For each radius r of `figure2.radii`, counts the test images whose prediction on the HFC
image equals the prediction on the original while the prediction on the LFC image
differs from it (Wang et al., CVPR 2020, section 3 and figure 2: the model keeps its
answer on an image that looks black to a person and changes it on the one that looks
like the original).

Writes to `<workdir>/figure2/`:
  * `figure2.json`: per radius the count, the count among correctly classified images,
    the LFC / HFC correct counts, n, and the first `figure2.grid_examples` such images
    (index, label, predictions).
  * `figure2.md`: the same as a Markdown table.
  * `figure2.png`: those examples, one block of [original | LFC | HFC] columns per radius.

Data and split settings (data section, eval.inclusive, eval.rescale) come from the
checkpoint's own config; radii, images and batch size from the command line's
`figure2` section. Predictions are made exactly as the per-epoch evaluation makes them
(`evaluate.eval_step`): padded batches, each variant scored as a batch of its own, so
with the batch-statistic norm ('paper_bn') and `figure2.batch_size` 0 (the
checkpoint's eval.batch_size) the clean predictions are the recorded ones.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from hfc_jax import errors, evaluate, frequency, sharding
from hfc_jax.analysis import common
from hfc_jax.reporting import markdown
from hfc_jax.workdir.layout import Workdir

MODE = "figure2"
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
FASHION_MNIST_NAMES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                       "shirt", "sneaker", "bag", "ankle boot")


# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------
def hfc_keeps_lfc_changes(clean: jax.Array, lfc: jax.Array, hfc: jax.Array) -> jax.Array:
  """The figure-2 images: (R, N) bool, HFC prediction == clean and LFC prediction != clean.

  Args:
    clean: (N,) int predictions on the original images.
    lfc, hfc: (R, N) int predictions on the LFC / HFC images at each of R radii.
  """
  return (hfc == clean[None]) & (lfc != clean[None])


def predict_step(params, model_state, images, mask, *, logits_fn, variants_fn):
  """Predicted classes of one (padded) batch and its variants.

  Args:
    params, model_state: the model's variables (pure dicts).
    images: (N, H, W, C) uint8 or float in [0, 1]; mask: (N,) 0/1, 1 for real images.
    logits_fn: (params, model_state, images, mask=...) -> (N, K) logits, evaluation
      mode; the mask keeps padding rows out of batch statistics.
    variants_fn: float images (N, H, W, C) -> (1 + 2R, N, H, W, C), e.g.
      `evaluate.sharded_variants_fn` (clean, LFC at each radius, HFC at each radius).

  Returns:
    int32 (N, 1 + 2R) argmax predictions: variants are scored one after another with
    `lax.map`, as in `evaluate.eval_step`.
  """
  variants = variants_fn(evaluate.to_float(images))
  logits = jax.lax.map(lambda v: logits_fn(params, model_state, v, mask=mask), variants)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32).T


def make_predict_fn(logits_fn, mesh, *, radii: Sequence[float], inclusive: bool,
                    rescale: str):
  """Jits `predict_step` for a mesh: replicated variables and outputs, sharded batch."""
  variants_fn = evaluate.sharded_variants_fn(mesh, radii, inclusive=inclusive,
                                             rescale=rescale)
  step = functools.partial(predict_step, logits_fn=logits_fn, variants_fn=variants_fn)
  return jax.jit(step, out_shardings=sharding.replicated(mesh))


def predictions(predict_fn, params, model_state, x: np.ndarray, *, mesh,
                batch_size: int) -> np.ndarray:
  """int32 (1 + 2R, N) predictions over all of `x` (N, H, W, C) uint8, in order, in
  batches of `batch_size` real images in the per-epoch evaluation's padded layout
  (`common.batches`), on any mesh."""
  placed = common.batches(x, np.zeros(len(x), np.int32), mesh=mesh, batch_size=batch_size,
                          field="figure2.batch_size")
  step = lambda p, s, images, labels, mask, i: predict_fn(p, s, images, mask)
  return common.per_image(step, placed, params, model_state).T


def summarise(preds: np.ndarray, labels: np.ndarray, radii: Sequence[float],
              num_examples: int) -> dict:
  """Figure-2 counts from (1 + 2R, N) predictions and (N,) labels.

  Returns {'n', 'clean_correct', 'radii': [{radius, count, count_correct, lfc_correct,
  hfc_correct, n, examples: [{index, label, clean, lfc, hfc}]}]}; `count_correct`
  counts the figure-2 images whose original prediction is also right.
  """
  num_radii = len(radii)
  clean, lfc, hfc = preds[0], preds[1:1 + num_radii], preds[1 + num_radii:]
  mask = np.asarray(hfc_keeps_lfc_changes(clean, lfc, hfc))
  right = clean == labels
  rows = []
  for k, r in enumerate(radii):
    idx = np.flatnonzero(mask[k])[:num_examples]
    rows.append({
        "radius": float(r), "count": int(mask[k].sum()),
        "count_correct": int((mask[k] & right).sum()),
        "lfc_correct": int((lfc[k] == labels).sum()),
        "hfc_correct": int((hfc[k] == labels).sum()), "n": int(len(labels)),
        "examples": [{"index": int(i), "label": int(labels[i]), "clean": int(clean[i]),
                      "lfc": int(lfc[k, i]), "hfc": int(hfc[k, i])} for i in idx]})
  return {"n": int(len(labels)), "clean_correct": int(right.sum()), "radii": rows}


def class_names(data_config, num_classes: int) -> tuple[str, ...] | None:
  """CIFAR-10 or Fashion-MNIST class names when the data set is one of them, else None."""
  name = data_config.name
  path = str(data_config.path or "").lower()
  if num_classes == 10 and name == "cifar10":
    return CIFAR10_NAMES
  if num_classes == 10 and (name == "fashion_mnist" or (name == "idx" and "fashion" in path)):
    return FASHION_MNIST_NAMES
  return None


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def check_figure2_config(fc, image_size: int) -> None:
  """One-line HfcErrors for the `figure2.*` fields (a batch size of 0 is resolved to the
  checkpoint's eval.batch_size by the caller)."""
  if not fc.radii:
    raise errors.HfcError("figure2.radii=() must name at least one radius.")
  for r in fc.radii:
    frequency.check_radius(r, image_size, image_size, field="figure2.radii")
  errors.check_range("figure2.num_images", fc.num_images, 0, None, integer=True)
  errors.check_range("figure2.grid_examples", fc.grid_examples, 0, None, integer=True)
  errors.check_range("figure2.batch_size", fc.batch_size, 0, None, integer=True)


def run(config, workdir: Workdir) -> dict:
  """Runs the analysis on `workdir`'s latest checkpoint; returns (and writes) the results."""
  mesh = sharding.make_mesh(config.num_devices)
  fc = config.figure2
  trained = common.restore(workdir, mesh=mesh)
  ec = trained.config.eval
  x, y, dataset = common.load_test_set(trained, fc.num_images, field="figure2.num_images")
  check_figure2_config(fc, dataset.image_size)
  batch_size = fc.batch_size or ec.batch_size   # real images per batch, on any mesh
  sharding.padded_batch_size("figure2.batch_size", batch_size, mesh)
  radii = tuple(float(r) for r in fc.radii)
  inclusive = bool(ec.inclusive)
  predict_fn = make_predict_fn(trained.functional.logits, mesh, radii=radii,
                               inclusive=inclusive, rescale=ec.rescale)
  preds = predictions(predict_fn, trained.params, trained.model_state, x, mesh=mesh,
                      batch_size=batch_size)
  results = {"workdir": str(workdir), "epoch": trained.epoch, "step": trained.step,
             "data": dataset.name, "inclusive": inclusive, "batch_size": batch_size,
             **summarise(preds, y, radii, fc.grid_examples)}
  if jax.process_index() == 0:
    for row in results["radii"]:
      print(f"figure2 r={row['radius']:g}: {row['count']}/{row['n']} images keep their "
            f"prediction on the HFC and change it on the LFC ({row['count_correct']} of "
            f"them correctly classified)", flush=True)
  names = class_names(trained.config.data, trained.num_classes)
  common.write_outputs(common.output_dir(workdir, MODE),
                       json_files={"figure2.json": results},
                       texts={"figure2.md": to_markdown(results)},
                       figures={"figure2.png": plot_grid(x, results, names,
                                                         inclusive=inclusive)})
  return results


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def to_markdown(results: dict) -> str:
  """The counts as a Markdown table."""
  n = results["n"]
  rows = [[f"{row['radius']:g}", str(row["count"]), f"{row['count'] / max(n, 1):.4f}",
           str(row["count_correct"]), str(row["lfc_correct"]), str(row["hfc_correct"]),
           str(row["n"])] for row in results["radii"]]
  lines = [f"# Figure 2 on {results['workdir']} (epoch {results['epoch']})", "",
           f"{n} test images of `{results['data']}`; clean accuracy "
           f"{results['clean_correct'] / max(n, 1):.4f}. *count*: images whose prediction "
           "on the HFC image equals the prediction on the original while the LFC image's "
           "prediction differs; *of them correct*: those whose original prediction is "
           "right.", "",
           markdown.table(["r", "count", "share", "of them correct", "LFC correct",
                           "HFC correct", "n"], rows),
           "![examples](figure2.png)"]
  return "\n".join(lines) + "\n"


def _label(k: int, names: Sequence[str] | None) -> str:
  return names[k] if names is not None and 0 <= k < len(names) else str(k)


def _show(ax, image: np.ndarray, title: str) -> None:
  """Draws an (H, W, C) image in [0, 1]; grey (C == 1) with a grey colormap."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(image)
  ax.set_title(title, fontsize=7)


def plot_grid(x: np.ndarray, results: dict, names: Sequence[str] | None, *,
              inclusive: bool):
  """The example grid: for each radius, columns [original | LFC | HFC], one row per
  example (`results['radii'][k]['examples']`). LFC is clipped to [0, 1]; HFC, near
  black, is shown as 0.5 + 0.5 * hfc / max|hfc| (its own scale). Returns the Figure."""
  rows = max([len(r["examples"]) for r in results["radii"]] + [1])
  cols = 3 * len(results["radii"])
  fig = Figure(figsize=(1.5 * cols, 1.6 * rows + 0.6))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for k, row in enumerate(results["radii"]):
    if not row["examples"]:
      axes[0, 3 * k].text(0.0, 0.5, f"r={row['radius']:g}: no image", fontsize=8)
      continue
    idx = np.array([e["index"] for e in row["examples"]])
    images = x[idx].astype(np.float32) / 255.0
    lfc, hfc = (np.asarray(a) for a in frequency.split(images, row["radius"],
                                                       inclusive=inclusive))
    peak = np.maximum(np.abs(hfc).max(axis=(1, 2, 3), keepdims=True), 1e-12)
    for i, e in enumerate(row["examples"]):
      r = f"r={row['radius']:g} "
      _show(axes[i, 3 * k], images[i], f"{r}#{e['index']} true {_label(e['label'], names)}"
            f"\norig: {_label(e['clean'], names)}")
      _show(axes[i, 3 * k + 1], np.clip(lfc[i], 0.0, 1.0),
            f"{r}LFC\npred: {_label(e['lfc'], names)}")
      _show(axes[i, 3 * k + 2], 0.5 + 0.5 * hfc[i] / peak[i],
            f"{r}HFC (x 1/max|HFC|)\npred: {_label(e['hfc'], names)}")
  fig.suptitle("Figure 2: HFC keeps the prediction, LFC changes it. LFC clipped to [0, 1]; "
               "HFC shown as 0.5 + 0.5 HFC / max|HFC| per image (it is near black).",
               fontsize=9)
  fig.tight_layout()
  return fig
