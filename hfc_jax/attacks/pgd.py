"""Batched white-box attacks: FGSM, L-inf PGD, L2 PGD and a minimal-eps search
(Wang et al., CVPR 2020, section 6: adversarial attack and defence).

The classifier is any `logits_fn(images) -> logits`, mapping NHWC float32 images in
[0, 1] to float32 logits (N, K); the caller closes over the variables, e.g.
`functools.partial(functional.logits, params, model_state)` (evaluation mode).
Gradients are taken with respect to the images only, of the summed per-example
cross-entropy, so each image gets its own input gradient (as long as the model treats
the images of a batch independently; the 'paper_bn' norm does not, and its attack is
then one on the whole batch).

Everything here is a pure jnp function meant to be called under `jax.jit`, with the
variables as traced arguments:

  attack = jax.jit(lambda p, s, x, y, key: attacks.pgd_linf(
      functools.partial(functional.logits, p, s), x, y, eps=0.03, step_size=0.003,
      steps=10, key=key))

The whole attack is then one compiled program, with no host round-trip per step.
`steps` and `restarts` are Python ints (static); `eps` and `step_size` may be floats or
per-image (N,) arrays, and are used in float32.

Loops: `unroll=True` writes the steps out in Python (one long program, compile time
grows with `steps`); `unroll=False` uses `jax.lax.fori_loop` (compile time flat in
`steps`). `unroll=None` picks per backend: unrolled on CPU, where XLA ran a rolled PGD
loop several times slower (measured on 2 CPU cores: 3.4x for ResNet-18 PGD-7; 2.2x for the small CNN,
see `choose_unroll`), and `fori_loop` on GPU/TPU.

Constraints hold exactly in float32: every returned L-inf image satisfies
0 <= adv <= 1 and |adv - x| <= eps as evaluated elementwise in float32 (see
`project_linf`); L2 images satisfy the box exactly and ||adv - x||_2 <= eps up to the
float32 rounding of x + delta (at most 6e-8 per element: measured 3e-8 absolute for
32x32x3 images). The only randomness is the explicit `key`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from hfc_jax import errors

ATTACKS = ("fgsm", "pgd", "pgd_l2")

LogitsFn = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
def check_attack_config(name: str, eps: float, step_size: float, steps: int,
                        restarts: int, *, random_start: bool | None = None,
                        section: str = "attack") -> None:
  """Raises a one-line HfcError for a bad attack config, naming the fields
  `<section>.name`, `<section>.eps`, ... (e.g. section 'adv' for config.adv).

  eps and step_size must lie in [0, 1] (image units), steps be an integer >= 0 and
  restarts an integer >= 1; restarts > 1 needs random_start (when it is given).
  """
  errors.check_choice(f"{section}.name", name, ATTACKS)
  errors.check_range(f"{section}.eps", eps, 0.0, 1.0)
  errors.check_range(f"{section}.step_size", step_size, 0.0, 1.0)
  errors.check_range(f"{section}.steps", steps, 0, None, integer=True)
  errors.check_range(f"{section}.restarts", restarts, 1, None, integer=True)
  if restarts > 1 and random_start is False:
    raise errors.HfcError(
        f"{section}.restarts={restarts!r} needs {section}.random_start=True; "
        "without it every restart gives the same image.")


# ---------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------
def choose_unroll(unroll: bool | None) -> bool:
  """`unroll`, or for None: True on the CPU backend, False on GPU/TPU.

  Measured on XLA:CPU (2 cores), small_cnn, batch 128 of 32x32x3, L-inf PGD:
  10 steps ran in 1.5 s unrolled and 3.3 s as a fori_loop (2.2x; 1.9x with the
  'paper_bn' norm), 30 steps in 4.5 s and 6.6-8.7 s. Compiling took 4.1 s
  unrolled and 3.5 s rolled at 10 steps, 6.8 s and 3.5 s at 30 steps.
  On one H200 (same model and batch, random start): 10 steps ran in 2.4 ms unrolled
  and 2.6 ms rolled, 30 steps in 6.5 and 7.0 ms (9.8 and 9.5 ms with 'paper_bn'),
  but compiling took 2.3-7.8 s unrolled against 0.4-0.9 s rolled.
  """
  if unroll is None:
    return jax.default_backend() == "cpu"
  return bool(unroll)


def _repeat(body: Callable, start: int, stop: int, init, unroll: bool):
  """`body(i, carry)` for i in [start, stop): a Python loop or a `lax.fori_loop`."""
  if not unroll:
    return jax.lax.fori_loop(start, stop, body, init)
  for i in range(start, stop):
    init = body(i, init)
  return init


def _per_image(value, x: jax.Array, dtype=jnp.float32) -> jax.Array:
  """A scalar or (N,) value as `dtype`, broadcastable against (N, H, W, C) `x`."""
  value = jnp.asarray(value, dtype)
  return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def _loss_and_fooled(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """Per-example cross-entropy (N,) float32 and misclassification (N,) bool."""
  logits = logits_fn(images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return loss, jnp.argmax(logits, axis=-1) != labels


def input_gradient(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array) -> jax.Array:
  """d(sum of per-example cross-entropy)/d(images): (N, H, W, C) float32."""
  total_loss = lambda x: _loss_and_fooled(logits_fn, x, labels)[0].sum()
  return jax.grad(total_loss)(images)


def project_linf(adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """The point of the [0, 1] box within L-inf distance eps of `x` nearest to `adv`.

  Exact in float32: clipping to [max(x - eps, 0), min(x + eps, 1)] may leave
  fl(|adv - x|) > eps where x + eps was rounded up (or x - eps down); those elements
  (only ones on the bound) are moved one float towards `x`, which is enough because the
  rounding error of x + eps is at most half a float spacing. Needs x in [0, 1].

  Args:
    adv, x: (N, H, W, C) float32.
    eps: float or (N,) radius.
  """
  eps = _per_image(eps, x)
  adv = jnp.clip(adv, jnp.maximum(x - eps, 0.0), jnp.minimum(x + eps, 1.0))
  return jnp.where(jnp.abs(adv - x) > eps, jnp.nextafter(adv, x), adv)


def _l2_norm(v: jax.Array) -> jax.Array:
  """Per-image L2 norm of (N, ...) -> (N, 1, ..., 1)."""
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def project_l2(adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Scales adv - x into the per-image L2 ball of radius eps, then clips to [0, 1].

  Clipping only moves elements towards x (which lies in the box), so the norm stays
  within the ball (up to float rounding). eps: float or (N,).
  """
  delta = adv - x
  norm = _l2_norm(delta)
  scale = jnp.minimum(1.0, _per_image(eps, x) / jnp.maximum(norm, 1e-12))
  return jnp.clip(x + delta * scale, 0.0, 1.0)


def _linf_step(adv, grad, step_size):
  return adv + step_size * jnp.sign(grad)


def _l2_step(adv, grad, step_size):
  return adv + step_size * grad / jnp.maximum(_l2_norm(grad), 1e-12)


def _linf_start(key, x, eps):
  """Uniform noise in the L-inf ball."""
  return x + jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0) * eps


def _l2_start(key, x, eps):
  """A uniformly random direction at a radius drawn uniformly from [0, eps]."""
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, x.shape, jnp.float32)
  radius = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1)) * eps
  return x + direction / jnp.maximum(_l2_norm(direction), 1e-12) * radius


# ---------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------
def fgsm(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps) -> jax.Array:
  """Fast gradient sign method: x + eps * sign(grad CE), projected.

  Args:
    logits_fn: images (N, H, W, C) -> logits (N, K).
    images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
    eps: L-inf radius, float or (N,), in [0, 1] units.

  Returns:
    (N, H, W, C) float32 adversarial images.
  """
  x = jnp.asarray(images, jnp.float32)
  grad = input_gradient(logits_fn, x, labels)
  return project_linf(_linf_step(x, grad, _per_image(eps, x)), x, eps)


def _pgd_run(logits_fn, x, labels, key, *, eps, step_size, steps, random_start,
             unroll, step_fn, start_fn, project_fn) -> jax.Array:
  """One PGD run from x (or a random start): `steps` of step, project."""
  eps, step_size = _per_image(eps, x), _per_image(step_size, x)
  adv = project_fn(start_fn(key, x, eps), x, eps) if random_start else x

  def body(_, adv):
    grad = input_gradient(logits_fn, adv, labels)
    return project_fn(step_fn(adv, grad, step_size), x, eps)
  return _repeat(body, 0, steps, adv, unroll)


def _best_of_restarts(run: Callable, logits_fn, labels, key, restarts: int,
                      unroll: bool) -> jax.Array:
  """Runs `run(key)` and `run(fold_in(key, r))` for 0 < r < restarts; keeps per example
  the first image that is misclassified, else the one of highest loss."""
  adv = run(key)
  loss, fooled = _loss_and_fooled(logits_fn, adv, labels)

  def body(r, best):
    best_adv, best_loss, best_fooled = best
    adv = run(jax.random.fold_in(key, r))
    loss, fooled = _loss_and_fooled(logits_fn, adv, labels)
    take = ~best_fooled & (fooled | (loss > best_loss))
    return (jnp.where(_per_image(take, adv, bool), adv, best_adv),
            jnp.where(take, loss, best_loss), best_fooled | fooled)
  return _repeat(body, 1, restarts, (adv, loss, fooled), unroll)[0]


def _pgd(logits_fn, images, labels, *, eps, step_size, steps, key, random_start,
         restarts, unroll, step_fn, start_fn, project_fn) -> jax.Array:
  """PGD with optional random start and restarts; shared by the L-inf and L2 attacks."""
  if restarts > 1 and not random_start:
    raise errors.HfcError(f"attack.restarts={restarts!r} needs attack.random_start=True.")
  if random_start and key is None:
    raise ValueError("random_start=True needs a PRNG key.")
  x = jnp.asarray(images, jnp.float32)
  unroll = choose_unroll(unroll)
  run = functools.partial(
      _pgd_run, logits_fn, x, labels, eps=eps, step_size=step_size, steps=steps,
      random_start=random_start, unroll=unroll, step_fn=step_fn, start_fn=start_fn,
      project_fn=project_fn)
  if restarts == 1:
    return run(key)  # no extra forward pass to score the one run
  return _best_of_restarts(run, logits_fn, labels, key, restarts, unroll)


def pgd_linf(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
             step_size, steps: int, key: jax.Array | None = None,
             random_start: bool = False, restarts: int = 1,
             unroll: bool | None = None) -> jax.Array:
  """L-inf PGD (Madry et al.): sign-gradient ascent on cross-entropy, projected after
  every step onto the eps-ball around `images` and the [0, 1] box.

  Args:
    logits_fn: images (N, H, W, C) -> logits (N, K).
    images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
    eps, step_size: float or (N,), [0, 1] image units.
    steps: number of gradient steps (Python int; 0 returns the start point).
    key: PRNG key; needed only with random_start.
    random_start: start from uniform noise in the eps-ball instead of the image.
    restarts: independent random starts (Python int; > 1 needs random_start); keeps per
      example the first adversarial image that misclassifies, else the one of highest
      loss. Run 0 uses `key` (so it is the restarts=1 attack), run r fold_in(key, r).
    unroll: Python loop (True), `lax.fori_loop` (False), or per backend (None).

  Returns:
    (N, H, W, C) float32 adversarial images.
  """
  return _pgd(logits_fn, images, labels, eps=eps, step_size=step_size, steps=steps,
              key=key, random_start=random_start, restarts=restarts, unroll=unroll,
              step_fn=_linf_step, start_fn=_linf_start, project_fn=project_linf)


def pgd_l2(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
           step_size, steps: int, key: jax.Array | None = None,
           random_start: bool = False, restarts: int = 1,
           unroll: bool | None = None) -> jax.Array:
  """L2 PGD: steps of `step_size` along the per-image L2-normalised gradient, each
  followed by projection onto the per-image L2 ball of radius eps and the [0, 1] box.

  Arguments as for `pgd_linf`; eps and step_size are L2 lengths in [0, 1] pixel units,
  and the random start is a uniform direction at a radius uniform in [0, eps].
  """
  return _pgd(logits_fn, images, labels, eps=eps, step_size=step_size, steps=steps,
              key=key, random_start=random_start, restarts=restarts, unroll=unroll,
              step_fn=_l2_step, start_fn=_l2_start, project_fn=project_l2)


def attack(name: str, logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *,
           eps, step_size, steps: int, key: jax.Array | None = None,
           random_start: bool = False, restarts: int = 1,
           unroll: bool | None = None) -> jax.Array:
  """Runs attack `name` (one of ATTACKS); FGSM ignores the step, key and loop arguments."""
  errors.check_choice("attack.name", name, ATTACKS)
  if name == "fgsm":
    return fgsm(logits_fn, images, labels, eps=eps)
  fn = pgd_linf if name == "pgd" else pgd_l2
  return fn(logits_fn, images, labels, eps=eps, step_size=step_size, steps=steps, key=key,
            random_start=random_start, restarts=restarts, unroll=unroll)


# ---------------------------------------------------------------------------
# Minimal perturbation
# ---------------------------------------------------------------------------
def eval_attack(name: str, logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *,
                eps, steps: int, key: jax.Array, restarts: int = 1) -> jax.Array:
  """The attacks every evaluation uses (per-epoch check, robust_eval, kernels, spectra):
  FGSM, or PGD with `steps` steps of eps/4 from a random start (no start at steps 0).
  `eps` may be a traced scalar."""
  return attack(name, logits_fn, images, labels, eps=eps, step_size=eps / 4, steps=steps,
                key=key, random_start=name != "fgsm" and steps > 0, restarts=restarts)


def minimal_linf_eps(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *,
                     eps_max: float, search_steps: int, pgd_steps: int,
                     key: jax.Array | None = None, rel_step: float = 0.25,
                     random_start: bool = False, unroll: bool | None = None) -> jax.Array:
  """Per image, the smallest L-inf eps at which PGD misclassifies it, by bisection.

  All images are bisected in parallel on [0, eps_max]: each of `search_steps` rounds
  runs one batched PGD (`pgd_steps` steps of rel_step * eps, no random start by
  default) at every image's own midpoint. The result is the smallest eps tried at which
  the attack succeeded, within eps_max / 2**search_steps of the bisection's boundary
  (PGD success need not be monotone in eps; bisection assumes it is). Running
  `pgd_linf` at the result, with the same steps, succeeds again (it is deterministic).

  Args:
    eps_max: upper end of the search, [0, 1] units.
    search_steps: bisection rounds (Python int; a `lax.fori_loop` over them).
    pgd_steps: PGD steps per trial (Python int).
    key: used only with random_start (the same key in every round).
    unroll: the loop choice for the PGD steps, as in `pgd_linf`.

  Returns:
    (N,) float32: 0 for images misclassified already, +inf for images not broken at
    eps_max, else the eps found.
  """
  x = jnp.asarray(images, jnp.float32)
  fooled_at = lambda eps: _loss_and_fooled(logits_fn, pgd_linf(
      logits_fn, x, labels, eps=eps, step_size=rel_step * eps, steps=pgd_steps, key=key,
      random_start=random_start, unroll=unroll), labels)[1]
  n = x.shape[0]
  hi = jnp.full((n,), eps_max, jnp.float32)
  breakable = fooled_at(hi)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    fooled = fooled_at(mid)
    return jnp.where(fooled, lo, mid), jnp.where(fooled, mid, hi)
  _, hi = jax.lax.fori_loop(0, search_steps, body, (jnp.zeros((n,), jnp.float32), hi))
  clean_fooled = _loss_and_fooled(logits_fn, x, labels)[1]
  return jnp.where(clean_fooled, 0.0, jnp.where(breakable, hi, jnp.inf))
