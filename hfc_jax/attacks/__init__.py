"""White-box and score-based attacks, pure JAX, batched and jittable.

  pgd.py         FGSM, L-inf / L2 PGD, projections, the minimal-eps search (the attacks
                 of adversarial training: `ATTACKS`), and `attack`, `eval_attack`.
  losses.py      cross-entropy, margin, DLR and targeted DLR losses.
  apgd.py        APGD-CE / APGD-DLR and APGD-T (Croce & Hein, ICML 2020).
  fab.py         FAB-T, the minimal-norm targeted boundary attack (Croce & Hein, ICML 2020).
  square.py      Square Attack (Andriushchenko et al., ECCV 2020).
  autoattack.py  the AutoAttack ensemble ('standard' and 'fast').
  registry.py    `EVAL_ATTACKS`, `run_eval_attack`, `check_eval_attack_config`.

Every public name of the former module `hfc_jax.attacks` (now `pgd.py`) is re-exported
here, so `attacks.pgd_linf`, `attacks.ATTACKS`, `attacks.check_attack_config`,
`attacks.eval_attack`, `attacks.project_linf`, ... keep working.
"""

from hfc_jax.attacks import apgd, autoattack, fab, keys, losses, pgd, registry, square
from hfc_jax.attacks.apgd import apgd_attack, apgd_targeted
from hfc_jax.attacks.autoattack import AutoAttackResult, AutoAttackSettings, auto_attack
from hfc_jax.attacks.fab import fab_minimal, fab_targeted, project_hyperplane_box
from hfc_jax.attacks.pgd import (
    ATTACKS, LogitsFn, attack, check_attack_config, choose_unroll, eval_attack, fgsm,
    input_gradient, minimal_linf_eps, pgd_l2, pgd_linf, project_l2, project_linf)
from hfc_jax.attacks.registry import (
    EVAL_ATTACKS, EVAL_NORMS, REGISTRY, check_eval_attack_config, run_eval_attack)
from hfc_jax.attacks.square import square_attack
