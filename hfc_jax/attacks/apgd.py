"""Auto-PGD (APGD): step-size-free PGD with momentum, for L-inf and L2, untargeted
(cross-entropy or DLR loss) and targeted (APGD-T, targeted DLR loss).

Written from Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, section 3, Algorithm 1:

  x(0)   = random start in the eps-ball S (intersected with the [0, 1] box)
  x(1)   = P_S(x(0) + eta * step(grad f(x(0))))                     (no momentum)
  for k = 1 .. N-1:
    z(k+1) = P_S(x(k) + eta * step(grad f(x(k))))
    x(k+1) = P_S(x(k) + alpha (z(k+1) - x(k)) + (1 - alpha)(x(k) - x(k-1)))
    keep x_max, f_max: the highest-loss point so far
    at a checkpoint w_j: halve eta and restart from x_max if
      (1) at most rho (w_j - w_{j-1}) of the steps since w_{j-1} raised the loss (the
          paper writes "fewer than"; the authors' AutoAttack code halves at equality), or
      (2) eta was not halved at w_{j-1} and f_max did not rise since w_{j-1},

with step = sign for L-inf and the L2-normalised gradient for L2, eta(0) = 2 eps,
alpha = 0.75, rho = 0.75 and checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (`checkpoints`). Here the check runs
after x(w_j) is computed and counts the w_j - w_{j-1} comparisons f(x(i+1)) > f(x(i))
for i = w_{j-1} .. w_j - 1; N steps take N + 1 gradient evaluations.

Everything is per image: step sizes, counters and the checkpoint decisions are (N,)
arrays, so one batched run equals N separate runs (for models that treat the images of a
batch independently). The iterations are a rolled `lax.fori_loop` on GPU/TPU and written
out on the CPU (`unroll`); restarts and targets likewise. An image
is fooled once any iterate misclassifies it; that first fooling iterate is returned,
else the highest-loss point. Randomness: image i of restart r of target j draws from
fold_in(fold_in(fold_in(key, i), j), r) (`keys.image_keys`), so results do not depend
on the batch's split over devices. Constraints are exact as in `pgd.project_linf` /
`pgd.project_l2` (every iterate is projected).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from hfc_jax.attacks import keys as keys_lib
from hfc_jax.attacks import losses
from hfc_jax.attacks.pgd import (LogitsFn, _l2_norm, _per_image, _repeat, choose_unroll,
                                 project_l2, project_linf)

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr", "dlr_targeted")


def checkpoints(n_iter: int) -> tuple[int, ...]:
  """The iterations 0 < w_1 < w_2 < ... < n_iter at which APGD may halve its step:
  w_j = ceil(p_j n_iter), p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
  (Croce & Hein 2020, section 3.1). For n_iter = 100: 22, 41, 57, 70, 80, 87, 93, 99."""
  p = [0.0, 0.22]
  while p[-1] < 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  # Rounded first: p_j * n_iter may land a rounding error above an integer (0.41 * 100).
  w = {math.ceil(round(pj * n_iter, 6)) for pj in p[1:]}
  return tuple(sorted(v for v in w if 0 < v < n_iter))


def check_norm(norm: str) -> str:
  if norm not in NORMS:
    raise ValueError(f"norm={norm!r}; choose one of {NORMS}.")
  return norm


def project(norm: str, adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """`project_linf` or `project_l2` of `adv` around `x`."""
  return (project_linf if norm == "linf" else project_l2)(adv, x, eps)


def random_start(norm: str, keys: jax.Array, x: jax.Array, eps) -> jax.Array:
  """A random point of the eps-ball around x (not yet clipped to the box), row i from
  keys[i]: L-inf uniform in the cube; L2 a uniform direction at radius uniform in
  [0, eps]."""
  shape = x.shape[1:]
  eps = _per_image(eps, x)
  if norm == "linf":
    return x + keys_lib.uniform(keys, shape, -1.0, 1.0) * eps
  direction = keys_lib.normal(keys_lib.fold_all(keys, 0), shape)
  radius = _per_image(keys_lib.uniform(keys_lib.fold_all(keys, 1), ()), x) * eps
  return x + direction / jnp.maximum(_l2_norm(direction), 1e-12) * radius


def _step(norm: str, adv, grad, step_size):
  if norm == "linf":
    return adv + step_size * jnp.sign(grad)
  return adv + step_size * grad / jnp.maximum(_l2_norm(grad), 1e-12)


def _loss_fn(loss: str, labels, targets):
  if loss == "ce":
    return lambda z: losses.cross_entropy(z, labels)
  if loss == "dlr":
    return lambda z: losses.dlr(z, labels)
  if loss == "dlr_targeted":
    return lambda z: losses.dlr_targeted(z, labels, targets)
  raise ValueError(f"loss={loss!r}; choose one of {LOSSES}.")


def _apgd_run(logits_fn: LogitsFn, x, labels, keys, *, eps, norm, loss, targets,
              n_iter, rho, alpha, unroll=False):
  """One APGD run (Algorithm 1) from a random start drawn from `keys`.

  Returns (adv (N, H, W, C), fooled (N,) bool, best loss (N,)): adv is the first
  iterate that misclassifies, else the highest-loss iterate.
  """
  per_example = _loss_fn(loss, labels, targets)

  def evaluate(z):
    def total(z):
      logits = logits_fn(z)
      values = per_example(logits)
      return values.sum(), (values, logits)
    (_, (values, logits)), grad = jax.value_and_grad(total, has_aux=True)(z)
    return values, grad, losses.misclassified(logits, labels)

  proj = lambda v: project(norm, v, x, eps)
  x0 = proj(random_start(norm, keys, x, eps))
  loss0, grad0, fooled0 = evaluate(x0)

  is_check = np.zeros(n_iter + 1, bool)
  since_last = np.zeros(n_iter + 1, np.float32)
  last = 0
  for w in checkpoints(n_iter):
    is_check[w], since_last[w], last = True, w - last, w
  is_check, since_last = jnp.asarray(is_check), jnp.asarray(since_last)

  n = x.shape[0]
  init = dict(x=x0, x_prev=x0, grad=grad0, loss=loss0,
              x_max=x0, grad_max=grad0, loss_max=loss0,
              eta=jnp.broadcast_to(2.0 * jnp.asarray(eps, jnp.float32), (n,)),
              count=jnp.zeros((n,), jnp.int32),
              loss_max_check=loss0, halved_last=jnp.zeros((n,), bool),
              adv=x0, fooled=fooled0)

  def body(m, s):
    a = jnp.where(m == 1, 1.0, alpha)  # the first step has no momentum
    z = proj(_step(norm, s["x"], s["grad"], _per_image(s["eta"], x)))
    x_new = proj(s["x"] + a * (z - s["x"]) + (1.0 - a) * (s["x"] - s["x_prev"]))
    loss_new, grad_new, fooled_new = evaluate(x_new)
    count = s["count"] + (loss_new > s["loss"]).astype(jnp.int32)
    better = loss_new > s["loss_max"]
    b = _per_image(better, x, bool)
    x_max = jnp.where(b, x_new, s["x_max"])
    grad_max = jnp.where(b, grad_new, s["grad_max"])
    loss_max = jnp.where(better, loss_new, s["loss_max"])
    first = fooled_new & ~s["fooled"]
    adv = jnp.where(_per_image(first, x, bool), x_new, s["adv"])
    # Checkpoint: conditions (1) and (2) of section 3.1, per image.
    check = is_check[m]
    cond1 = count.astype(jnp.float32) <= rho * since_last[m]   # as AutoAttack's code
    cond2 = ~s["halved_last"] & (loss_max <= s["loss_max_check"])
    halve = check & (cond1 | cond2)
    h = _per_image(halve, x, bool)
    x_cur = jnp.where(h, x_max, x_new)
    return dict(
        x=x_cur, x_prev=jnp.where(h, x_max, s["x"]),
        grad=jnp.where(h, grad_max, grad_new), loss=jnp.where(halve, loss_max, loss_new),
        x_max=x_max, grad_max=grad_max, loss_max=loss_max,
        eta=jnp.where(halve, 0.5 * s["eta"], s["eta"]),
        count=jnp.where(check, 0, count),
        loss_max_check=jnp.where(check, loss_max, s["loss_max_check"]),
        halved_last=jnp.where(check, halve, s["halved_last"]),
        adv=adv, fooled=s["fooled"] | fooled_new)

  s = _repeat(body, 1, n_iter + 1, init, unroll)
  adv = jnp.where(_per_image(s["fooled"], x, bool), s["adv"], s["x_max"])
  return adv, s["fooled"], s["loss_max"]


def keep_better(best, new):
  """Per image, the first fooling result, else the one of higher loss."""
  best_adv, best_fooled, best_loss = best
  adv, fooled, loss = new
  take = ~best_fooled & (fooled | (loss > best_loss))
  return (jnp.where(_per_image(take, adv, bool), adv, best_adv), best_fooled | fooled,
          jnp.where(take, loss, best_loss))


def nothing_yet(x: jax.Array):
  """The (adv, fooled, loss) that any result replaces in `keep_better`."""
  n = x.shape[0]
  return x, jnp.zeros((n,), bool), jnp.full((n,), -jnp.inf, jnp.float32)


def best_over(run, count: int, x: jax.Array, unroll: bool = False):
  """run(i) for i < count in a rolled loop (one trace of `run`; unroll: a Python loop),
  per image the first fooling result kept, else the one of highest loss."""
  if count == 1:
    return run(0)
  return _repeat(lambda i, best: keep_better(best, run(i)), 0, count, nothing_yet(x),
                 unroll)


def apgd_attack(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
                key: jax.Array, norm: str = "linf", loss: str = "ce", n_iter: int = 100,
                n_restarts: int = 1, rho: float = 0.75, alpha: float = 0.75,
                return_fooled: bool = False, unroll: bool | None = False):
  """Untargeted APGD (module docstring) on the loss 'ce' (APGD-CE) or 'dlr' (APGD-DLR).

  Args:
    logits_fn: images (N, H, W, C) -> logits (N, K).
    images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
    eps: radius, float or (N,), [0, 1] image units (L2: Euclidean length).
    key: PRNG key of the whole batch (each image folds in its row index).
    norm: 'linf' or 'l2'.
    n_iter: N, steps per run (Python int); n_restarts: runs from independent random
      starts, per image the first fooling result kept, else the highest-loss one.
    rho, alpha: the checkpoint threshold and momentum of Algorithm 1.
    return_fooled: also return the (N,) bool mask of images fooled.
    unroll: the iterations written out in one long program (None: on the CPU only,
      `pgd.choose_unroll`), where XLA ran the rolled loop about 4x slower (small CNN,
      batch 128, 10 iterations: 1.72 s rolled, 0.48 s unrolled; compiling 100
      unrolled iterations took 22 s). Default False: one short program.

  Returns:
    (N, H, W, C) float32 adversarial images (and the fooled mask if asked).
  """
  check_norm(norm)
  if loss not in ("ce", "dlr"):
    raise ValueError(f"loss={loss!r}; untargeted APGD takes 'ce' or 'dlr'.")
  x = jnp.asarray(images, jnp.float32)
  unroll = choose_unroll(unroll)
  run = lambda k: _apgd_run(logits_fn, x, labels, k, eps=eps, norm=norm, loss=loss,
                            targets=None, n_iter=n_iter, rho=rho, alpha=alpha,
                            unroll=unroll)
  image_keys = keys_lib.image_keys(key, x.shape[0])
  adv, fooled, _ = best_over(lambda r: run(keys_lib.fold_all(image_keys, r)), n_restarts,
                             x, unroll)
  return (adv, fooled) if return_fooled else adv


def default_targets(num_classes: int) -> int:
  """min(9, K - 1): the number of target classes of APGD-T and FAB-T in AutoAttack."""
  return min(9, num_classes - 1)


def apgd_targeted(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
                  key: jax.Array, norm: str = "linf", n_iter: int = 100,
                  n_restarts: int = 1, n_targets: int | None = None, rho: float = 0.75,
                  alpha: float = 0.75, return_fooled: bool = False, first_target=0,
                  unroll: bool | None = False):
  """APGD-T: APGD on the targeted DLR loss, one run (of `n_restarts` restarts) per
  target class; the j-th target of an image is its j-th highest non-true class by clean
  logit, first_target <= j < first_target + n_targets (default n_targets: min(9, K - 1)).
  An image counts as fooled if any run fooled it (misclassified as any class);
  arguments otherwise as `apgd_attack`.

  `first_target` may be traced: an evaluation on the CPU runs one target per call
  (n_targets=1, first_target=j, one compiled program for every j) and drops the images
  each target broke before the next, as the reference implementation does, so that no
  rolled loop holds the unrolled iterations (XLA:CPU ran those as slowly as a rolled
  loop of them)."""
  check_norm(norm)
  unroll = choose_unroll(unroll)
  x = jnp.asarray(images, jnp.float32)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[-1]
  n_targets = default_targets(num_classes) if n_targets is None else n_targets
  ranked = losses.target_classes(clean_logits, labels, num_classes - 1)
  image_keys = keys_lib.image_keys(key, x.shape[0])

  def target_run(j):
    rank = first_target + j
    run = lambda k: _apgd_run(logits_fn, x, labels, k, eps=eps, norm=norm,
                              loss="dlr_targeted", targets=jnp.take(ranked, rank, axis=1),
                              n_iter=n_iter, rho=rho, alpha=alpha, unroll=unroll)
    target_keys = keys_lib.fold_all(image_keys, rank)
    return best_over(lambda r: run(keys_lib.fold_all(target_keys, r)), n_restarts, x,
                     unroll)

  adv, fooled, _ = best_over(target_run, n_targets, x, unroll)
  return (adv, fooled) if return_fooled else adv
