"""Square Attack: a score-based random search, L-inf and L2, on the margin loss.

Written from Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020 (section 3, Algorithm 1;
L-inf: section 3.1 / Algorithm 2, L2: section 3.2 / Algorithm 3). It uses only the
logits, never a gradient, so gradient masking does not stop it.

Random search: start from x_best (L-inf: vertical stripes, delta = +-eps per column and
channel; L2: a grid of "pseudo-Gaussian" squares with random signs, scaled to norm
eps); each of the remaining n_queries - 1 iterations proposes a change inside a random
square window of side s and keeps it only if the margin loss z_y - max_{i != y} z_i
falls. An image is no longer changed once it is misclassified.

  L-inf: the window is set to +-eps, one random sign per channel.
  L2:    windows W1, W2; per channel the mass of W2 moves into W1 along
         rho eta* + nu_W1 / ||nu_W1|| (eta* the normalised pseudo-Gaussian square of
         eq. 7 with a random sign rho), keeping ||nu||_2 = eps before clipping.

The square's area shrinks with the schedule p of the paper (Appendix: p_init halved at
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, a schedule made for 10,000
queries): s = round(sqrt(p H W)), clipped to [1, min(H, W) - 1]. AutoAttack runs it
unscaled on its 5,000-query budget (its `resc_schedule=False`), and so does this by
default; `rescale=True` stretches it over `n_queries`.
Defaults as in AutoAttack: p_init = 0.8 (L-inf and L2), n_queries = 5,000.

Simplification: the reference resamples a window that would not change the image; here
such a query is spent. Randomness: image i at iteration q draws from
fold_in(fold_in(key, i), q) (`keys.image_keys`), so results do not depend on the
device split. Everything is one rolled `lax.fori_loop`; per-image windows are masks.
"""


import jax
import jax.numpy as jnp
import numpy as np

from hfc_jax.attacks import keys as keys_lib
from hfc_jax.attacks import losses
from hfc_jax.attacks.apgd import check_norm, project
from hfc_jax.attacks.pgd import LogitsFn, _l2_norm, _per_image

# The iterations (of 10,000) after which p halves (Andriushchenko et al. 2020).
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i, n_queries: int, p_init: float, rescale: bool = False) -> jax.Array:
  """The fraction p of pixels the window covers at iteration i (int or traced): p_init
  halved once for each entry of _SCHEDULE below i (rescale: below i * 10000 /
  n_queries)."""
  it = jnp.asarray(i, jnp.int32)
  if rescale:
    it = (it * 10000) // n_queries
  halvings = jnp.sum(it > jnp.asarray(_SCHEDULE, jnp.int32))
  return p_init * 0.5 ** halvings.astype(jnp.float32)


def window_side(p, height: int, width: int) -> jax.Array:
  """s = round(sqrt(p H W)) clipped to [1, max(min(H, W) - 1, 1)]: int32 scalar."""
  s = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  return jnp.clip(s, 1, max(min(height, width) - 1, 1))


def _window(keys: jax.Array, side, height: int, width: int):
  """Per image a random s x s window: (N, H, W, 1) float32 mask and the (N,) row and
  column of its top-left corner."""
  row = keys_lib.randint(keys_lib.fold_all(keys, 0), (), 0, height - side + 1)
  col = keys_lib.randint(keys_lib.fold_all(keys, 1), (), 0, width - side + 1)
  rows, cols = jnp.arange(height), jnp.arange(width)
  in_rows = (rows[None] >= row[:, None]) & (rows[None] < row[:, None] + side)
  in_cols = (cols[None] >= col[:, None]) & (cols[None] < col[:, None] + side)
  mask = (in_rows[:, :, None] & in_cols[:, None, :]).astype(jnp.float32)
  return mask[..., None], row, col


def _inverse_square_sums(n: int) -> jax.Array:
  """C[m] = sum_{j=1}^{m} 1 / j^2 for m = 0 .. n: (n + 1,) float32."""
  return jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]),
                     jnp.float32)


def _pseudo_gaussian(side, row, col, height: int, width: int) -> jax.Array:
  """The square of eq. 7 of the paper placed at (row, col): at offset (a, b) inside the
  window, with n = floor(s / 2) and d = max(|a - n|, |b - n|),
  eta = sum_{k=0}^{n - d} 1 / (n + 1 - k)^2 = C[n + 1] - C[d]; 0 outside.
  Returns (N, H, W, 1) float32 (not normalised)."""
  sums = _inverse_square_sums(max(height, width) + 2)
  n = side // 2
  a = jnp.arange(height)[None, :] - row[:, None]  # (N, H)
  b = jnp.arange(width)[None, :] - col[:, None]   # (N, W)
  inside = ((a >= 0) & (a < side))[:, :, None] & ((b >= 0) & (b < side))[:, None, :]
  d = jnp.maximum(jnp.abs(a - n)[:, :, None], jnp.abs(b - n)[:, None, :])
  eta = sums[n + 1] - sums[jnp.clip(d, 0, n + 1)]
  return jnp.where(inside, eta, 0.0)[..., None]


def _l2_init(keys, x, eps):
  """A grid of up to 5 x 5 pseudo-Gaussian squares of side max(H // 5, 1), a random
  sign per square and channel, scaled to L2 norm eps (section 3.2)."""
  _, height, width, channels = x.shape
  side = max(min(height, width) // 5, 1)
  per_row, per_col = min(5, height // side), min(5, width // side)
  sums = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, side + 2) ** 2)])
  half = side // 2
  offs = np.arange(side)
  d = np.maximum(np.abs(offs - half)[:, None], np.abs(offs - half)[None, :])
  square = sums[half + 1] - sums[d]
  pattern = np.zeros((height, width), np.float32)
  block = np.full((height, width), -1, np.int32)
  for i in range(per_row):
    for j in range(per_col):
      pattern[i * side:(i + 1) * side, j * side:(j + 1) * side] = square
      block[i * side:(i + 1) * side, j * side:(j + 1) * side] = i * per_col + j
  signs = keys_lib.sign(keys, (per_row * per_col, channels))  # (N, blocks, C)
  gathered = signs[:, np.maximum(block, 0)]  # (N, H, W, C)
  delta = jnp.where(jnp.asarray(block >= 0)[None, :, :, None], gathered, 0.0)
  delta = delta * jnp.asarray(pattern)[None, :, :, None]
  delta = delta / jnp.maximum(_l2_norm(delta), 1e-12) * _per_image(eps, x)
  return jnp.clip(x + delta, 0.0, 1.0)


def _channel_norm(v: jax.Array) -> jax.Array:
  """Per image and channel L2 norm over H, W: (N, 1, 1, C)."""
  return jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))


def _l2_proposal(keys, x, x_best, eps, side):
  """Algorithm 3: move the perturbation's mass of window W2 into window W1."""
  _, height, width, channels = x.shape
  nu = x_best - x
  m1, row, col = _window(keys_lib.fold_all(keys, 0), side, height, width)
  m2, _, _ = _window(keys_lib.fold_all(keys, 1), side, height, width)
  union = jnp.maximum(m1, m2)
  eta = _pseudo_gaussian(side, row, col, height, width)
  eta = eta / jnp.maximum(_channel_norm(eta), 1e-12)
  rho = keys_lib.sign(keys_lib.fold_all(keys, 2), (1, 1, channels))
  eps = _per_image(eps, x)
  unused = jnp.maximum(eps * eps - jnp.sum(nu * nu, axis=(1, 2, 3), keepdims=True), 0.0)
  nu_w1 = nu * m1
  temp = rho * eta + nu_w1 / jnp.maximum(_channel_norm(nu_w1), 1e-12)
  available = jnp.sqrt(_channel_norm(nu * union) ** 2 + unused / channels)
  new_w1 = temp / jnp.maximum(_channel_norm(temp), 1e-12) * available
  return jnp.clip(x + nu * (1.0 - union) + m1 * new_w1, 0.0, 1.0)


def _linf_proposal(keys, x, x_best, eps, side):
  """Algorithm 2: set a random s x s window to +-eps, one sign per channel."""
  _, height, width, channels = x.shape
  mask, _, _ = _window(keys_lib.fold_all(keys, 0), side, height, width)
  signs = keys_lib.sign(keys_lib.fold_all(keys, 1), (1, 1, channels))
  delta = jnp.where(mask > 0, signs * _per_image(eps, x), x_best - x)
  return jnp.clip(x + delta, 0.0, 1.0)


def square_attack(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, eps,
                  key: jax.Array, norm: str = "linf", n_queries: int = 5000,
                  p_init: float = 0.8, return_fooled: bool = False):
  """Square Attack (module docstring).

  Args:
    logits_fn: images (N, H, W, C) -> logits (N, K); only its values are used.
    images: (N, H, W, C) float in [0, 1]; labels: (N,) int.
    eps: radius, float or (N,), [0, 1] image units.
    key: PRNG key of the batch; norm: 'linf' or 'l2'.
    n_queries: forward passes per image, the initialisation included (Python int).
    p_init: the initial fraction of the image a square covers.
    return_fooled: also return the (N,) bool mask of misclassified results.

  Returns:
    (N, H, W, C) float32 adversarial images, exactly in the eps-ball and the box
    (and the fooled mask if asked).
  """
  check_norm(norm)
  x = jnp.asarray(images, jnp.float32)
  n, height, width, channels = x.shape
  image_keys = keys_lib.image_keys(key, n)
  if norm == "linf":
    stripes = keys_lib.sign(keys_lib.fold_all(image_keys, 0), (1, width, channels))
    x_best = jnp.clip(x + stripes * _per_image(eps, x), 0.0, 1.0)
    propose = _linf_proposal
  else:
    x_best = _l2_init(keys_lib.fold_all(image_keys, 0), x, eps)
    propose = _l2_proposal
  x_best = project(norm, x_best, x, eps)
  logits = logits_fn(x_best)
  init = (x_best, losses.margin(logits, labels), losses.misclassified(logits, labels))

  def body(i, carry):
    x_best, margin_best, fooled = carry
    side = window_side(p_schedule(i, n_queries, p_init), height, width)
    candidate = project(norm, propose(keys_lib.fold_all(image_keys, i), x, x_best, eps,
                                      side), x, eps)
    logits = logits_fn(candidate)
    margin = losses.margin(logits, labels)
    take = ~fooled & (margin < margin_best)
    x_best = jnp.where(_per_image(take, x, bool), candidate, x_best)
    return (x_best, jnp.where(take, margin, margin_best),
            fooled | (take & losses.misclassified(logits, labels)))

  x_best, _, fooled = jax.lax.fori_loop(1, max(n_queries, 1), body, init)
  return (x_best, fooled) if return_fooled else x_best
