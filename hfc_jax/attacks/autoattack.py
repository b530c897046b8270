"""AutoAttack: the parameter-free ensemble APGD-CE, APGD-T, FAB-T, Square.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, section 4. An image is robust at eps only if it is
classified correctly and every attack of the ensemble fails on it. The reference runs
each attack on the images still robust; in one jitted program each attack runs on the
whole batch instead, and per image the first successful adversarial example (in the
ensemble's order) is kept, which gives the same robust set and the same worst case.

Versions (`AutoAttackSettings.preset`):
  'standard'  APGD-CE (100 iterations, 1 restart), APGD-T (100 iterations, 9 targets),
              FAB-T (100 iterations, 9 targets, 1 restart), Square (5,000 queries,
              p_init 0.8): the reference's defaults for L-inf and L2.
  'fast'      a cheaper screen, not a substitute for 'standard': APGD-CE and APGD-T with
              25 iterations (APGD-T on 3 targets), then Square with 1,000 queries.
Target counts are capped at K - 1. Attack number a (in the order above) gets the key
fold_in(key, a).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hfc_jax.attacks import apgd, fab, losses, square
from hfc_jax.attacks.pgd import LogitsFn, _per_image

ENSEMBLE_ATTACKS = ("apgd_ce", "apgd_t", "fab_t", "square")
VERSIONS = ("standard", "fast")


@dataclasses.dataclass(frozen=True)
class AutoAttackSettings:
  """What the ensemble runs, with the reference's 'standard' defaults."""
  attacks: tuple[str, ...] = ENSEMBLE_ATTACKS
  apgd_iters: int = 100        # APGD-CE steps
  apgd_restarts: int = 1
  apgd_t_iters: int = 100      # APGD-T steps per target
  apgd_t_targets: int = 9
  apgd_t_restarts: int = 1
  fab_iters: int = 100         # FAB-T steps per target
  fab_targets: int = 9
  fab_restarts: int = 1
  square_queries: int = 5000
  square_p_init: float = 0.8

  def __post_init__(self):
    for name in self.attacks:
      if name not in ENSEMBLE_ATTACKS:
        raise ValueError(f"attack {name!r} is not one of {ENSEMBLE_ATTACKS}.")

  @classmethod
  def preset(cls, version: str) -> "AutoAttackSettings":
    """'standard' or 'fast' (module docstring)."""
    if version == "standard":
      return cls()
    if version == "fast":
      return cls(attacks=("apgd_ce", "apgd_t", "square"), apgd_iters=25, apgd_t_iters=25,
                 apgd_t_targets=3, square_queries=1000)
    raise ValueError(f"version={version!r}; choose one of {VERSIONS}.")


class AutoAttackResult(NamedTuple):
  """adv (N, H, W, C): per image the first successful adversarial example, else the
  clean image; fooled: attack name -> (N,) bool, that attack's own successes (also on
  images an earlier attack broke), plus 'clean' for images misclassified unattacked;
  robust (N,) bool: correct and no attack succeeded."""
  adv: jax.Array
  fooled: dict[str, jax.Array]
  robust: jax.Array


def _run_one(name: str, s: AutoAttackSettings, logits_fn, x, labels, *, eps, key, norm,
             num_classes: int):
  common = dict(eps=eps, key=key, norm=norm, return_fooled=True)
  if name == "apgd_ce":
    return apgd.apgd_attack(logits_fn, x, labels, loss="ce", n_iter=s.apgd_iters,
                            n_restarts=s.apgd_restarts, **common)
  if name == "apgd_t":
    return apgd.apgd_targeted(logits_fn, x, labels, n_iter=s.apgd_t_iters,
                              n_restarts=s.apgd_t_restarts,
                              n_targets=min(s.apgd_t_targets, num_classes - 1), **common)
  if name == "fab_t":
    return fab.fab_targeted(logits_fn, x, labels, n_iter=s.fab_iters,
                            n_restarts=s.fab_restarts,
                            n_targets=min(s.fab_targets, num_classes - 1), **common)
  return square.square_attack(logits_fn, x, labels, n_queries=s.square_queries,
                              p_init=s.square_p_init, **common)


def auto_attack(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
                key: jax.Array, norm: str = "linf",
                settings: AutoAttackSettings | str = "standard") -> AutoAttackResult:
  """Runs the ensemble (module docstring) at radius eps.

  Args:
    logits_fn: images (N, H, W, C) -> logits (N, K).
    images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
    eps: float or (N,) radius in [0, 1] image units; norm: 'linf' or 'l2'.
    key: PRNG key of the batch.
    settings: an AutoAttackSettings or a version name ('standard', 'fast').

  Returns:
    AutoAttackResult; every adv lies exactly in the eps-ball and the box.
  """
  apgd.check_norm(norm)
  if isinstance(settings, str):
    settings = AutoAttackSettings.preset(settings)
  x = jnp.asarray(images, jnp.float32)
  clean_logits = logits_fn(x)
  fooled = {"clean": losses.misclassified(clean_logits, labels)}
  adv, broken = x, fooled["clean"]
  for a, name in enumerate(settings.attacks):
    adv_a, _ = _run_one(name, settings, logits_fn, x, labels, eps=eps,
                        key=jax.random.fold_in(key, a), norm=norm,
                        num_classes=clean_logits.shape[-1])
    # Success is judged on the returned point itself, after its projection.
    fooled[name] = losses.misclassified(logits_fn(adv_a), labels)
    take = fooled[name] & ~broken
    adv = jnp.where(_per_image(take, x, bool), adv_a, adv)
    broken = broken | fooled[name]
  return AutoAttackResult(adv=adv, fooled=fooled, robust=~broken)
