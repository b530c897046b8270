"""The attacks an evaluation may name, behind one signature.

`ATTACKS` (fgsm, pgd, pgd_l2) stays the list adversarial training accepts
(`check_attack_config`); `EVAL_ATTACKS` adds the AutoAttack family for robustness
evaluation. Every entry of `REGISTRY` is called as

  fn(logits_fn, images, labels, *, eps, key, norm='linf', **options) -> adv

with images (N, H, W, C) float32 in [0, 1], labels (N,) int, eps a float or (N,) radius
and adv (N, H, W, C) float32 in the eps-ball and the box. `options` are the attack's own
keyword arguments (e.g. n_iter, n_restarts, n_targets, n_queries; for 'pgd' steps and
restarts, its step being eps / 4 from a random start as in `eval_attack`; for
'autoattack' settings='standard' | 'fast' | AutoAttackSettings).
"""

import functools

import jax

from hfc_jax import errors
from hfc_jax.attacks import apgd, autoattack, fab, pgd, square
from hfc_jax.attacks.pgd import ATTACKS, LogitsFn

EVAL_ATTACKS = ATTACKS + ("apgd_ce", "apgd_t", "fab_t", "square", "autoattack")
EVAL_NORMS = ("linf", "l2")
# The norms each attack supports (all others take both).
_ONLY_NORM = {"fgsm": "linf", "pgd_l2": "l2"}


def _pgd(name, logits_fn, images, labels, *, eps, key, norm="linf", steps: int = 10,
         restarts: int = 1):
  """FGSM / PGD as `eval_attack` runs them; 'pgd' with norm 'l2' is 'pgd_l2'."""
  if name == "pgd" and norm == "l2":
    name = "pgd_l2"
  return pgd.eval_attack(name, logits_fn, images, labels, eps=eps, steps=steps, key=key,
                         restarts=restarts)


def _autoattack(logits_fn, images, labels, *, eps, key, norm="linf",
                settings="standard"):
  return autoattack.auto_attack(logits_fn, images, labels, eps=eps, key=key, norm=norm,
                                settings=settings).adv


REGISTRY = {
    "fgsm": functools.partial(_pgd, "fgsm"),
    "pgd": functools.partial(_pgd, "pgd"),
    "pgd_l2": functools.partial(_pgd, "pgd_l2"),
    "apgd_ce": functools.partial(apgd.apgd_attack, loss="ce"),
    "apgd_t": apgd.apgd_targeted,
    "fab_t": fab.fab_targeted,
    "square": square.square_attack,
    "autoattack": _autoattack,
}


def check_eval_attack_config(name: str, eps: float, norm: str = "linf", *,
                             section: str = "eval") -> None:
  """Raises a one-line HfcError naming `<section>.attack`, `<section>.norm` or
  `<section>.eps` for a bad evaluation attack: the name must be one of EVAL_ATTACKS,
  the norm one of EVAL_NORMS and one the attack supports, eps in [0, 1] for L-inf and
  >= 0 for L2 (an L2 radius may exceed 1)."""
  errors.check_choice(f"{section}.attack", name, EVAL_ATTACKS)
  errors.check_choice(f"{section}.norm", norm, EVAL_NORMS)
  if name in _ONLY_NORM and norm != _ONLY_NORM[name]:
    raise errors.HfcError(f"{section}.norm={norm!r} does not suit {section}.attack="
                          f"{name!r}, which takes norm={_ONLY_NORM[name]!r}.")
  errors.check_range(f"{section}.eps", eps, 0.0, 1.0 if norm == "linf" else None)


def run_eval_attack(name: str, logits_fn: LogitsFn, images: jax.Array,
                    labels: jax.Array, *, eps, key: jax.Array, norm: str = "linf",
                    **options) -> jax.Array:
  """Runs evaluation attack `name` (one of EVAL_ATTACKS; see the module docstring)."""
  errors.check_choice("attack.name", name, EVAL_ATTACKS)
  errors.check_choice("attack.norm", norm, EVAL_NORMS)
  if name in _ONLY_NORM and norm != _ONLY_NORM[name]:
    raise errors.HfcError(f"attack.norm={norm!r} does not suit attack.name={name!r}.")
  return REGISTRY[name](logits_fn, images, labels, eps=eps, key=key, norm=norm, **options)
