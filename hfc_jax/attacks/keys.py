"""Per-image randomness that does not depend on how a batch is split over devices.

Each image's key is fold_in(batch key, global row index): image i draws the same noise
whether the batch runs on one device or is sharded over eight, and whatever the other
rows are. Draws are made per image under `jax.vmap`.
"""

import jax
import jax.numpy as jnp


def image_keys(key: jax.Array, n: int) -> jax.Array:
  """(n,) keys: fold_in(key, i) for the rows i = 0 .. n-1 of the (global) batch."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))


def fold_all(keys: jax.Array, data) -> jax.Array:
  """fold_in(k, data) for every key of (n,) `keys` (data: an int or traced scalar)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def uniform(keys: jax.Array, shape: tuple[int, ...], minval=0.0, maxval=1.0) -> jax.Array:
  """(n,) + shape float32 uniform draws, row i from keys[i]."""
  return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, minval, maxval))(keys)


def normal(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """(n,) + shape float32 standard normal draws, row i from keys[i]."""
  return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def randint(keys: jax.Array, shape: tuple[int, ...], minval, maxval) -> jax.Array:
  """(n,) + shape int32 draws in [minval, maxval), row i from keys[i]; the bounds may
  be traced scalars."""
  return jax.vmap(lambda k: jax.random.randint(k, shape, minval, maxval))(keys)


def sign(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """(n,) + shape float32 random signs (+1 or -1 with probability 1/2), row i from
  keys[i]."""
  return jax.vmap(lambda k: jnp.where(jax.random.bernoulli(k, 0.5, shape), 1.0, -1.0)
                  )(keys).astype(jnp.float32)
