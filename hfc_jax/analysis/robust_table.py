"""Robust accuracy tables a reviewer can check: per-attack and worst-case accuracy with
95% Wilson intervals, and AutoAttack run attack by attack on the images still robust.
Shared by `robust_eval` (robustness.py) and `kernels`.

Accuracy under attack counts an image as robust when it is classified correctly clean
and the attack fails on it (Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020, section 4); the worst
case over the attacks run counts an image as robust only if every attack failed. All
accuracies are over the same n test images, each with its Wilson interval
(`hfc_jax.intervals`).

AutoAttack ('standard': APGD-CE, APGD-T, FAB-T, Square; 'fast': APGD-CE, APGD-T,
Square; `attacks.AutoAttackSettings`) runs here attack by attack with host-side
compaction: after each attack the images it broke are dropped, and the next attack runs
only on the still-robust ones, gathered into new batches of at most `batch_size` images
(padded to one of 4 sizes that divide the mesh, so a handful of compiles). Running FAB
or Square on images APGD already broke would cost most of the time on a CPU. Attack
number a of the ensemble gets key fold_in(key, a), as `attacks.auto_attack` does.

Models with `model.norm='paper_bn'` (the paper's BN, normalised with the statistics
of the evaluated batch) predict an image differently in another batch: they are never
compacted. Every attack runs on the fixed batches of `batch_size` consecutive test images
(padding rows masked out of the statistics, so the batches are the same on any device
count), skipping only batches with no image left to attack; the tables say so.

Batch b of an attack gets key fold_in(attack key, b), and row i of a batch
fold_in(batch key, i) (`attacks.keys`): results do not depend on the device count.

The gradient-masking checks on a table's outcomes (`Masks`) are in `masking.py`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hfc_jax import attacks, defaults, errors, intervals, sharding
from hfc_jax.attacks.autoattack import VERSIONS, AutoAttackSettings

TABLE_ATTACKS = ("fgsm", "pgd", "apgd_ce", "apgd_t", "fab_t", "square", "autoattack")
TARGETED = ("apgd_t", "fab_t")            # take `first_target` (one target per call)
UNROLLED = ("apgd_ce", "apgd_t", "fab_t")   # take `unroll` (written out on the CPU)
WHITE_BOX = ("fgsm", "pgd", "apgd_ce", "apgd_t", "fab_t")
BATCH_NOTE = (
    "model.norm='paper_bn' normalises with the statistics of the evaluated batch, so "
    "an image's prediction and robust accuracy depend on the other images of its batch: "
    "attacked in fixed batches of {batch_size} consecutive test images (the same on any "
    "device count), without compaction between attacks.")


def eps_key(eps: float) -> str:
  """The JSON key of an eps: '0.0314'."""
  return f"{eps:.4f}"


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """The attacks of a table, their eps and budgets, and the masking checks' size (the
  fields of `robust_eval` in hfc_jax/defaults.py, which say what each means)."""
  attacks: tuple[str, ...]
  eps: tuple[float, ...]
  pgd_steps: int
  restarts: int
  seed: int
  autoattack_version: str
  apgd_iters: int
  square_queries: int
  masking_eps: float
  masking_images: int

  @classmethod
  def from_config(cls, section, **overrides) -> "AttackSettings":
    """From a config section (`robust_eval`, `kernels`, `perturbation_spectrum`) or a
    results dict holding its fields; `overrides` win, and a field neither has comes
    from the `robust_eval` defaults (the one place they are written)."""
    base = defaults.get_config().robust_eval
    get = lambda name: overrides.get(name, section.get(name, base[name]))
    return cls(tuple(get("attacks")), tuple(float(e) for e in get("eps")),
               int(get("pgd_steps")), int(get("restarts")), int(get("seed")),
               str(get("autoattack_version")), int(get("apgd_iters")),
               int(get("square_queries")), float(get("masking_eps")),
               int(get("masking_images")))

  @property
  def ensemble(self) -> AutoAttackSettings:
    """The AutoAttack version with the apgd_iters / square_queries overrides."""
    s = AutoAttackSettings.preset(self.autoattack_version)
    changes = {}
    if self.apgd_iters:
      changes.update(apgd_iters=self.apgd_iters, apgd_t_iters=self.apgd_iters)
    if self.square_queries:
      changes.update(square_queries=self.square_queries)
    return dataclasses.replace(s, **changes)


def check_attack_fields(section, field: str) -> None:
  """One-line HfcErrors for the attack fields shared by `robust_eval` and `kernels`
  (`field` is the section's name)."""
  if not section.attacks:
    raise errors.HfcError(f"{field}.attacks=() must name at least one of {TABLE_ATTACKS}.")
  for name in section.attacks:
    errors.check_choice(f"{field}.attacks", name, TABLE_ATTACKS)
  for eps in section.eps:
    errors.check_range(f"{field}.eps", eps, 0.0, 1.0)
  errors.check_choice(f"{field}.autoattack_version", section.autoattack_version, VERSIONS)
  errors.check_range(f"{field}.apgd_iters", section.apgd_iters, 0, None, integer=True)
  errors.check_range(f"{field}.square_queries", section.square_queries, 0, None,
                     integer=True)
  errors.check_range(f"{field}.masking_eps", section.masking_eps, 0.0, 1.0)
  errors.check_range(f"{field}.masking_images", section.masking_images, 0, None,
                     integer=True)


def attack_label(name: str, settings: AttackSettings) -> str:
  """What a table calls an attack: 'FGSM', 'PGD-20', 'APGD-CE', 'AutoAttack (fast)'."""
  return {"fgsm": "FGSM", "pgd": f"PGD-{settings.pgd_steps}", "apgd_ce": "APGD-CE",
          "apgd_t": "APGD-T", "fab_t": "FAB-T", "square": "Square",
          "autoattack": f"AutoAttack ({settings.autoattack_version})",
          "worst_case": "worst case"}[name]


def attack_options(name: str, settings: AttackSettings, num_classes: int, *,
                   iters_factor: int = 1, extra_restarts: int = 0) -> tuple:
  """The keyword options of `attacks.run_eval_attack` for one attack of the table, as a
  sorted tuple (hashable): PGD from `pgd_steps` / `restarts`, the AutoAttack family
  from the version's budgets (targets capped at K - 1)."""
  s = settings.ensemble
  f, r = iters_factor, extra_restarts
  options = {
      "fgsm": lambda: {"steps": 0},
      "pgd": lambda: {"steps": settings.pgd_steps * f, "restarts": settings.restarts + r},
      "apgd_ce": lambda: {"n_iter": s.apgd_iters * f, "n_restarts": s.apgd_restarts + r},
      "apgd_t": lambda: {"n_iter": s.apgd_t_iters * f, "n_restarts": s.apgd_t_restarts + r,
                         "n_targets": min(s.apgd_t_targets, num_classes - 1)},
      "fab_t": lambda: {"n_iter": s.fab_iters * f, "n_restarts": s.fab_restarts + r,
                        "n_targets": min(s.fab_targets, num_classes - 1)},
      "square": lambda: {"n_queries": s.square_queries * f, "p_init": s.square_p_init},
  }[name]()
  return tuple(sorted(options.items()))


# ---------------------------------------------------------------------------
# A model under attack: batches, jitted programs, per-image masks
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Target:
  """A model and its test images, attacked in batches over a mesh.

  logits_fn(params, model_state, x, mask=...) -> (B, K) logits; x (N, H, W, C) float32
  in [0, 1]; y (N,) int32. `programs` caches the jitted attacks (share it between
  variants of one model, e.g. the kernel sweep, to compile once)."""
  logits_fn: object
  variables: tuple
  x: np.ndarray
  y: np.ndarray
  mesh: jax.sharding.Mesh
  batch_size: int
  batch_dependent: bool    # the model normalises with batch statistics ('paper_bn')
  programs: dict = dataclasses.field(default_factory=dict)

  @property
  def n(self) -> int:
    return len(self.y)


def _bucket_rows(n_real: int, padded: int, multiple: int) -> int:
  """Rows of a compacted batch of n_real images: the smallest of padded / 2^k (k < 4,
  rounded up to a multiple of the mesh) that holds them."""
  sizes = sorted({math.ceil(padded / 2 ** k / multiple) * multiple for k in range(4)})
  return next(s for s in sizes if s >= n_real)


def _plan(target: Target, active: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
  """(batch index, image indices, rows) of the batches an attack on `active` runs:
  compacted, the active images batch_size at a time; batch_dependent, the fixed batches of
  consecutive images that hold an active image."""
  padded = sharding.padded_batch_size("batch_size", target.batch_size, target.mesh)
  bs = target.batch_size
  if target.batch_dependent:
    starts = range(0, target.n, bs)
    return [(b, np.arange(s, min(s + bs, target.n)), padded)
            for b, s in enumerate(starts) if active[s:s + bs].any()]
  idx = np.flatnonzero(active)
  multiple = math.lcm(target.mesh.devices.size, jax.process_count())
  return [(b, idx[s:s + bs], _bucket_rows(len(idx[s:s + bs]), padded, multiple))
          for b, s in enumerate(range(0, len(idx), bs))]


def _place(target: Target, idx: np.ndarray, rows: int):
  """(images, labels, mask) global arrays of `rows` rows: images idx, then masked
  zero padding; each process passes its own slice."""
  n = len(idx)
  images = np.zeros((rows,) + target.x.shape[1:], np.float32)
  labels, mask = np.zeros(rows, np.int32), np.zeros(rows, np.float32)
  images[:n], labels[:n], mask[:n] = target.x[idx], target.y[idx], 1.0
  per = rows // jax.process_count()
  local = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
  return sharding.put_batch(target.mesh, images[local], labels[local], mask[local])


def _attack_step(params, model_state, x, labels, mask, key, eps, rank, *, logits_fn, name,
                 options, keep_adv):
  """One batch: the attack's images and which rows they misclassify (on the
  adversarial batch itself, the mask bound into every forward pass). `rank` (traced):
  the first target class rank of a targeted attack (`TARGETED`), unused otherwise."""
  model = functools.partial(logits_fn, params, model_state, mask=mask)
  extra = {"first_target": rank} if name in TARGETED else {}
  adv = attacks.run_eval_attack(name, model, x, labels, eps=eps, key=key,
                                **dict(options), **extra)
  wrong = jnp.argmax(model(adv), axis=-1) != labels
  return (adv, wrong) if keep_adv else wrong


def _clean_step(params, model_state, x, labels, mask, *, logits_fn):
  logits = logits_fn(params, model_state, x, mask=mask)
  return jnp.argmax(logits, axis=-1) == labels, jnp.int32(logits.shape[-1])


def _program(target: Target, *key):
  """The jitted program `key` = ('clean',) or (name, options, keep_adv), cached."""
  if key not in target.programs:
    if key[0] == "clean":
      fn = functools.partial(_clean_step, logits_fn=target.logits_fn)
      target.programs[key] = jax.jit(fn, out_shardings=sharding.replicated(target.mesh))
    else:
      name, options, keep_adv = key
      fn = functools.partial(_attack_step, logits_fn=target.logits_fn, name=name,
                             options=options, keep_adv=keep_adv)
      target.programs[key] = jax.jit(fn, out_shardings=sharding.replicated(target.mesh))
  return target.programs[key]


def clean_correct(target: Target) -> tuple[np.ndarray, int]:
  """((N,) bool, K): which images the model classifies correctly unattacked (in the
  fixed batches), and its number of classes."""
  plan = _plan(dataclasses.replace(target, batch_dependent=True), np.ones(target.n, bool))
  fn = _program(target, "clean")
  outs = [(idx, fn(*target.variables, *_place(target, idx, rows))) for _, idx, rows in plan]
  correct = np.zeros(target.n, bool)
  k = 0
  for idx, (hit, classes) in jax.device_get(outs):
    correct[idx], k = np.asarray(hit)[:len(idx)], int(classes)
  return correct, k


def fooled(target: Target, name: str, options: tuple, active: np.ndarray, eps: float,
           key: jax.Array, *, keep_adv: bool = False):
  """Runs attack `name` (one of WHITE_BOX or 'square') at L-inf eps on the `active`
  images: ((N,) bool, the active images it misclassifies; adv (N, H, W, C) float32, the
  attacked images where it ran and the clean ones elsewhere, or None).

  On the CPU the APGD and FAB iterations are written out (`attacks.choose_unroll`;
  XLA:CPU ran them about 4x slower as a rolled loop), and a targeted attack runs one
  target class per call (`per_target`), the images each target broke dropped before
  the next, as in the reference implementation."""
  options = dict(options)
  if name in UNROLLED and "unroll" not in options:
    options["unroll"] = attacks.choose_unroll(None)
  if name in TARGETED and options["unroll"] and options.get("n_targets", 1) > 1:
    return per_target(target, name, options, active, eps, key, keep_adv=keep_adv)
  return _fooled_once(target, name, tuple(sorted(options.items())), active, eps, key,
                      keep_adv=keep_adv)


def per_target(target: Target, name: str, options: dict, active: np.ndarray, eps: float,
               key: jax.Array, *, keep_adv: bool = False):
  """`fooled` of a targeted attack, one target rank j < n_targets per call (rank j on
  the images no earlier rank broke, key fold_in(key, j)): one compiled program serves
  every rank."""
  one = tuple(sorted({**options, "n_targets": 1}.items()))
  remaining, wrong = active.copy(), np.zeros(target.n, bool)
  adv = target.x.copy() if keep_adv else None
  for j in range(options["n_targets"]):
    if not remaining.any():
      break
    hit, adv_j = _fooled_once(target, name, one, remaining, eps, jax.random.fold_in(key, j),
                              keep_adv=keep_adv, rank=j)
    if keep_adv:
      ran = remaining if j == 0 else hit    # keep a broken image's adversarial example
      adv[ran] = adv_j[ran]
    wrong |= hit
    remaining &= ~hit
  return wrong, adv


def _fooled_once(target: Target, name: str, options: tuple, active: np.ndarray,
                 eps: float, key: jax.Array, *, keep_adv: bool = False, rank: int = 0):
  """`fooled` as one program per batch (all of a targeted attack's targets in it)."""
  fn = _program(target, name, options, keep_adv)
  eps, rank = np.float32(eps), np.int32(rank)
  outs = [(idx, fn(*target.variables, *_place(target, idx, rows),
                   jax.random.fold_in(key, b), eps, rank))
          for b, idx, rows in _plan(target, active)]
  wrong = np.zeros(target.n, bool)
  adv = target.x.copy() if keep_adv else None
  for idx, out in outs:
    out = jax.device_get(out)
    if keep_adv:
      adv[idx] = np.asarray(out[0])[:len(idx)]
      out = out[1]
    wrong[idx] = np.asarray(out)[:len(idx)]
  return wrong & active, adv


def autoattack_fooled(target: Target, settings: AttackSettings, active: np.ndarray,
                      eps: float, key: jax.Array, num_classes: int) -> dict[str, np.ndarray]:
  """The ensemble with compaction (module docstring): attack name -> (N,) bool of the
  images it broke among those no earlier attack had broken."""
  remaining, out = active.copy(), {}
  for a, name in enumerate(settings.ensemble.attacks):
    out[name], _ = fooled(target, name, attack_options(name, settings, num_classes),
                          remaining, eps, jax.random.fold_in(key, a))
    remaining &= ~out[name]
    logging.info("autoattack eps=%.4f after %s: %d robust", eps, name, remaining.sum())
  return out


def attack_key(seed: int, name: str, eps: float) -> jax.Array:
  """The key of one (attack, eps) cell: independent of the other attacks and eps."""
  key = jax.random.fold_in(jax.random.key(seed), TABLE_ATTACKS.index(name))
  return jax.random.fold_in(key, int(round(eps * 1e6)))


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Masks:
  """Per-image outcomes of a table, for the checks: correct (N,) bool; fooled[(name,
  eps)] (N,) bool per table attack; parts[eps][component] (N,) bool of the ensemble."""
  correct: np.ndarray
  num_classes: int
  fooled: dict
  parts: dict


def attack_table(target: Target, settings: AttackSettings, *,
                 keep_adv_for: str | None = None) -> tuple[dict, Masks, dict]:
  """Clean accuracy and accuracy under every attack at every eps, with intervals.

  Returns (table, masks, advs): table = {'clean', 'num_images', 'attacks': {name:
  {eps_key: acc}}, 'intervals': {name | 'clean' | 'worst_case': {eps_key: intervals.describe}},
  'worst_case': {eps_key: acc} (with more than one attack), 'autoattack': {'version',
  'attacks', 'after': {eps_key: {component: acc after it}}} (when run), 'batch_dependent',
  'batch_note'}; advs = {eps: (N, H, W, C)} adversarial images of `keep_adv_for`.
  """
  correct, k = clean_correct(target)
  n = target.n
  masks = Masks(correct, k, {}, {})
  advs = {}
  table = {"num_images": n, "clean": float(correct.mean()) if n else 0.0,
           "attacks": {}, "intervals": {"clean": intervals.describe(int(correct.sum()), n)},
           "batch_dependent": target.batch_dependent,
           "batch_note": (BATCH_NOTE.format(batch_size=target.batch_size)
                          if target.batch_dependent else None)}
  for name in settings.attacks:
    row, cells = {}, {}
    for eps in settings.eps:
      key = attack_key(settings.seed, name, eps)
      if name == "autoattack":
        parts = masks.parts[eps] = autoattack_fooled(target, settings, correct, eps, key, k)
        hit = np.any(list(parts.values()), axis=0)
      else:
        hit, adv = fooled(target, name, attack_options(name, settings, k), correct, eps,
                          key, keep_adv=name == keep_adv_for)
        if adv is not None:
          advs[eps] = adv
      masks.fooled[(name, eps)] = hit
      robust = int((correct & ~hit).sum())
      row[eps_key(eps)] = robust / n if n else 0.0
      cells[eps_key(eps)] = intervals.describe(robust, n)
      logging.info("%s eps=%.4f: accuracy %.4f", name, eps, row[eps_key(eps)])
    table["attacks"][name], table["intervals"][name] = row, cells
  if len(settings.attacks) > 1:
    worst = {}
    for eps in settings.eps:
      broken = np.any([masks.fooled[(a, eps)] for a in settings.attacks], axis=0)
      worst[eps_key(eps)] = intervals.describe(int((correct & ~broken).sum()), n)
    table["worst_case"] = {e: c["accuracy"] for e, c in worst.items()}
    table["intervals"]["worst_case"] = worst
  if masks.parts:
    after = {}
    for eps, parts in masks.parts.items():
      remaining, after[eps_key(eps)] = correct.copy(), {}
      for name, hit in parts.items():
        remaining &= ~hit
        after[eps_key(eps)][name] = float(remaining.mean())
    table["autoattack"] = {"version": settings.autoattack_version,
                           "attacks": list(settings.ensemble.attacks), "after": after}
  return table, masks, advs


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------
def cell(c: dict) -> str:
  """'0.4520 [0.4213, 0.4831]' of an `intervals.describe` dict."""
  return f"{c['accuracy']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"


def table_rows(table: dict, settings: AttackSettings) -> list[list[str]]:
  """One row per attack, then the worst case: label, then one cell per eps."""
  names = list(table["attacks"]) + (["worst_case"] if "worst_case" in table else [])
  return [[attack_label(name, settings)]
          + [cell(table["intervals"][name][eps_key(e)]) for e in settings.eps]
          for name in names]
