r"""First-layer kernels of trained models (`--config.mode=kernels`): what they look
like, how smooth they are, and whether smoothing them buys robustness.

  python -m hfc_jax.main --config=configs/kernels.py --workdir=W \
      --config.kernels.compare="('W2','W3')"

Wang et al. (CVPR 2020), section 6: adversarially trained models have smoother
first-layer kernels (their figure 7), and smoothing a plain model's first layer with
eq. 3, `w_ij <- w_ij + rho * (sum of its 8 neighbours)`, is claimed to make it more
robust than a PGD-trained model at eps 0.09 (their table 2). For the run's workdir and
every workdir of `kernels.compare` (same data set and image size), this writes into
`<workdir>/kernels/`:

  * `kernels_rgb.png`: each model's first-conv filters as images (RGB for 3-channel
    inputs, grey otherwise), original and after eq. 3 at `kernels.show_rho`, each row on
    one colour scale of its own; `kernels_channels.png`: every filter per input channel.
  * `measures.json`, and a table in `kernels.md`: the smoothness measures of
    `hfc_jax.smoothness` for each model, original and after each smoothing.
  * `sweep.json`, a table in `kernels.md` and `sweep.png`: table 2 as a sweep. For each
    rho of `kernels.rhos` and each cut-off of `kernels.cutoffs`, the first conv replaced
    by each of `kernels.variants`:
      eq3         eq. 3 as written (smooths, and amplifies by up to 1 + 8 rho);
      eq3_renorm  eq. 3 divided by 1 + 8 rho (smooths without amplifying);
      scaled      the kernel times 1 + 8 rho (amplifies without smoothing);
      lowpass     a Fourier low-pass of each kernel at each cut-off;
    (eq3_renorm and scaled are the controls that tell smoothing from gain; at rho = 0
    all three are the model as trained, run once as `eq3 rho=0`), clean accuracy and
    accuracy under each attack of `kernels.attacks` (`robust_table`: FGSM, PGD with
    `kernels.pgd_steps` steps of eps/4, the AutoAttack family) and their worst case at
    each `kernels.eps`, with 95% Wilson intervals and the gradient-masking checks, on
    the first `kernels.num_images` test images, the attacks run end to end through the
    changed model. Its rho = 0 row is the plain model's robust evaluation (`robust_eval`
    with the same settings gives the same numbers).

Only the first conv layer is changed; BatchNorm statistics and every other parameter
stay as trained.
"""

import dataclasses

import numpy as np
from absl import logging
from matplotlib.figure import Figure

from hfc_jax import errors, sharding, smoothness
from hfc_jax.analysis import common, masking, robust_table, robustness
from hfc_jax.models import layers
from hfc_jax.reporting import markdown
from hfc_jax.workdir.layout import Workdir

MODE = "kernels"
MAX_FILTERS = 32   # filters drawn per model row
VARIANTS = ("eq3", "eq3_renorm", "scaled", "lowpass")
RHO_VARIANTS = VARIANTS[:3]
_NAMES = {"eq3": "eq3 rho={:g}", "eq3_renorm": "eq3 renorm rho={:g}",
          "scaled": "scaled rho={:g}", "lowpass": "lowpass c={:g}"}
_APPLY = {"eq3": smoothness.smooth_first_conv, "eq3_renorm": smoothness.renormalised_first_conv,
          "scaled": smoothness.scaled_first_conv, "lowpass": smoothness.lowpass_first_conv}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One way of changing the first conv: a method of VARIANTS at `value` (rho, or the
  cut-off of 'lowpass')."""
  method: str
  value: float

  @property
  def name(self) -> str:
    """'eq3 rho=0.5', 'eq3 renorm rho=0.5', 'scaled rho=0.5', 'lowpass c=1'."""
    return _NAMES[self.method].format(self.value)

  def apply(self, params, model: str):
    return _APPLY[self.method](params, self.value, model=model)


# ---------------------------------------------------------------------------
# Checks (all before anything is restored or written)
# ---------------------------------------------------------------------------
def check_kernels_config(kc) -> None:
  """One-line HfcErrors for the `kernels.*` fields."""
  if not kc.rhos:
    raise errors.HfcError("kernels.rhos=() must name at least one rho (0 is the model "
                          "as trained).")
  for rho in kc.rhos:
    errors.check_range("kernels.rhos", rho, 0.0, None)
  errors.check_range("kernels.show_rho", kc.show_rho, 0.0, None)
  for cutoff in kc.cutoffs:
    errors.check_range("kernels.cutoffs", cutoff, 1e-9, None)
  robust_table.check_attack_fields(kc, "kernels")
  if not kc.variants:
    raise errors.HfcError(f"kernels.variants=() must name at least one of {VARIANTS}.")
  for name in kc.variants:
    errors.check_choice("kernels.variants", name, VARIANTS)
  errors.check_range("kernels.pgd_steps", kc.pgd_steps, 1, None, integer=True)
  errors.check_range("kernels.num_images", kc.num_images, 0, None, integer=True)
  errors.check_range("kernels.batch_size", kc.batch_size, 1, None, integer=True)


def variants(kc) -> list[Variant]:
  """The variants swept, grouped by method in VARIANTS order: each rho method at every
  rho (rho = 0, the model as trained, once as 'eq3 rho=0'), 'lowpass' at every cut-off."""
  chosen = [m for m in VARIANTS if m in kc.variants]
  rho_methods = [m for m in chosen if m in RHO_VARIANTS]
  out = []
  if rho_methods and any(float(r) == 0.0 for r in kc.rhos):
    out.append(Variant("eq3", 0.0))
  out += [Variant(m, float(r)) for m in rho_methods for r in kc.rhos if float(r) != 0.0]
  if "lowpass" in chosen:
    out += [Variant("lowpass", float(c)) for c in kc.cutoffs]
  return out


# ---------------------------------------------------------------------------
# The study of one model
# ---------------------------------------------------------------------------
def measure(trained: common.Trained, variant_list: list[Variant]) -> dict:
  """{'original': measures, variant name: measures} of the first-conv kernel."""
  model = trained.config.model.name
  kernel = smoothness.first_conv_of(trained.params, model=model)
  out = {"original": smoothness.smoothness_measures(kernel)}
  for v in variant_list:
    smoothed = smoothness.first_conv_of(v.apply(trained.params, model), model=model)
    out[v.name] = smoothness.smoothness_measures(smoothed)
  return out


def sweep(trained: common.Trained, x: np.ndarray, y: np.ndarray,
          settings: robustness.AttackSettings, variant_list: list[Variant], mesh,
          batch_size: int) -> list[dict]:
  """Table 2 for one model: [{variant, method, value, clean, attacks: {name: {eps: acc}},
  intervals, worst_case, masking_checks, ...}] (`robust_table.attack_table`), every
  attack run through the changed model; x (N, H, W, C) float32 in [0, 1]."""
  model = trained.config.model.name
  batch_dependent = layers.depends_on_batch(trained.config.model.norm)
  programs, rows = {}, []   # one compile per attack for all variants
  for v in variant_list:
    params = v.apply(trained.params, model)
    target = robust_table.Target(trained.functional.logits, (params, trained.model_state),
                                 x, y, mesh, batch_size, batch_dependent, programs)
    table, masks, _ = robust_table.attack_table(target, settings)
    checks = masking.masking_checks(target, settings, table, masks)
    del table["batch_dependent"], table["batch_note"]   # per model, not per row
    rows.append({"variant": v.name, "method": v.method, "value": v.value, **table,
                 "masking_checks": checks})
    logging.info("%s: clean %.4f, %s", v.name, table["clean"], table["attacks"])
  return rows


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def run(config, workdir: Workdir) -> dict:
  """Restores `workdir` and `kernels.compare`, studies their first convs, writes
  `<workdir>/kernels/`; returns the results."""
  kc = config.kernels
  check_kernels_config(kc)
  mesh = sharding.make_mesh(config.num_devices)
  models = common.restore_compared(workdir, kc.compare, field="kernels.compare", mesh=mesh)
  for w, trained in models:
    smoothness.first_conv_of(trained.params, model=trained.config.model.name)
  x, y, _ = common.load_test_set(models[0][1], kc.num_images, field="kernels.num_images")
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  settings = robustness.AttackSettings.from_config(kc)
  variant_list = variants(kc)
  results = {"eps": [float(e) for e in kc.eps], "attacks": list(kc.attacks),
             "pgd_steps": kc.pgd_steps, "autoattack_version": kc.autoattack_version,
             "variants": list(kc.variants), "num_images": int(len(x)), "models": []}
  for w, trained in models:
    batch_dependent = layers.depends_on_batch(trained.config.model.norm)
    results["models"].append({
        "workdir": w, "name": trained.name, "model": trained.config.model.name,
        "norm": trained.config.model.norm, "step": trained.step, "epoch": trained.epoch,
        "batch_dependent": batch_dependent,
        "batch_note": (robust_table.BATCH_NOTE.format(batch_size=kc.batch_size)
                       if batch_dependent else None),
        "measures": measure(trained, variant_list),
        "sweep": sweep(trained, x, y.astype(np.int32), settings, variant_list, mesh,
                       int(kc.batch_size))})
  show = Variant("eq3", float(kc.show_rho))
  out = common.output_dir(workdir, MODE)
  common.write_outputs(out, json_files={"measures.json": _measures_json(results),
                                        "sweep.json": results},
                       texts={"kernels.md": to_markdown(results)},
                       figures={"kernels_rgb.png": filter_figure(models, show),
                                "kernels_channels.png": channel_figure(models),
                                "sweep.png": sweep_figure(results)})
  return results


def _measures_json(results: dict) -> dict:
  return {m["name"]: {"workdir": m["workdir"], "measures": m["measures"]}
          for m in results["models"]}


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def to_markdown(results: dict) -> str:
  """The measures table and the table-2 sweep."""
  names = list(next(iter(results["models"]))["measures"]["original"])
  rows = [[m["name"], variant] + [f"{values[k]:.4f}" for k in names]
          for m in results["models"] for variant, values in m["measures"].items()]
  lines = ["# First-layer kernels", "",
           "Smoothness of each model's first conv (lower is smoother; the share of "
           "spectral energy outside each kernel's DC term is 0 for a flat kernel).", "",
           markdown.table(["model", "kernel"] + names, rows)]
  settings = robustness.AttackSettings.from_config(results)
  eps_keys = [robustness.eps_key(e) for e in results["eps"]]
  names = list(results["attacks"]) + (["worst_case"] if len(results["attacks"]) > 1 else [])
  header = ["model", "first conv", "clean"] + [
      f"{robust_table.attack_label(name, settings)} {k}" for name in names
      for k in eps_keys] + ["masking checks"]
  rows = [[m["name"], row["variant"], robust_table.cell(row["intervals"]["clean"])]
          + [robust_table.cell(row["intervals"][name][k]) for name in names
             for k in eps_keys]
          + [", ".join(f"FLAG {c}" for c in row["masking_checks"]["flagged"]) or "pass"]
          for m in results["models"] for row in m["sweep"]]
  check_rows = [[m["name"], row["variant"]] + [
      f"{c['status']}: {masking.check_summary(name, c)}"
      for name, c in row["masking_checks"].items() if name != "flagged"]
      for m in results["models"] for row in m["sweep"]]
  notes = [f"Note ({m['name']}): {m['batch_note']}" for m in results["models"]
           if m.get("batch_note")]
  lines += ["", "## Accuracy after changing the first conv (table 2 as a sweep)", "",
            f"{results['num_images']} test images; attacks run through the changed "
            "model (PGD step eps/4, random start). Each cell: accuracy under attack "
            "[95% Wilson interval]. `eq3 rho=0` is the model as trained; `eq3 renorm` "
            "is eq. 3 / (1 + 8 rho) (smoothing only), `scaled` the kernel x (1 + 8 rho) "
            "(gain only).", ""] + [n + "\n" for n in notes] + [
            markdown.table(header, rows), "### Gradient-masking checks", "",
            markdown.table(["model", "first conv", "monotone", "large_eps",
                            "square_only", "more_iterations"], check_rows)]
  return "\n".join(lines)


def _filter_image(kernel: np.ndarray) -> np.ndarray:
  """(kh, F * (kw + 1), C) image of F filters side by side on one colour scale,
  0 -> mid grey: 0.5 + w / (2 max|w|)."""
  kernel = np.asarray(kernel, np.float32)[..., :MAX_FILTERS]
  kh, kw, c, f = kernel.shape
  scale = 2 * max(float(np.abs(kernel).max()), 1e-12)
  tiles = np.ones((kh, f * (kw + 1), c), np.float32)
  for i in range(f):
    tiles[:, i * (kw + 1):i * (kw + 1) + kw] = 0.5 + kernel[..., i] / scale
  return tiles


def filter_figure(models: list[tuple[str, common.Trained]], show: Variant) -> Figure:
  """Each model's filters, original and smoothed (the paper's figure 7)."""
  rows = []
  for w, trained in models:
    model = trained.config.model.name
    kernel = smoothness.first_conv_of(trained.params, model=model)
    smoothed = smoothness.first_conv_of(show.apply(trained.params, model), model=model)
    rows += [(f"{trained.name}: as trained", kernel),
             (f"{trained.name}: {show.name}", smoothed)]
  fig = Figure(figsize=(12, 0.9 * len(rows) + 0.6))
  for i, (title, kernel) in enumerate(rows):
    ax = fig.add_subplot(len(rows), 1, i + 1)
    image = _filter_image(kernel)
    ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title, fontsize=8, loc="left")
    ax.set_axis_off()
  fig.suptitle("First-layer filters (each row on its own colour scale, 0 = grey)",
               fontsize=9)
  return fig


def channel_figure(models: list[tuple[str, common.Trained]]) -> Figure:
  """Every filter per input channel, one colour scale per model (red +, blue -)."""
  kernels = [(t.name, np.asarray(smoothness.first_conv_of(
      t.params, model=t.config.model.name))[..., :MAX_FILTERS]) for w, t in models]
  rows = sum(k.shape[2] for _, k in kernels)
  filters = max(k.shape[3] for _, k in kernels)
  fig = Figure(figsize=(0.45 * filters + 1.5, 0.5 * rows + 0.8))
  grid = fig.add_gridspec(rows, filters, wspace=0.08, hspace=0.15)
  row = 0
  for name, kernel in kernels:
    limit = max(float(np.abs(kernel).max()), 1e-12)
    for c in range(kernel.shape[2]):
      for f in range(kernel.shape[3]):
        ax = fig.add_subplot(grid[row, f])
        ax.imshow(kernel[:, :, c, f], cmap="RdBu_r", vmin=-limit, vmax=limit,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if f == 0:
          ax.set_ylabel(f"{name}\nin {c}", fontsize=6, rotation=0, ha="right", va="center")
      row += 1
  fig.suptitle("First-layer kernels per input channel (one colour scale per model)",
               fontsize=9)
  return fig


def sweep_figure(results: dict) -> Figure:
  """Accuracy vs eps under PGD (or the last attack), one panel per model, one line per
  rho (solid) and per low-pass cut-off (dashed); eps 0 is clean accuracy."""
  attack = "pgd" if "pgd" in results["attacks"] else results["attacks"][-1]
  eps = [0.0] + sorted(results["eps"])
  models = results["models"]
  fig = Figure(figsize=(4.2 * len(models), 3.4))
  for i, m in enumerate(models):
    ax = fig.add_subplot(1, len(models), i + 1)
    for row in m["sweep"]:
      acc = [row["clean"]] + [row["attacks"][attack][robustness.eps_key(e)] for e in eps[1:]]
      ax.plot(eps, acc, "-" if row["method"] == "eq3" else "--", marker="o", ms=3,
              label=row["variant"])
    ax.set_title(m["name"], fontsize=9)
    ax.set_xlabel("L-inf eps")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.set_ylabel(f"accuracy under {attack.upper()}")
    ax.legend(fontsize="x-small")
  fig.tight_layout()
  return fig

