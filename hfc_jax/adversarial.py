"""Adversarial training's attacker, and the per-epoch robust evaluation
(Wang et al., CVPR 2020, section 6).

`Adversary` is what `config.adv` asks for: the train step (`train.train_step`) calls
`perturb` on every batch and trains on the attacked images only (Madry et al.).
`robust_evaluator` builds the per-epoch PGD accuracy that `train_and_evaluate` records.
The attacks themselves are the pure functions of `hfc_jax.attacks`.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfc_jax import attacks, errors, evaluate, sharding
from hfc_jax.models.functional import Functional

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Adversary:
  """PGD adversarial training (Madry et al.): the step trains on attacked images only.

  `train_mode` attacks the model as it is being trained (batch statistics, dropout on);
  otherwise the attack sees the model in evaluation mode. The fields have no defaults
  of their own: `from_config` takes them from `config.adv` (`hfc_jax.defaults`).
  """
  name: str
  eps: float
  step_size: float
  steps: int
  random_start: bool
  restarts: int
  train_mode: bool

  @classmethod
  def from_config(cls, adv: ml_collections.ConfigDict) -> "Adversary | None":
    """The adversary that `config.adv` describes, or None when it is disabled."""
    if not adv.enabled:
      return None
    attacks.check_attack_config(adv.name, adv.eps, adv.step_size, adv.steps, adv.restarts,
                                random_start=adv.random_start, section="adv")
    return cls(adv.name, float(adv.eps), float(adv.step_size), int(adv.steps),
               bool(adv.random_start), int(adv.restarts), bool(adv.train_mode))

  def perturb(self, functional: Functional, params: PyTree, model_state: PyTree,
              x: jax.Array, labels: jax.Array, key: jax.Array, dropout_key: jax.Array
              ) -> jax.Array:
    """Adversarial versions of images `x` (N, H, W, C) in [0, 1] for int `labels` (N,);
    no gradient flows back into the parameters. `key` draws the random start,
    `dropout_key` the dropout masks of `train_mode`."""
    if self.train_mode:
      logits_fn = lambda z: functional.apply(params, model_state, z, train=True,
                                             dropout_key=dropout_key)[0]
    else:
      logits_fn = functools.partial(functional.logits, params, model_state)
    adv = attacks.attack(self.name, logits_fn, x, labels, eps=self.eps,
                         step_size=self.step_size, steps=self.steps, key=key,
                         random_start=self.random_start, restarts=self.restarts)
    return jax.lax.stop_gradient(adv)


def check_config(config: ml_collections.ConfigDict) -> None:
  """One-line HfcErrors for the adv.* fields (checked also while adv.enabled is off, so
  that a typo never waits for the run that turns it on) and the eval.robust_* fields of
  the per-epoch robust accuracy (`robust_evaluator`)."""
  adv = config.adv
  for field in ("enabled", "random_start", "train_mode"):
    errors.check_choice(f"adv.{field}", adv[field], (False, True))
  attacks.check_attack_config(adv.name, adv.eps, adv.step_size, adv.steps, adv.restarts,
                              random_start=adv.random_start, section="adv")
  ec = config.eval
  errors.check_range("eval.robust_subset", ec.robust_subset, 0, None, integer=True)
  errors.check_range("eval.robust_steps", ec.robust_steps, 0, None, integer=True)
  errors.check_range("eval.robust_eps", ec.robust_eps, 0.0, 1.0)


def robust_evaluator(config, adversary: Adversary | None, functional: Functional,
                     mesh, test_x: np.ndarray, test_y: np.ndarray):
  """Per-epoch robust accuracy: PGD (`eval.robust_steps` steps of eps/4 at
  eps = `eval.robust_eps`, random start) on the first `eval.robust_subset` test images
  (500 when adversarially training and unset), in batches of `eval.batch_size` real
  images on any mesh (`attack_accuracy`: padding rows are masked out of the
  model's batch statistics); None when nothing asks for it."""
  ec = config.eval
  subset = ec.robust_subset
  if adversary is None and not subset:
    return None
  attack = functools.partial(attacks.eval_attack, "pgd", eps=ec.robust_eps,
                             steps=ec.robust_steps)
  fn = make_attack_eval_fn(functional.logits, mesh, attack)
  x, y = test_x[:subset or 500], test_y[:subset or 500]
  key = jax.random.key(config.seed + 2)
  return lambda params, model_state: attack_accuracy(
      fn, params, model_state, x, y, key, mesh=mesh, batch_size=ec.batch_size)


def attack_eval_step(params, model_state, images, labels, mask, key, *, logits_fn,
                     attack) -> dict[str, jax.Array]:
  """Accuracy under attack of one (padded) batch.

  `attack(logits_fn, x, labels, key) -> adversarial x` runs entirely on device
  (e.g. `functools.partial(attacks.eval_attack, 'pgd', eps=..., steps=...)`).
  The mask is bound into the model, so the attack's forward passes also normalise over
  the real rows only. Returns {'correct': count of images still classified right,
  'count': real images}.
  """
  x = evaluate.to_float(images)
  model = functools.partial(logits_fn, params, model_state, mask=mask)
  adv = attack(model, x, labels, key=key)
  return {"correct": evaluate.hits(params, model_state, adv, labels, mask,
                                   logits_fn=logits_fn),
          "count": jnp.sum(mask)}


def make_attack_eval_fn(logits_fn, mesh, attack):
  """Jits `attack_eval_step` for a mesh (replicated variables, sharded batch)."""
  step = functools.partial(attack_eval_step, logits_fn=logits_fn, attack=attack)
  return jax.jit(step, out_shardings=sharding.replicated(mesh))


def attack_accuracy(attack_eval_fn, params, model_state, x: np.ndarray, y: np.ndarray,
                    key: jax.Array, *, mesh, batch_size: int) -> float:
  """Accuracy of the model on (x, y) under the attack of `attack_eval_fn`, in batches of
  `batch_size` real images; each batch gets its own key, fold_in(key, batch index), so
  the result is reproducible and the same on any mesh."""
  batches = evaluate.eval_batches(x, y, mesh=mesh, batch_size=batch_size)
  totals = evaluate.accumulate(
      functools.partial(attack_eval_fn, params, model_state),
      ((*batch, jax.random.fold_in(key, i)) for i, batch in enumerate(batches)))
  return float(totals["correct"]) / max(float(totals["count"]), 1.0)
