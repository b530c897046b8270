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
import ml_collections
import numpy as np

from hfc_jax import attacks, errors, evaluate
from hfc_jax.models.functional import Functional

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Adversary:
  """PGD adversarial training (Madry et al.): the step trains on attacked images only.

  `train_mode` attacks the model as it is being trained (batch statistics, dropout on);
  by default the attack sees the model in evaluation mode.
  """
  name: str = "pgd"
  eps: float = 0.03
  step_size: float = 0.003
  steps: int = 10
  random_start: bool = False
  restarts: int = 1
  train_mode: bool = False

  @classmethod
  def from_config(cls, adv: ml_collections.ConfigDict | None) -> "Adversary | None":
    """The adversary that `config.adv` describes, or None when it is disabled."""
    if adv is None or not adv.get("enabled", False):
      return None
    attacks.check_attack_config(adv.name, adv.eps, adv.step_size, adv.steps, adv.restarts,
                                random_start=adv.random_start, section="adv")
    return cls(adv.name, float(adv.eps), float(adv.step_size), int(adv.steps),
               bool(adv.random_start), int(adv.restarts), bool(adv.get("train_mode", False)))

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


def robust_evaluator(config, adversary: Adversary | None, functional: Functional,
                     mesh, test_x: np.ndarray, test_y: np.ndarray):
  """Per-epoch robust accuracy: PGD (`eval.robust_steps` steps of eps/4 at
  eps = `eval.robust_eps`, random start) on the first `eval.robust_subset` test images
  (500 when adversarially training and unset), in batches of `eval.batch_size` real
  images on any mesh (`evaluate.attack_accuracy`: padding rows are masked out of the
  model's batch statistics); None when nothing asks for it."""
  ec = config.eval
  subset = ec.get("robust_subset", 0)
  if adversary is None and not subset:
    return None
  eps = errors.check_range("eval.robust_eps", ec.get("robust_eps", 8 / 255), 0.0, 1.0)
  attack = functools.partial(attacks.attack, "pgd", eps=eps, step_size=eps / 4,
                             steps=ec.get("robust_steps", 10), random_start=True)
  fn = evaluate.make_attack_eval_fn(functional.logits, mesh, attack)
  x, y = test_x[:subset or 500], test_y[:subset or 500]
  key = jax.random.key(config.seed + 2)
  return lambda params, model_state: evaluate.attack_accuracy(
      fn, params, model_state, x, y, key, mesh=mesh, batch_size=ec.batch_size)
