"""Gradient-masking checks on a robust accuracy table (`robust_table.attack_table`).

A low robust accuracy is only credible when the attacks were not fooled by the model:
these checks follow Carlini et al., "On evaluating adversarial robustness", 2019,
section 5, and Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of
security", ICML 2018, section 3. Each is 'pass' or 'flag' with its numbers:
  monotone         accuracy under each attack does not rise with eps by more than the
                   interval: acc(eps2) - acc(eps1) <= half the width of acc(eps1)'s
                   Wilson interval, eps1 < eps2 the next smaller eps;
  large_eps        the strongest cheap white-box attack (`probe_attack`) drives accuracy
                   to ~0 at `masking_eps`: flagged if the Wilson low exceeds 2%;
  square_only      the black-box Square attack does not beat the white-box ones: images
                   fooled by Square but by no white-box attack, flagged if their share's
                   Wilson low exceeds 1%;
  more_iterations  the probe with 2x iterations and one more restart at the smallest
                   eps > 0: flagged if its accuracy falls below the probe's own by more
                   than half the width of the probe's Wilson interval.
large_eps and more_iterations run on the first `masking_images` test images only (their
extra cost: about 5 probe runs on that subset).
"""

import jax
import numpy as np

from hfc_jax import intervals
from hfc_jax.analysis.robust_table import (WHITE_BOX, AttackSettings, Masks, Target, attack_key,
                                           attack_options, cell, eps_key, fooled)
from hfc_jax.reporting import markdown

LARGE_EPS_LIMIT = 0.02     # large_eps: accuracy at masking_eps must be consistent with <= this
SQUARE_ONLY_LIMIT = 0.01   # square_only: share of images only Square breaks, at most this


def probe_attack(names) -> str:
  """The strongest cheap white-box attack for the checks: APGD-CE when the table runs
  any of the AutoAttack family, else PGD when it runs PGD, else FGSM."""
  if any(n in ("apgd_ce", "apgd_t", "fab_t", "square", "autoattack") for n in names):
    return "apgd_ce"
  return "pgd" if "pgd" in names else "fgsm"


def _status(flag: bool) -> str:
  return "flag" if flag else "pass"


def half_width(c: dict) -> float:
  """Half the width of an `intervals.describe` dict's Wilson interval: the tolerance of
  the monotone and more_iterations checks."""
  return 0.5 * (c["high"] - c["low"])


def check_monotone(table: dict, settings: AttackSettings) -> dict:
  """Check (a): per attack (and the worst case), accuracy at a larger eps may exceed the
  accuracy at the next smaller eps by at most half its interval's width."""
  order = sorted(settings.eps)
  violations = []
  for name, cells in table["intervals"].items():
    if name == "clean":
      continue
    for lo, hi in zip(order, order[1:]):
      a, b = cells[eps_key(lo)], cells[eps_key(hi)]
      if b["accuracy"] - a["accuracy"] > half_width(a):
        violations.append({"attack": name, "eps": [lo, hi],
                           "accuracy": [a["accuracy"], b["accuracy"]],
                           "tolerance": half_width(a)})
  return {"status": _status(bool(violations)), "violations": violations}


def _subset(target: Target, masks: Masks, count: int) -> tuple[np.ndarray, int]:
  """The active mask of the first `count` images that are correct clean, and count."""
  count = min(count, target.n)
  return masks.correct & (np.arange(target.n) < count), count


def check_large_eps(target: Target, settings: AttackSettings, masks: Masks) -> dict:
  """Check (b): the probe at masking_eps on the first masking_images images."""
  if not settings.masking_images:
    return {"status": "skipped", "reason": "masking_images=0"}
  name = probe_attack(settings.attacks)
  active, count = _subset(target, masks, settings.masking_images)
  key = jax.random.fold_in(attack_key(settings.seed, name, settings.masking_eps), 1)
  hit, _ = fooled(target, name, attack_options(name, settings, masks.num_classes), active,
                  settings.masking_eps, key)
  robust = intervals.describe(int((active & ~hit).sum()), count)
  return {"status": _status(robust["low"] > LARGE_EPS_LIMIT), "attack": name,
          "eps": settings.masking_eps, "limit": LARGE_EPS_LIMIT, **robust}


def check_square_only(settings: AttackSettings, masks: Masks) -> dict:
  """Check (c): images fooled by Square (alone or in the ensemble) but by no white-box
  attack of the table or the ensemble, at each eps."""
  runs_square = "square" in settings.attacks or (
      "autoattack" in settings.attacks and "square" in settings.ensemble.attacks)
  if not runs_square:
    return {"status": "not run", "reason": "no Square attack in the table"}
  per_eps, flag = {}, False
  n = len(masks.correct)
  for eps in settings.eps:
    parts = masks.parts.get(eps, {})
    square = masks.fooled.get(("square", eps), np.zeros(n, bool)) | parts.get(
        "square", np.zeros(n, bool))
    white = [masks.fooled[(a, eps)] for a in settings.attacks if a in WHITE_BOX]
    white += [m for a, m in parts.items() if a != "square"]
    only = square & ~np.any(white, axis=0) if white else square
    share = per_eps[eps_key(eps)] = intervals.describe(int(only.sum()), n)
    flag |= share["low"] > SQUARE_ONLY_LIMIT
  return {"status": _status(flag), "limit": SQUARE_ONLY_LIMIT, "per_eps": per_eps}


def check_more_iterations(target: Target, settings: AttackSettings, masks: Masks) -> dict:
  """Check (d): the probe with 2x iterations and one more restart at the smallest eps
  > 0, on the first masking_images images, against the probe's own result there."""
  name = probe_attack(settings.attacks)
  positive = [e for e in settings.eps if e > 0]
  if not settings.masking_images or not positive or name == "fgsm":
    reason = ("masking_images=0" if not settings.masking_images else
              "no eps > 0" if not positive else "FGSM has no iterations")
    return {"status": "skipped", "reason": reason}
  eps = min(positive)
  active, count = _subset(target, masks, settings.masking_images)
  key = attack_key(settings.seed, name, eps)
  k = masks.num_classes
  if (name, eps) in masks.fooled:
    base = masks.fooled[(name, eps)]
  elif masks.parts.get(eps) and settings.ensemble.attacks[0] == name:
    base = masks.parts[eps][name]        # the ensemble's first attack saw every image
  else:
    base, _ = fooled(target, name, attack_options(name, settings, k), active, eps, key)
  stronger, _ = fooled(target, name,
                       attack_options(name, settings, k, iters_factor=2, extra_restarts=1),
                       active, eps, jax.random.fold_in(key, 2))
  before = intervals.describe(int((active & ~base).sum()), count)
  after = intervals.describe(int((active & ~stronger).sum()), count)
  drop = before["accuracy"] - after["accuracy"]
  return {"status": _status(drop > half_width(before)), "attack": name, "eps": eps,
          "budget": "2x iterations, +1 restart", "before": before, "after": after,
          "drop": drop, "tolerance": half_width(before)}


def masking_checks(target: Target, settings: AttackSettings, table: dict,
                   masks: Masks) -> dict:
  """All four checks (module docstring) and the list of flagged ones."""
  checks = {"monotone": check_monotone(table, settings),
            "large_eps": check_large_eps(target, settings, masks),
            "square_only": check_square_only(settings, masks),
            "more_iterations": check_more_iterations(target, settings, masks)}
  checks["flagged"] = [name for name, c in checks.items() if c["status"] == "flag"]
  return checks


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------
def check_summary(name: str, c: dict) -> str:
  """The numbers of one check in a line."""
  if c["status"] in ("skipped", "not run"):
    return c["reason"]
  if name == "monotone":
    if not c["violations"]:
      return "no accuracy rises with eps beyond its interval"
    return "; ".join(f"{v['attack']} {v['eps'][0]:.4f} -> {v['eps'][1]:.4f}: "
                     f"{v['accuracy'][0]:.4f} -> {v['accuracy'][1]:.4f} (tolerance "
                     f"{v['tolerance']:.4f})" for v in c["violations"])
  if name == "large_eps":
    return (f"{c['attack']} at eps {c['eps']:g} on {c['n']} images: {cell(c)} "
            f"(flag if low > {c['limit']:g})")
  if name == "square_only":
    worst = max(c["per_eps"].items(), key=lambda kv: kv[1]["correct"])
    return (f"images only Square breaks: at most {worst[1]['correct']} of {worst[1]['n']} "
            f"(eps {worst[0]}, {cell(worst[1])}; flag if low > {c['limit']:g})")
  return (f"{c['attack']} at eps {c['eps']:.4f} on {c['before']['n']} images: "
          f"{cell(c['before'])} -> {c['after']['accuracy']:.4f} with {c['budget']} "
          f"(flag if it drops by > {c['tolerance']:.4f})")


def checks_markdown(checks: dict) -> str:
  """The masking checks as a Markdown table: check, status (FLAG in capitals), numbers."""
  rows = [[name, c["status"].upper() if c["status"] == "flag" else c["status"],
           check_summary(name, c)]
          for name, c in checks.items() if name != "flagged"]
  return markdown.table(["masking check", "status", "numbers"], rows)
