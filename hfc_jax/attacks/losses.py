"""Per-example attack losses on logits: cross-entropy, margin and the DLR losses.

DLR, the Difference of Logits Ratio (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020, section 3,
eq. 6 and the targeted variant eq. 7), with z the logits and pi the permutation
sorting them in decreasing order (z_pi1 >= z_pi2 >= ...):

  DLR(z, y)       = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)
  DLR-T(z, y, t)  = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

Both are invariant to shifting the logits and to scaling them by a positive factor
(up to the 1e-12), so the attack's step does not depend on the model's logit scale.
Higher is better for the attacker: DLR > 0 exactly when the image is misclassified.

Fewer classes: a rank past K is read as the smallest logit (z_pi3 = z_pi2 for K = 3 in
DLR; z_pi4 = z_pi3 for K = 3 in DLR-T). With K = 2 the denominator z_pi1 - z_pi2 would
be |z_y - z_other|, making DLR = -sign(margin), which has no gradient; there the
denominator is replaced by 1 (the loss is the plain margin, shift- but not
scale-invariant).

All functions map logits (N, K) float to (N,) float32.
"""

import jax
import jax.numpy as jnp
import optax

_TINY = 1e-12


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy (N,) of logits (N, K) and int labels (N,)."""
  return optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits, jnp.float32), labels)


def _true_logit(z: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]


def best_other_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """max_{i != y} z_i: (N,) float32."""
  z = jnp.asarray(logits, jnp.float32)
  is_true = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
  return jnp.max(jnp.where(is_true, -jnp.inf, z), axis=-1)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """z_y - max_{i != y} z_i (N,): negative means misclassified, positive correct (at 0,
  a tie, argmax's lowest-index rule decides: see `misclassified`)."""
  z = jnp.asarray(logits, jnp.float32)
  return _true_logit(z, labels) - best_other_logit(z, labels)


def misclassified(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """argmax(logits) != labels: (N,) bool. The success test of every attack here."""
  return jnp.argmax(logits, axis=-1) != labels


def _sorted_rank(z: jax.Array, rank: int) -> jax.Array:
  """The rank-th largest logit (1-based), ranks past K read as the smallest: (N,)."""
  k = z.shape[-1]
  return jnp.sort(z, axis=-1)[:, k - min(rank, k)]


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Untargeted DLR loss (N,) (module docstring): -(z_y - max_{i != y} z_i) /
  (z_pi1 - z_pi3 + 1e-12); K = 2 uses denominator 1."""
  z = jnp.asarray(logits, jnp.float32)
  if z.shape[-1] < 2:
    raise ValueError(f"DLR needs at least 2 classes, got {z.shape[-1]}.")
  if z.shape[-1] == 2:
    return -margin(z, labels)
  return -margin(z, labels) / (_sorted_rank(z, 1) - _sorted_rank(z, 3) + _TINY)


def dlr_targeted(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted DLR loss (N,) (module docstring): -(z_y - z_t) /
  (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12); K = 2 uses denominator 1."""
  z = jnp.asarray(logits, jnp.float32)
  if z.shape[-1] < 2:
    raise ValueError(f"DLR needs at least 2 classes, got {z.shape[-1]}.")
  num = -(_true_logit(z, labels) - _true_logit(z, targets))
  if z.shape[-1] == 2:
    return num
  den = _sorted_rank(z, 1) - 0.5 * (_sorted_rank(z, 3) + _sorted_rank(z, 4)) + _TINY
  return num / den


def target_classes(logits: jax.Array, labels: jax.Array, count: int) -> jax.Array:
  """The `count` highest-scoring classes other than the label, by decreasing logit:
  (N, count) int32; column j is the target of the j-th targeted run (APGD-T, FAB-T).
  Needs count <= K - 1."""
  z = jnp.asarray(logits, jnp.float32)
  k = z.shape[-1]
  if not 1 <= count <= k - 1:
    raise ValueError(f"count={count} target classes need 1 <= count <= K - 1 = {k - 1}.")
  is_true = jax.nn.one_hot(labels, k, dtype=bool)
  order = jnp.argsort(-jnp.where(is_true, -jnp.inf, z), axis=-1, stable=True)
  return order[:, :count].astype(jnp.int32)
