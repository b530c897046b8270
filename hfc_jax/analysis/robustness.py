r"""Robust evaluation of a trained workdir (`--config.mode=robust_eval`).

  python -m hfc_jax.main --config=configs/embedded_adv.py --workdir=W --config.mode=robust_eval

Wang et al. (CVPR 2020), section 5: adversarial vulnerability and the low-pass defence.
Writes to `<workdir>/robust_eval/`:
  * `robust_eval.json` / `robust_eval.md`: accuracy under each attack of
    `robust_eval.attacks` (FGSM, PGD-k with step eps/4 and random start, APGD-CE,
    APGD-T, FAB-T, Square, AutoAttack; L-inf) at every `robust_eval.eps` and the worst
    case over them, each with its 95% Wilson interval, and the gradient-masking checks
    (`robust_table`); the minimal-eps summary; the input low-pass defence table.
  * `robustness_curve.png`: accuracy vs eps from the per-image minimal L-inf eps at which
    PGD succeeds (batched bisection), i.e. the share of images whose minimal eps is
    larger than eps.
  * `min_eps.npy`: those per-image minimal eps values.

The input low-pass defence (the blog's) puts `frequency.lowpass` at radius r in front of
the *same* trained parameters (the model rebuilt with `input_filter='lowpass'`). It is
scored two ways: (a) transfer, with adversarial images crafted on the undefended model,
as the blog did; (b) adaptive, with PGD run end to end through the filter; and, when the
table runs attacks beyond FGSM and PGD (AutoAttack), (c) adaptive with every one of them
through the filter, worst case. The filter is linear and differentiable, so (b) and (c)
are the honest white-box numbers; a large gap between (a) and (b) means the defence
masks gradients rather than removes vulnerability.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from matplotlib.figure import Figure

from hfc_jax import attacks, errors, evaluate, frequency, sharding
from hfc_jax.analysis import common, masking, robust_table
from hfc_jax.analysis.robust_table import AttackSettings, eps_key  # noqa: F401  (re-exported)
from hfc_jax.models import layers
from hfc_jax.reporting import markdown
from hfc_jax.workdir import records
from hfc_jax.workdir.layout import Workdir

MODE = "robust_eval"
ATTACKS = ("fgsm", "pgd")   # what `attack_table` (the perturbation spectrum's) runs
# The attack whose images the low-pass defence's transfer row reuses: the first listed.
TRANSFER_SOURCES = ("pgd", "apgd_ce", "fgsm", "apgd_t", "fab_t", "square")


def check_robust_config(rc, image_size: int) -> None:
  """One-line HfcErrors for the `robust_eval.*` fields."""
  robust_table.check_attack_fields(rc, "robust_eval")
  errors.check_range("robust_eval.pgd_steps", rc.pgd_steps, 0, None, integer=True)
  errors.check_range("robust_eval.restarts", rc.restarts, 1, None, integer=True)
  errors.check_range("robust_eval.num_images", rc.num_images, 0, None, integer=True)
  errors.check_range("robust_eval.min_eps_max", rc.min_eps_max, 0.0, 1.0)
  errors.check_range("robust_eval.min_eps_search_steps", rc.min_eps_search_steps, 1, None,
                     integer=True)
  for r in rc.defence_radii:
    frequency.check_radius(r, image_size, image_size, field="robust_eval.defence_radii")


# ---------------------------------------------------------------------------
# Jitted pieces: (params, model_state, images, labels, mask, ...) -> arrays. The mask
# (1 real, 0 padding row) is bound into every forward pass, the attacks' included, so
# padding rows never enter a batch statistic.
# ---------------------------------------------------------------------------
def craft(params, model_state, x, labels, mask, key, eps, *, logits_fn, name: str,
          steps: int, restarts: int):
  """Adversarial images for one batch: FGSM, or PGD with `steps` steps of eps/4 from a
  random start; eps is a traced scalar (no recompile per eps)."""
  model = functools.partial(logits_fn, params, model_state, mask=mask)
  return attacks.eval_attack(name, model, x, labels, eps=eps, steps=steps, key=key,
                             restarts=restarts)


def _min_eps(params, model_state, x, labels, mask, key, *, logits_fn, rc):
  model = functools.partial(logits_fn, params, model_state, mask=mask)
  return attacks.minimal_linf_eps(
      model, x, labels, eps_max=rc.min_eps_max, search_steps=rc.min_eps_search_steps,
      pgd_steps=rc.min_eps_pgd_steps, key=key)


def _accuracy(score, variables, placed, make_images) -> float:
  """Share of the real images of `placed` that `score` counts as correct."""
  total = sum(score(*variables, make_images(i, b), b[1], b[2]) for i, b in enumerate(placed))
  count = sum(float(jnp.sum(b[2])) for b in placed)
  return float(total) / max(count, 1.0)


def attack_table(logits_fn, variables, placed: list, settings: AttackSettings, mesh,
                 *, cache: dict | None = None) -> dict:
  """Clean accuracy and accuracy under each attack at each eps of a model given as
  `logits_fn(params, model_state, x, mask=...)` and `variables` (params, model_state),
  over the placed batches (`common.batches`). Batch i's attack key is
  fold_in(key(seed), i). Returns {'clean': acc, 'attacks': {name: {eps_key: acc}}};
  the adversarial batches go into `cache[(name, eps)]` when given."""
  rep = sharding.replicated(mesh)
  score = jax.jit(functools.partial(evaluate.hits, logits_fn=logits_fn), out_shardings=rep)
  key = jax.random.key(settings.seed)
  table = {"clean": _accuracy(score, variables, placed, lambda i, b: b[0]), "attacks": {}}
  for name in settings.attacks:
    fn = jax.jit(functools.partial(craft, logits_fn=logits_fn, name=name,
                                   restarts=settings.restarts,
                                   steps=0 if name == "fgsm" else settings.pgd_steps))
    row = {}
    for eps in settings.eps:
      advs = [fn(*variables, *b, jax.random.fold_in(key, i), eps)
              for i, b in enumerate(placed)]
      if cache is not None:
        cache[(name, eps)] = advs
      row[eps_key(eps)] = _accuracy(score, variables, placed, lambda i, b, a=advs: a[i])
      logging.info("%s eps=%.4f: accuracy %.4f", name, eps, row[eps_key(eps)])
    table["attacks"][name] = row
  return table


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def run(config, workdir: Workdir) -> dict:
  """Evaluates `workdir`'s latest checkpoint; returns (and writes) the results dict."""
  rc = config.robust_eval
  mesh = sharding.make_mesh(config.num_devices)
  trained = common.restore(workdir, mesh=mesh)
  x, y, dataset = common.load_test_set(trained, rc.num_images, field="robust_eval.num_images")
  check_robust_config(rc, dataset.image_size)
  placed = common.batches(x, y, mesh=mesh, batch_size=rc.batch_size,
                          field="robust_eval.batch_size")
  settings = AttackSettings.from_config(rc)
  variables = (trained.params, trained.model_state)
  target = robust_table.Target(trained.functional.logits, variables,
                               x.astype(np.float32) / 255.0, y.astype(np.int32), mesh,
                               int(rc.batch_size),
                               layers.depends_on_batch(trained.config.model.norm))
  source = next((a for a in TRANSFER_SOURCES if a in settings.attacks), None)
  table, masks, advs = robust_table.attack_table(target, settings, keep_adv_for=source)
  results = {"workdir": str(workdir), "epoch": trained.epoch, "step": trained.step,
             "eps": list(settings.eps), "pgd_steps": rc.pgd_steps, "restarts": rc.restarts,
             "autoattack_version": rc.autoattack_version, "model_norm":
             trained.config.model.norm, **table}
  results["masking_checks"] = masking.masking_checks(target, settings, table, masks)
  results["min_eps"], min_eps = _minimal_eps_summary(
      variables, trained.functional.logits, placed, rc)
  results["transfer_attack"] = source
  results["defence"] = _lowpass_defence(trained, variables, placed, rc, settings, advs,
                                        y, mesh, target)
  common.write_outputs(common.output_dir(workdir, MODE),
                       json_files={"robust_eval.json": results},
                       texts={"robust_eval.md": to_markdown(results)},
                       figures={"robustness_curve.png": curve_figure(results["min_eps"])},
                       arrays={"min_eps.npy": min_eps}, dpi=120)
  return results


def _minimal_eps_summary(variables, logits_fn, placed, rc):
  """Per-image minimal PGD eps and the accuracy-vs-eps curve it implies."""
  key = jax.random.key(rc.seed)
  fn = jax.jit(functools.partial(_min_eps, logits_fn=logits_fn, rc=rc))
  min_eps = common.per_image(
      lambda p, s, x, y, m, i: fn(p, s, x, y, m, jax.random.fold_in(key, i)),
      placed, *variables)
  grid = np.linspace(0.0, rc.min_eps_max, 21)
  curve = [float(np.mean(min_eps > e)) for e in grid]
  finite = min_eps[np.isfinite(min_eps)]
  median = float(np.median(min_eps)) if min_eps.size else float("nan")
  summary = {"eps_max": rc.min_eps_max, "median": records.json_scalar(median),
             "mean_finite": float(finite.mean()) if finite.size else None,
             "unbroken_share": float(np.mean(~np.isfinite(min_eps))),
             "curve_eps": [float(e) for e in grid], "curve_accuracy": curve}
  return summary, min_eps


def _lowpass_defence(trained, variables, placed, rc, settings: AttackSettings, advs: dict,
                     y: np.ndarray, mesh, target: robust_table.Target) -> list[dict]:
  """Rows {radius, clean, transfer: {eps: acc}, adaptive: {eps: acc}, and with attacks
  beyond FGSM/PGD 'adaptive_table'} for each radius. transfer scores `advs` ({eps:
  (N, H, W, C) images crafted on the undefended model}, clean where the model was wrong
  already; {}: no transfer row); adaptive is PGD through the filter; adaptive_table
  runs every attack of the table (AutoAttack included) through the filter, the same
  images and keys as the undefended `target`, with its worst case."""
  placed_advs = {eps: common.batches(adv, y, mesh=mesh, batch_size=rc.batch_size,
                                     field="robust_eval.batch_size")
                 for eps, adv in advs.items()}
  rep = sharding.replicated(mesh)
  key = jax.random.key(rc.seed)
  rows = []
  for radius in rc.defence_radii:
    cfg = trained.config.copy_and_resolve_references()
    cfg.model.input_filter, cfg.model.filter_radius = "lowpass", float(radius)
    # The filter has no variables: the trained ones fit the defended model as they are.
    defended, _, _ = common.abstract_model(cfg, trained.num_classes, trained.channels,
                                           trained.image_size)
    score = jax.jit(functools.partial(evaluate.hits, logits_fn=defended.logits), out_shardings=rep)
    fn = jax.jit(functools.partial(craft, logits_fn=defended.logits, name="pgd",
                                   steps=rc.pgd_steps, restarts=rc.restarts))
    row = {"radius": float(radius),
           "clean": _accuracy(score, variables, placed, lambda i, b: b[0]),
           "transfer": {}, "adaptive": {}}
    for eps in settings.eps:
      if eps in placed_advs:
        row["transfer"][eps_key(eps)] = _accuracy(
            score, variables, placed, lambda i, b, a=placed_advs[eps]: a[i][0])
      row["adaptive"][eps_key(eps)] = _accuracy(
          score, variables, placed,
          lambda i, b, e=eps: fn(*variables, *b, jax.random.fold_in(key, 1000 + i), e))
    if set(settings.attacks) - set(ATTACKS):
      row["adaptive_table"] = _defended_table(target, defended.logits, settings)
    logging.info("low-pass r=%s: %s", radius, row)
    rows.append(row)
  return rows


def _defended_table(target: robust_table.Target, logits_fn, settings: AttackSettings
                    ) -> dict:
  """{attack | 'worst_case': {eps: acc}}: `settings`' attacks through the defended
  model `logits_fn` (the low-pass filter in front of the trained one)."""
  defended = dataclasses.replace(target, logits_fn=logits_fn, programs={})
  table, _, _ = robust_table.attack_table(defended, settings)
  return {**table["attacks"], **({"worst_case": table["worst_case"]}
                                 if "worst_case" in table else {})}


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def to_markdown(results: dict) -> str:
  """The results as Markdown tables: accuracy under each attack and the worst case with
  95% Wilson intervals, the masking checks, the minimal-eps summary and the defence."""
  settings = AttackSettings.from_config(results)
  eps_keys = [eps_key(e) for e in results["eps"]]
  m = results["min_eps"]
  median = "above eps_max" if m["median"] is None else f"{m['median']:.4f}"
  dash = lambda d, k: f"{d[k]:.4f}" if k in d else "-"
  strongest = "worst_case" if len(results["attacks"]) > 1 else next(iter(results["attacks"]))
  tables = [row for row in results["defence"] if "adaptive_table" in row]
  defence_rows = [[f"{row['radius']:g}", f"{row['clean']:.4f}"]
                  + [dash(row["transfer"], k) for k in eps_keys]
                  + [dash(row["adaptive"], k) for k in eps_keys]
                  + ([dash(row["adaptive_table"][strongest], k) for k in eps_keys]
                     if tables else [])
                  for row in results["defence"]]
  flagged = results["masking_checks"]["flagged"]
  lines = [f"# Robust evaluation of {results['workdir']} (epoch {results['epoch']})", "",
           f"{results['num_images']} test images; clean accuracy "
           f"{robust_table.cell(results['intervals']['clean'])}. Each cell: accuracy under "
           "attack (L-inf; an image counts if classified correctly and the attack fails) "
           "[95% Wilson interval]. PGD: "
           f"{results['pgd_steps']} steps of eps/4, random start, {results['restarts']} "
           "restart(s).", ""]
  if results["batch_note"]:
    lines += [f"Note: {results['batch_note']}", ""]
  lines += [markdown.table([""] + [f"eps={k}" for k in eps_keys],
                           robust_table.table_rows(results, settings))]
  if "autoattack" in results:
    aa = results["autoattack"]
    lines += [f"AutoAttack ({aa['version']}), accuracy after each attack: " + "; ".join(
        f"eps={k}: " + ", ".join(f"{a} {v:.4f}" for a, v in aa["after"][k].items())
        for k in eps_keys), ""]
  lines += ["## Gradient-masking checks", "",
            ("FLAGGED: " + ", ".join(flagged) + ". " if flagged else "No check flagged. ")
            + "Carlini et al. 2019; Athalye et al. 2018 (hfc_jax/analysis/masking.py).",
            "", masking.checks_markdown(results["masking_checks"]),
           f"Minimal L-inf eps at which PGD succeeds: median {median}; "
           f"{m['unbroken_share']:.1%} of images unbroken at eps <= {m['eps_max']}.", "",
           "## Input low-pass defence", "",
           f"(a) transfer: {results['transfer_attack'] or 'no single'} attack's images "
           "crafted on the undefended model; (b) adaptive: PGD through the filter"
           + ("; (c) adaptive: every attack of the table through the filter, worst case "
              "(AutoAttack's components each run on the defended model)." if tables
              else "."), "",
           markdown.table(["r", "clean"] + [f"(a) {k}" for k in eps_keys]
                          + [f"(b) {k}" for k in eps_keys]
                          + ([f"(c) {k}" for k in eps_keys] if tables else []),
                          defence_rows)]
  return "\n".join(lines)


def curve_figure(summary: dict) -> Figure:
  """The accuracy-vs-eps robustness curve (drawn without pyplot's global state)."""
  fig = Figure(figsize=(5, 3.5))
  ax = fig.add_subplot()
  ax.plot(summary["curve_eps"], summary["curve_accuracy"], marker="o", ms=3)
  ax.set_xlabel("L-inf eps")
  ax.set_ylabel("accuracy under PGD")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig
