"""FAB-T: the targeted Fast Adaptive Boundary attack, L-inf and L2, a minimal-norm
attack; for a robustness check at eps it succeeds where the norm found is <= eps.

Written from Croce & Hein, "Minimally distorted adversarial examples with a fast
adaptive boundary attack", ICML 2020, section 3 (Algorithm 1), with the targeted
variant of Croce & Hein, ICML 2020 ("Reliable evaluation ...", section 4). For true
class y and target t, each iteration linearises g = f_t - f_y at the iterate x(i),

  pi:  g(x(i)) + w . (z - x(i)) = 0,   w = grad g(x(i)),

and projects onto pi intersected with the box C = [0, 1]^D both the iterate and the
original image (`project_hyperplane_box`, exact; section 3.1):

  delta      = proj_p(x(i), pi, C) - x(i),   delta_orig = proj_p(x_orig, pi, C) - x_orig
  a          = min(||delta||_p / (||delta||_p + ||delta_orig||_p), alpha_max)
  x(i+1)     = P_C((1 - a)(x(i) + eta delta) + a (x_orig + eta delta_orig))
  if x(i+1) is misclassified: keep it if it is the closest to x_orig so far, then
  step back towards x_orig: x(i+1) = (1 - beta) x_orig + beta x(i+1)   (section 3.2)

with alpha_max = 0.1, eta = 1.05, beta = 0.9 and n_iter = 100 (the AutoAttack
defaults). Run 0 of a target starts at x_orig; restart r > 0 starts at x_orig plus
random noise of norm min(best norm found, eps) / 2 (section 3.3). Targets are the
n_targets (default min(9, K - 1)) highest non-true classes by clean logit, one run
each; every (target, restart) run is one step of a loop (rolled unless `unroll`) and
the closest adversarial example over all is kept per image. Randomness: image i of run (j, r) draws
from fold_in(fold_in(fold_in(key, i), j), r).
"""

import jax
import jax.numpy as jnp

from hfc_jax.attacks import keys as keys_lib
from hfc_jax.attacks import losses
from hfc_jax.attacks.apgd import check_norm, default_targets, project
from hfc_jax.attacks.pgd import LogitsFn, _per_image, _repeat, choose_unroll


def project_hyperplane_box(x: jax.Array, w: jax.Array, b: jax.Array, norm: str,
                           low: float = 0.0, high: float = 1.0) -> jax.Array:
  """Per row, the point z nearest to x in L-inf or L2 norm with w . z + b = 0 and
  low <= z <= high; x must lie in the box.

  With delta = z - x, c = -(w . x + b), s = sign(c) and v = s w, the problem is
  min ||delta|| s.t. v . delta = |c|, delta_i in [low - x_i, high - x_i]. Let cap_i be
  the bound on the side of sign(v_i). The optimum (KKT) is
    L2:    delta_i = sign(v_i) min(lambda |v_i|, |cap_i|)
    L-inf: delta_i = sign(v_i) min(r, |cap_i|)
  where lambda (r) solves phi(lambda) = |c| for the non-decreasing piecewise-linear
  phi(lambda) = sum_i min(lambda |v_i|, |cap_i|) |v_i|  (L-inf: min(r, |cap_i|) |v_i|),
  whose breakpoints t_i = |cap_i| / |v_i| (L-inf: |cap_i|) are sorted once: on the
  segment before the first breakpoint where phi reaches |c|, phi is linear and is
  inverted exactly. Where the hyperplane misses the box (|c| > phi(inf)) the result is
  the box corner that gets closest to it (delta_i = sign(v_i) |cap_i|).

  Args:
    x, w: (N, D) float32; b: (N,) float32. norm: 'linf' or 'l2'.

  Returns:
    (N, D) float32 projections.
  """
  check_norm(norm)
  c = -(jnp.sum(w * x, axis=-1) + b)
  s = jnp.where(c >= 0, 1.0, -1.0)[:, None]
  v = s * w
  cap = jnp.where(v > 0, high - x, low - x)
  abs_v, abs_cap = jnp.abs(v), jnp.abs(cap)
  moving = abs_v > 0
  if norm == "l2":
    slope = abs_v * abs_v
    t = jnp.where(moving, abs_cap / jnp.where(moving, abs_v, 1.0), jnp.inf)
  else:
    slope = abs_v
    t = jnp.where(moving, abs_cap, jnp.inf)
  saturated = abs_v * abs_cap  # a coordinate's share of phi once at its bound
  order = jnp.argsort(t, axis=-1)
  t_s, slope_s, sat_s = (jnp.take_along_axis(a, order, axis=-1)
                         for a in (t, slope, saturated))
  sat_before = jnp.cumsum(sat_s, axis=-1) - sat_s  # sum over the breakpoints before k
  slope_from = jnp.sum(slope_s, axis=-1, keepdims=True) - (jnp.cumsum(slope_s, axis=-1)
                                                           - slope_s)  # k and after
  phi = jnp.where(jnp.isfinite(t_s), sat_before + t_s * slope_from, jnp.inf)
  target = jnp.abs(c)[:, None]
  k = jnp.sum(phi < target, axis=-1, keepdims=True)  # segment ending at breakpoint k
  reachable = k < jnp.sum(moving, axis=-1, keepdims=True)
  k = jnp.minimum(k, x.shape[-1] - 1)
  num = target - jnp.take_along_axis(sat_before, k, axis=-1)
  den = jnp.take_along_axis(slope_from, k, axis=-1)
  lam = jnp.where(reachable & (den > 0), num / jnp.where(den > 0, den, 1.0), jnp.inf)
  lam = jnp.maximum(lam, 0.0)
  reach = jnp.where(moving, lam * abs_v, 0.0) if norm == "l2" else lam  # no inf * 0
  delta = jnp.sign(v) * jnp.minimum(reach, abs_cap)
  return jnp.clip(x + delta, low, high)  # x + (high - x) may round past high


def _norm(norm: str, v: jax.Array) -> jax.Array:
  """Per-row L-inf or L2 norm of (N, ...) -> (N,)."""
  flat = v.reshape(v.shape[0], -1)
  if norm == "linf":
    return jnp.max(jnp.abs(flat), axis=-1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=-1))


def _random_start(norm: str, keys: jax.Array, x: jax.Array, radius: jax.Array):
  """x plus noise of norm `radius` (N,): uniform in the cube rescaled to L-inf norm
  radius, or Gaussian rescaled to L2 norm radius; clipped to the box."""
  shape = x.shape[1:]
  if norm == "linf":
    noise = keys_lib.uniform(keys, shape, -1.0, 1.0)
  else:
    noise = keys_lib.normal(keys, shape)
  noise = noise / _per_image(jnp.maximum(_norm(norm, noise), 1e-12), x)
  return jnp.clip(x + noise * _per_image(radius, x), 0.0, 1.0)


def _fab_run(logits_fn: LogitsFn, x_orig, labels, targets, start, best, *, norm, n_iter,
             alpha_max, eta, beta, unroll=False):
  """n_iter FAB-T iterations towards `targets` (N,) from `start`; `best` = (adv, norm)
  so far, updated with every closer misclassified iterate."""
  n = x_orig.shape[0]
  flat = lambda v: v.reshape(n, -1)
  x0_flat = flat(x_orig)

  def linearise(z):
    def g(z):
      logits = logits_fn(z)
      diff = (jnp.take_along_axis(logits, targets[:, None], -1)
              - jnp.take_along_axis(logits, labels[:, None], -1))[:, 0]
      return diff.sum(), diff
    (_, diff), grad = jax.value_and_grad(g, has_aux=True)(z)
    return diff, flat(grad)

  def body(_, carry):
    x_cur, best_adv, best_norm = carry
    g, w = linearise(x_cur)
    xc = flat(x_cur)
    b = g - jnp.sum(w * xc, axis=-1)  # the hyperplane w . z + b = 0
    delta = project_hyperplane_box(xc, w, b, norm) - xc
    delta_orig = project_hyperplane_box(x0_flat, w, b, norm) - x0_flat
    nd, no = _norm(norm, delta), _norm(norm, delta_orig)
    a = jnp.minimum(nd / jnp.maximum(nd + no, 1e-12), alpha_max)[:, None]
    x_new = jnp.clip((1.0 - a) * (xc + eta * delta) + a * (x0_flat + eta * delta_orig),
                     0.0, 1.0).reshape(x_orig.shape)
    fooled = losses.misclassified(logits_fn(x_new), labels)
    dist = _norm(norm, x_new - x_orig)
    closer = fooled & (dist < best_norm)
    best_adv = jnp.where(_per_image(closer, x_orig, bool), x_new, best_adv)
    best_norm = jnp.where(closer, dist, best_norm)
    back = (1.0 - beta) * x_orig + beta * x_new
    x_cur = jnp.where(_per_image(fooled, x_orig, bool), back, x_new)
    return x_cur, best_adv, best_norm

  _, best_adv, best_norm = _repeat(body, 0, n_iter, (start,) + tuple(best), unroll)
  return best_adv, best_norm


def fab_minimal(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
                key: jax.Array, norm: str = "linf", n_iter: int = 100,
                n_restarts: int = 1, n_targets: int | None = None,
                alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                first_target=0, unroll: bool | None = False
                ) -> tuple[jax.Array, jax.Array]:
  """FAB-T's closest adversarial example per image (module docstring).

  Args:
    logits_fn: images (N, H, W, C) -> logits (N, K).
    images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
    eps: float or (N,); only sets the radius of the random restarts (r > 0).
    key: PRNG key of the batch; norm: 'linf' or 'l2'.
    n_iter, n_restarts, n_targets: per target, iterations and runs; the targets.
    first_target, unroll: as `apgd.apgd_targeted` (targets first_target ... first_target
      + n_targets - 1; `first_target` may be traced; the iterations written out on CPU).

  Returns:
    adv (N, H, W, C) float32: the closest misclassified point found, else the image;
    norms (N,) float32: ||adv - images||_p, +inf where none was found.
  """
  check_norm(norm)
  x = jnp.asarray(images, jnp.float32)
  n = x.shape[0]
  unroll = choose_unroll(unroll)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[-1]
  n_targets = default_targets(num_classes) if n_targets is None else n_targets
  ranked = losses.target_classes(clean_logits, labels, num_classes - 1)
  image_keys = keys_lib.image_keys(key, n)
  eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (n,))

  def run(i, best):
    j, r = first_target + i // n_restarts, i % n_restarts
    run_keys = keys_lib.fold_all(keys_lib.fold_all(image_keys, j), r)
    radius = 0.5 * jnp.minimum(best[1], eps)
    start = jnp.where(r > 0, _random_start(norm, run_keys, x, radius), x)
    return _fab_run(logits_fn, x, labels, jnp.take(ranked, j, axis=1), start, best,
                    norm=norm, n_iter=n_iter, alpha_max=alpha_max, eta=eta, beta=beta,
                    unroll=unroll)

  best = (x, jnp.full((n,), jnp.inf, jnp.float32))
  return _repeat(run, 0, n_targets * n_restarts, best, unroll)


def fab_targeted(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
                 key: jax.Array, norm: str = "linf", n_iter: int = 100,
                 n_restarts: int = 1, n_targets: int | None = None,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 return_fooled: bool = False, first_target=0, unroll: bool | None = False):
  """FAB-T as a robustness check at radius eps: the closest adversarial example of
  `fab_minimal` where its norm is <= eps (projected onto the eps-ball and box, a no-op
  up to float rounding), else the clean image. Arguments as `fab_minimal`;
  `return_fooled` also returns the (N,) bool mask of images whose returned point
  is misclassified."""
  adv, norms = fab_minimal(logits_fn, images, labels, eps=eps, key=key, norm=norm,
                           n_iter=n_iter, n_restarts=n_restarts, n_targets=n_targets,
                           alpha_max=alpha_max, eta=eta, beta=beta,
                           first_target=first_target, unroll=unroll)
  x = jnp.asarray(images, jnp.float32)
  within = norms <= jnp.asarray(eps, jnp.float32)
  adv = project(norm, jnp.where(_per_image(within, x, bool), adv, x), x, eps)
  if not return_fooled:
    return adv
  return adv, within & losses.misclassified(logits_fn(adv), labels)
