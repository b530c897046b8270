r"""Accuracy on band-pass images and at every radius (`--config.mode=bands`).

  python -m hfc_jax.main --config=configs/default.py --workdir=W --config.mode=bands \
      --config.bands.compare="('W2',)"

Wang et al. (CVPR 2020) score the LFC and the HFC at a few radii. This study scores,
for the run's workdir and every workdir of `bands.compare` (same test set), on the
first `bands.num_images` test images:

  * accuracy on images that keep only one annulus r1 <= dist < r2 of the centred
    spectrum (`frequency.band_pass_many`), for each band of `bands.bands`;
  * LFC and HFC accuracy at every integer radius from 1 to the spectrum's corner
    (`frequency.corner_radius`, 23 for 32x32), where the LFC is all and the HFC nothing.

Every model is scored as the per-epoch evaluation scores it (`evaluate.make_eval_fn`:
the masked padded batches of `common.batches`, the mask passed to the model so that
batch-statistic norms never see padding, all variants in one jitted step with each
variant a batch of its own), with its checkpoint's `eval.inclusive` and `eval.rescale`
and, with `bands.batch_size` 0, its `eval.batch_size`. Writes into `<workdir>/bands/`:
`bands.json`, `bands.md` (a band table and an every-radius table) and `bands.png`
(accuracy vs band, and LFC / HFC accuracy vs radius, one colour per model).
"""

import functools

from absl import logging
from matplotlib.figure import Figure

from hfc_jax import errors, evaluate, frequency, sharding
from hfc_jax.analysis import common
from hfc_jax.reporting import markdown
from hfc_jax.workdir.layout import Workdir

MODE = "bands"


def check_bands_config(bc) -> None:
  """One-line HfcErrors for the `bands.*` fields that need no data (the bands
  themselves are checked against the image size by `frequency.check_bands`)."""
  if not bc.bands:
    raise errors.HfcError("bands.bands=() must name at least one (r1, r2) band.")
  frequency.check_bands(bc.bands, None, None, field="bands.bands")  # pairs, order, sign
  errors.check_range("bands.num_images", bc.num_images, 0, None, integer=True)
  errors.check_range("bands.batch_size", bc.batch_size, 0, None, integer=True)
  for workdir in bc.compare:
    if not isinstance(workdir, str) or not workdir:
      raise errors.HfcError(f"bands.compare={tuple(bc.compare)!r} must list workdirs.")


def accuracies(eval_fn, variables, placed: list, names: list[str]) -> dict[str, float]:
  """{variant name: accuracy} of `eval_fn` (`evaluate.make_eval_fn`) over the placed
  batches, summed on device and fetched once."""
  totals = evaluate.accumulate(functools.partial(eval_fn, *variables), placed)
  count = max(float(totals["count"]), 1.0)
  return {n: float(c) / count for n, c in zip(names, totals["correct"], strict=True)}


def score_model(workdir: str, trained: common.Trained, x, y, *, bands, radii, mesh,
                batch_size: int) -> dict:
  """One model's row: clean, per-band and per-radius LFC / HFC accuracy."""
  ec = trained.config.eval
  inclusive, rescale = bool(ec.inclusive), ec.rescale
  batch_size = batch_size or int(ec.batch_size)
  placed = common.batches(x, y, mesh=mesh, batch_size=batch_size, field="bands.batch_size")
  eval_fn = evaluate.make_eval_fn(trained.functional.logits, mesh, radii=radii, bands=bands,
                                  inclusive=inclusive, rescale=rescale)
  acc = accuracies(eval_fn, (trained.params, trained.model_state), placed,
                   evaluate.variant_names(radii, bands))
  logging.info("%s: clean %.4f, bands %s", workdir, acc["clean"],
               [round(acc[evaluate.band_name(*b)], 4) for b in bands])
  return {"workdir": workdir, "name": trained.name, "epoch": trained.epoch,
          "step": trained.step, "inclusive": inclusive, "rescale": rescale,
          "batch_size": batch_size, "clean": acc["clean"],
          "bands": [acc[evaluate.band_name(*b)] for b in bands],
          "lfc": [acc[f"lfc_{r:g}"] for r in radii],
          "hfc": [acc[f"hfc_{r:g}"] for r in radii]}


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def run(config, workdir: Workdir) -> dict:
  """Restores `workdir` and `bands.compare`, scores them, writes `<workdir>/bands/`;
  returns the results."""
  bc = config.bands
  check_bands_config(bc)
  mesh = sharding.make_mesh(config.num_devices)
  models = common.restore_compared(workdir, bc.compare, field="bands.compare", mesh=mesh)
  x, y, dataset = common.load_test_set(models[0][1], bc.num_images, field="bands.num_images")
  height, width = x.shape[1:3]
  bands = frequency.check_bands(bc.bands, height, width, field="bands.bands")
  corner = frequency.corner_radius(height, width)
  radii = tuple(float(r) for r in range(1, corner + 1))
  for _, trained in models:
    sharding.padded_batch_size("bands.batch_size",
                               bc.batch_size or trained.config.eval.batch_size, mesh)
  results = {"data": dataset.name, "num_images": int(len(x)), "shape": list(x.shape[1:]),
             "corner": corner, "bands": [list(b) for b in bands], "radii": list(radii),
             "models": [score_model(w, t, x, y, bands=bands, radii=radii, mesh=mesh,
                                    batch_size=bc.batch_size) for w, t in models]}
  common.write_outputs(common.output_dir(workdir, MODE), json_files={"bands.json": results},
                       texts={"bands.md": to_markdown(results)},
                       figures={"bands.png": bands_figure(results)})
  return results


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def band_label(band) -> str:
  """'[4, 8)': the annulus r1 <= dist < r2."""
  return f"[{band[0]:g}, {band[1]:g})"


def to_markdown(results: dict) -> str:
  """A table of band accuracy per model and one of LFC / HFC accuracy per radius."""
  models = results["models"]
  band_rows = [[m["name"], str(m["epoch"]), f"{m['clean']:.4f}"]
               + [f"{a:.4f}" for a in m["bands"]] for m in models]
  radius_rows = [[f"{r:g}"] + [f"{m[k][i]:.4f}" for m in models for k in ("lfc", "hfc")]
                 for i, r in enumerate(results["radii"])]
  lines = ["# Band-pass and every-radius accuracy", "",
           f"{results['num_images']} test images of `{results['data']}` "
           f"({'x'.join(str(s) for s in results['shape'])}; spectrum corner radius "
           f"{results['corner']}). A band [r1, r2) keeps r1 <= dist < r2 of the centred "
           "spectrum (r1 < dist <= r2 for a model with eval.inclusive).", "",
           "## Accuracy on band-pass images", "",
           markdown.table(["model", "epoch", "clean"]
                          + [band_label(b) for b in results["bands"]], band_rows),
           "## LFC and HFC accuracy at every radius", "",
           markdown.table(["r"] + [f"{m['name']} {k}" for m in models
                                   for k in ("LFC", "HFC")], radius_rows),
           "![bands](bands.png)"]
  return "\n".join(lines) + "\n"


def bands_figure(results: dict) -> Figure:
  """Left: accuracy vs band, one line per model (clean dotted); right: LFC (solid) and
  HFC (dashed) accuracy vs radius, one colour per model."""
  fig = Figure(figsize=(11, 4), layout="constrained")
  left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 1.3)})
  labels = [band_label(b) for b in results["bands"]]
  for k, m in enumerate(results["models"]):
    colour = f"C{k % 10}"
    left.plot(range(len(labels)), m["bands"], "-o", ms=4, color=colour, label=m["name"])
    left.axhline(m["clean"], ls=":", color=colour, lw=1)
    right.plot(results["radii"], m["lfc"], "-", color=colour, label=f"{m['name']} LFC")
    right.plot(results["radii"], m["hfc"], "--", color=colour, label=f"{m['name']} HFC")
  left.set_xticks(range(len(labels)), labels, fontsize=8)
  left.set_xlabel("band r1 <= dist < r2")
  left.set_title("band-pass images (dotted: clean)", fontsize=9)
  right.set_xlabel("radius r")
  right.set_title("LFC (solid) and HFC (dashed)", fontsize=9)
  for ax in (left, right):
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
  return fig
