"""The per-epoch evaluation: clean, LFC and HFC accuracy at every radius, one pass.

Each batch is split once (one forward FFT, one inverse FFT per radius, see
`frequency.split_many`) and the 1 + 2R variants are scored one after another by
`lax.map` inside one jitted function, each variant a batch of its own, so models that
normalise with batch statistics see each variant separately. With
`eval.bands`, B band-pass variants (`frequency.band_pass_many`, each band (r1, r2)
keeping r1 <= dist < r2) follow the HFC ones: 1 + 2R + B variants.
"""

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfc_jax import frequency, sharding
from hfc_jax.data import pipeline

PyTree = Any


def variant_names(radii: Sequence[float], bands: Sequence[tuple[float, float]] = ()
                  ) -> list[str]:
  """['clean', 'lfc_4', 'lfc_8', ..., 'hfc_4', 'hfc_8', ..., 'band_0_4', 'band_4_8',
  ...] in evaluation order."""
  return (["clean"] + [f"lfc_{r:g}" for r in radii] + [f"hfc_{r:g}" for r in radii]
          + [band_name(r1, r2) for r1, r2 in bands])


def band_name(r1: float, r2: float) -> str:
  """The metric name of band (r1, r2): 'band_4_8'."""
  return f"band_{r1:g}_{r2:g}"


def bands_of(eval_config) -> tuple[tuple[float, float], ...]:
  """`eval.bands` of a config section as float pairs (() when the field is absent, as
  in configs written before it existed)."""
  return tuple((float(r1), float(r2)) for r1, r2 in eval_config.bands)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 (or float) NHWC images -> float32 in [0, 1]."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def make_variants(x: jax.Array, radii: Sequence[float], *, inclusive: bool,
                  rescale: str, bands: Sequence[tuple[float, float]] = ()) -> jax.Array:
  """Stacks the clean images, their LFC and HFC at each radius and their band-pass
  images of each band (`rescale` applied to all but the clean): (1 + 2R + B, N, H, W, C)."""
  parts = [x[None]]
  if radii:
    parts += frequency.split_many(x, radii, inclusive=inclusive, rescale=rescale)
  if bands:
    parts.append(frequency.band_pass_many(x, bands, inclusive=inclusive, rescale=rescale))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def eval_step(params, model_state, images, labels, mask, *, logits_fn, variants_fn):
  """Scores one (padded) batch.

  Args:
    params, model_state: the model's variables (pure dicts).
    images: (N, H, W, C) uint8 or float in [0, 1]; labels: (N,) int; mask: (N,) 0/1.
    logits_fn: (params, model_state, images, mask=...) -> (N, K) logits, evaluation
      mode; the mask keeps padding rows out of batch statistics (`Functional.logits`).
    variants_fn: float images (N, H, W, C) -> (V, N, H, W, C), e.g. `make_variants`.

  Returns:
    {'correct': (V,) float32 counts per variant, 'loss': clean loss sum,
     'count': number of real images}.

  The variants are scored one after another by `lax.map` rather than `vmap`: a
  vmapped conv (and a batch-statistic norm inside it) lowered to a batched layout that
  ran 5x slower on XLA:CPU, and 20x slower on 8 devices.
  """
  x = to_float(images)
  variants = variants_fn(x)
  logits = jax.lax.map(lambda v: logits_fn(params, model_state, v, mask=mask), variants)
  hits = (jnp.argmax(logits, axis=-1) == labels[None]).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits[0], labels)
  return {"correct": jnp.sum(hits * mask[None], axis=1),
          "loss": jnp.sum(loss * mask), "count": jnp.sum(mask)}


def sharded_variants_fn(mesh, radii: Sequence[float], *, inclusive: bool, rescale: str,
                        bands: Sequence[tuple[float, float]] = ()):
  """`make_variants` run per device with `shard_map`: each device splits its own
  images. Left to the SPMD partitioner, the FFT of a batch-sharded array was gathered
  (20x slower on 8 devices)."""
  fn = functools.partial(make_variants, radii=tuple(radii), inclusive=inclusive,
                         rescale=rescale, bands=tuple(tuple(b) for b in bands))
  spec = jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  out_spec = jax.sharding.PartitionSpec(None, sharding.DATA_AXIS)
  return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=out_spec)


def hits(params, model_state, x, labels, mask, *, logits_fn):
  """Correctly classified images of a (padded) batch, counted over the real rows
  (`mask` 1): float32 scalar. The mask also keeps padding out of batch statistics."""
  pred = jnp.argmax(logits_fn(params, model_state, x, mask=mask), axis=-1)
  return jnp.sum((pred == labels).astype(jnp.float32) * mask)


def make_eval_fn(logits_fn, mesh, *, radii, inclusive: bool, rescale: str,
                 bands: Sequence[tuple[float, float]] = ()):
  """Jits `eval_step` for a mesh: replicated variables, batch-sharded inputs; the
  variants are those of `variant_names(radii, bands)`."""
  variants_fn = sharded_variants_fn(mesh, radii, inclusive=inclusive, rescale=rescale,
                                    bands=bands)
  step = functools.partial(eval_step, logits_fn=logits_fn, variants_fn=variants_fn)
  return jax.jit(step, out_shardings=sharding.replicated(mesh))


def eval_batches(x: np.ndarray, y: np.ndarray, *, mesh, batch_size: int,
                 field: str = "eval.batch_size"):
  """Yields (images, labels int32, mask float32) global arrays, sharded over `mesh`,
  of `batch_size` real images each (`pipeline.eval_batches` in the padded layout of
  `sharding.padded_batch_size`); every image of x (N, H, W, C) comes once, in order."""
  padded = sharding.padded_batch_size(field, batch_size, mesh)
  for images, labels, mask in pipeline.eval_batches(
      x, y, batch_size=batch_size, padded_size=padded, process_index=jax.process_index(),
      process_count=jax.process_count()):
    yield sharding.put_batch(mesh, images, labels.astype(np.int32), mask)


def accumulate(batch_fn, batches: Iterable[tuple]) -> PyTree:
  """The sum over `batches` of `batch_fn(*batch)`, added up on device in batch order and
  fetched to the host once, at the end.

  Args:
    batch_fn: a jitted function of one batch's arguments returning a pytree of per-batch
      sums and counts (float32 arrays; e.g. {'correct': (V,), 'count': ()} of
      `eval_step`, which leaves padding rows out with the batch's mask).
    batches: tuples of `batch_fn`'s arguments, e.g. (images, labels, mask) of
      `eval_batches`; a generator is consumed as the sums are dispatched.

  Returns:
    The summed pytree as numpy arrays (same structure and shapes as one batch's).
    Raises ValueError when there are no batches.
  """
  totals = None
  for batch in batches:
    out = sharding.one_at_a_time_on_cpu(batch_fn(*batch))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError("accumulate: no batches to sum.")
  return jax.device_get(totals)


def variant_accuracies(eval_fn, params, model_state, x: np.ndarray, y: np.ndarray, *,
                       mesh, batch_size: int, radii: Sequence[float],
                       bands: Sequence[tuple[float, float]] = ()) -> dict[str, float]:
  """Accuracy of every variant and the clean loss over (x, y), summed on device and
  fetched once at the end. `batch_size` real images per batch, on any mesh; `radii`
  and `bands` those `eval_fn` was made with.
  Returns {'clean': acc, 'lfc_4': acc, ..., 'band_4_8': acc, ..., 'loss': mean}."""
  totals = accumulate(functools.partial(eval_fn, params, model_state),
                      eval_batches(x, y, mesh=mesh, batch_size=batch_size))
  count = max(float(totals["count"]), 1.0)
  result = {name: float(c) / count
            for name, c in zip(variant_names(radii, bands), totals["correct"], strict=True)}
  result["loss"] = float(totals["loss"]) / count
  return result
