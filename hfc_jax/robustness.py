r"""Robust evaluation of a trained workdir (`--config.mode=robust_eval`).

  python -m hfc_jax.main --config=configs/embedded_adv.py --workdir=W --config.mode=robust_eval

Writes to `<workdir>/robust_eval/`:
  * `robust_eval.json` / `robust_eval.md`: accuracy under FGSM and PGD-k (L-inf, step
    eps/4, random start) at every `robust.eps`; the minimal-eps summary; the input
    low-pass defence table.
  * `robustness_curve.png`: accuracy vs eps from the per-image minimal L-inf eps at which
    PGD succeeds (batched bisection), i.e. the share of images whose minimal eps is
    larger than eps.
  * `min_eps.npy`: those per-image minimal eps values.

The input low-pass defence (the blog's) puts `frequency.lowpass` at radius r in front of
the *same* trained parameters (the model rebuilt with `input_filter='lowpass'`). It is
scored two ways: (a) transfer, with adversarial images crafted on the undefended model,
as the blog did; (b) adaptive, with PGD run end to end through the filter. The filter is
linear and differentiable, so (b) is the honest white-box number; a large gap between
(a) and (b) means the defence masks gradients rather than removes vulnerability.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hfc_jax import attacks, errors, fileio, frequency, records, sharding, train
from hfc_jax import data as data_lib
from hfc_jax.data import pipeline
from hfc_jax.models.functional import Functional

OUT_DIR = "robust_eval"


def check_robust_config(rc, image_size: int) -> None:
  """One-line HfcErrors for the `robust.*` fields."""
  for name in rc.attacks:
    errors.check_choice("robust.attacks", name, ("fgsm", "pgd"))
  for eps in rc.eps:
    errors.check_range("robust.eps", eps, 0.0, 1.0)
  errors.check_range("robust.pgd_steps", rc.pgd_steps, 0, None, integer=True)
  errors.check_range("robust.restarts", rc.restarts, 1, None, integer=True)
  errors.check_range("robust.min_eps_max", rc.min_eps_max, 0.0, 1.0)
  errors.check_range("robust.min_eps_search_steps", rc.min_eps_search_steps, 1, None,
                     integer=True)
  for r in rc.defence_radii:
    frequency.check_radius(r, image_size, image_size, field="robust.defence_radii")


# ---------------------------------------------------------------------------
# Jitted pieces: (params, model_state, images, labels, mask, key, eps) -> arrays. The
# mask (1 real, 0 padding row) is bound into every forward pass, the attacks' included,
# so padding rows never enter a batch statistic.
# ---------------------------------------------------------------------------
def _craft(params, model_state, x, labels, mask, key, eps, *, logits_fn, name: str,
           steps: int, restarts: int):
  """Adversarial images for one batch; eps is a traced scalar (no recompile per eps)."""
  model = functools.partial(logits_fn, params, model_state, mask=mask)
  return attacks.attack(name, model, x, labels, eps=eps, step_size=eps / 4, steps=steps,
                        key=key, random_start=name != "fgsm" and steps > 0,
                        restarts=restarts)


def _hits(params, model_state, x, labels, mask, *, logits_fn):
  """Correctly classified images of a batch, masked: float32 scalar."""
  pred = jnp.argmax(logits_fn(params, model_state, x, mask=mask), axis=-1)
  return jnp.sum((pred == labels).astype(jnp.float32) * mask)


def _min_eps(params, model_state, x, labels, mask, key, *, logits_fn, rc):
  model = functools.partial(logits_fn, params, model_state, mask=mask)
  return attacks.minimal_linf_eps(
      model, x, labels, eps_max=rc.min_eps_max, search_steps=rc.min_eps_search_steps,
      pgd_steps=rc.min_eps_pgd_steps, key=key)


class _Batches:
  """The evaluated test images, placed on the mesh once, batch by batch: `batch_size`
  real images each, in the padded layout of `sharding.padded_batch_size` (any mesh)."""

  def __init__(self, x: np.ndarray, y: np.ndarray, mesh, batch_size: int):
    self.items = []
    padded = sharding.padded_batch_size("robust.batch_size", batch_size, mesh)
    for images, labels, mask in pipeline.eval_batches(
        x, y, batch_size=batch_size, padded_size=padded, process_index=jax.process_index(),
        process_count=jax.process_count()):
      images = images.astype(np.float32) / 255.0
      self.items.append(sharding.put_batch(mesh, images, labels.astype(np.int32), mask))
    self.count = float(len(x))


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """Evaluates `workdir`'s latest checkpoint; returns (and writes) the results dict."""
  mesh = sharding.make_mesh(config.get("num_devices"))
  trained = train.restore_trained(workdir, mesh=mesh)
  rc = config.robust
  dataset = data_lib.load(trained.config.data)
  check_robust_config(rc, dataset.image_size)
  x, y = dataset.x_test, dataset.y_test
  if rc.num_images:
    x, y = x[:rc.num_images], y[:rc.num_images]
  batches = _Batches(x, y, mesh, rc.batch_size)
  key = jax.random.key(rc.seed)
  eps_list = [float(e) for e in rc.eps]
  rep = sharding.replicated(mesh)

  logits_fn = trained.functional.logits
  hits = jax.jit(functools.partial(_hits, logits_fn=logits_fn), out_shardings=rep)
  variables = (trained.params, trained.model_state)
  craft = {name: jax.jit(functools.partial(
      _craft, logits_fn=logits_fn, name=name, restarts=rc.restarts,
      steps=0 if name == "fgsm" else rc.pgd_steps)) for name in rc.attacks}

  def accuracy(score, make_images):
    total = sum(score(*variables, make_images(i, b), b[1], b[2])
                for i, b in enumerate(batches.items))
    return float(total) / batches.count

  results = {"workdir": fileio.check("workdir", workdir), "epoch": trained.epoch,
             "num_images": int(batches.count), "eps": eps_list,
             "pgd_steps": rc.pgd_steps, "restarts": rc.restarts}
  results["clean"] = accuracy(hits, lambda i, b: b[0])
  results["attacks"] = {}
  adv_cache = {}
  for name in rc.attacks:
    row = {}
    for eps in eps_list:
      advs = [craft[name](*variables, *b, jax.random.fold_in(key, i), eps)
              for i, b in enumerate(batches.items)]
      adv_cache[(name, eps)] = advs
      row[f"{eps:.4f}"] = accuracy(hits, lambda i, b, a=advs: a[i])
      logging.info("%s eps=%.4f: accuracy %.4f", name, eps, row[f"{eps:.4f}"])
    results["attacks"][name] = row

  results["min_eps"], min_eps = _minimal_eps_summary(
      variables, logits_fn, batches, key, rc, int(batches.count))
  results["defence"] = _lowpass_defence(trained, variables, batches, key, rc, eps_list,
                                        adv_cache, accuracy, mesh)
  _write(workdir, results, min_eps)
  return results


def _minimal_eps_summary(variables, logits_fn, batches, key, rc, count: int):
  """Per-image minimal PGD eps and the accuracy-vs-eps curve it implies."""
  fn = jax.jit(functools.partial(_min_eps, logits_fn=logits_fn, rc=rc))
  parts = [np.asarray(jax.device_get(fn(*variables, *b, jax.random.fold_in(key, i))))
           for i, b in enumerate(batches.items)]
  masks = [np.asarray(jax.device_get(b[2])) > 0 for b in batches.items]
  min_eps = np.concatenate([p[m] for p, m in zip(parts, masks)])[:count]
  grid = np.linspace(0.0, rc.min_eps_max, 21)
  curve = [float(np.mean(min_eps > e)) for e in grid]
  finite = min_eps[np.isfinite(min_eps)]
  median = float(np.median(min_eps)) if min_eps.size else float("nan")
  summary = {"eps_max": rc.min_eps_max, "median": records.json_scalar(median),
             "mean_finite": float(finite.mean()) if finite.size else None,
             "unbroken_share": float(np.mean(~np.isfinite(min_eps))),
             "curve_eps": [float(e) for e in grid], "curve_accuracy": curve}
  return summary, min_eps


def _lowpass_defence(trained, variables, batches, key, rc, eps_list, adv_cache, accuracy,
                     mesh) -> list[dict]:
  """Rows {radius, clean, transfer: {eps: acc}, adaptive: {eps: acc}} for each radius."""
  rows = []
  for radius in rc.defence_radii:
    cfg = trained.config.copy_and_resolve_references()
    cfg.model.input_filter, cfg.model.filter_radius = "lowpass", float(radius)
    defended, params, model_state = Functional.split(
        train.create_model(cfg, trained.num_classes, trained.channels))
    del params, model_state   # the filter has no variables: the trained ones fit as they are
    hits = jax.jit(functools.partial(_hits, logits_fn=defended.logits),
                   out_shardings=sharding.replicated(mesh))
    craft = jax.jit(functools.partial(_craft, logits_fn=defended.logits, name="pgd",
                                      steps=rc.pgd_steps, restarts=rc.restarts))
    row = {"radius": float(radius), "clean": accuracy(hits, lambda i, b: b[0]),
           "transfer": {}, "adaptive": {}}
    for eps in eps_list:
      source = adv_cache.get(("pgd", eps)) or adv_cache.get(("fgsm", eps))
      row["transfer"][f"{eps:.4f}"] = accuracy(hits, lambda i, b, a=source: a[i])
      row["adaptive"][f"{eps:.4f}"] = accuracy(
          hits, lambda i, b, r=radius, e=eps: craft(*variables, *b,
                                                   jax.random.fold_in(key, 1000 + i), e))
    logging.info("low-pass r=%s: %s", radius, row)
    rows.append(row)
  return rows


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def markdown(results: dict) -> str:
  """The results as Markdown tables."""
  eps_keys = [f"{e:.4f}" for e in results["eps"]]
  head = "| | " + " | ".join(f"eps={k}" for k in eps_keys) + " |"
  rule = "|---" * (len(eps_keys) + 1) + "|"
  lines = [f"# Robust evaluation of {results['workdir']} (epoch {results['epoch']})", "",
           f"{results['num_images']} test images; clean accuracy "
           f"{results['clean']:.4f}. PGD: {results['pgd_steps']} steps of eps/4, random "
           f"start, {results['restarts']} restart(s).", "", head, rule]
  for name, row in results["attacks"].items():
    label = "FGSM" if name == "fgsm" else f"PGD-{results['pgd_steps']}"
    lines.append(f"| {label} | " + " | ".join(f"{row[k]:.4f}" for k in eps_keys) + " |")
  m = results["min_eps"]
  median = "above eps_max" if m["median"] is None else f"{m['median']:.4f}"
  lines += ["", f"Minimal L-inf eps at which PGD succeeds: median {median}; "
            f"{m['unbroken_share']:.1%} of images unbroken at eps <= {m['eps_max']}.", "",
            "## Input low-pass defence", "",
            "(a) transfer: PGD images crafted on the undefended model; (b) adaptive: PGD "
            "through the filter.", "",
            "| r | clean | " + " | ".join(f"(a) {k}" for k in eps_keys) + " | "
            + " | ".join(f"(b) {k}" for k in eps_keys) + " |",
            "|---" * (2 + 2 * len(eps_keys)) + "|"]
  for row in results["defence"]:
    cells = ([f"{row['transfer'][k]:.4f}" for k in eps_keys]
             + [f"{row['adaptive'][k]:.4f}" for k in eps_keys])
    lines.append(f"| {row['radius']:g} | {row['clean']:.4f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_curve(summary: dict, path: str) -> None:
  """Writes the accuracy-vs-eps robustness curve as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(summary["curve_eps"], summary["curve_accuracy"], marker="o", ms=3)
  ax.set_xlabel("L-inf eps")
  ax.set_ylabel("accuracy under PGD")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fileio.save_figure(fig, path, dpi=120)
  plt.close(fig)


def _write(workdir: str, results: dict, min_eps: np.ndarray) -> None:
  if jax.process_index() != 0:
    return
  out = fileio.join(workdir, OUT_DIR)
  fileio.makedirs(out)
  records.write_json(fileio.join(out, "robust_eval.json"), results)
  fileio.write_text(fileio.join(out, "robust_eval.md"), markdown(results))
  fileio.save_npy(fileio.join(out, "min_eps.npy"), min_eps)
  plot_curve(results["min_eps"], fileio.join(out, "robustness_curve.png"))
