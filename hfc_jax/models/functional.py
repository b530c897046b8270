"""A pure-function view of an NNX model, for `jax.jit`, `jax.grad` and attacks.

The train state holds parameters and BatchNorm statistics as plain nested dicts of
arrays (easy to shard, checkpoint and restore on a laptop); `apply` merges them with
the model's graph definition inside the traced function and calls the model.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Functional:
  """`graphdef` of one model architecture; hashable, so it can be a static argument."""
  graphdef: Any

  @classmethod
  def split(cls, model: nnx.Module) -> tuple["Functional", PyTree, PyTree]:
    """Returns (functional, params, model_state) with params/state as pure dicts."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return cls(graphdef), nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def apply(self, params: PyTree, model_state: PyTree, images: jax.Array, *,
            train: bool, dropout_key: jax.Array | None = None,
            mask: jax.Array | None = None,
            dropout_rate: jax.Array | None = None) -> tuple[jax.Array, PyTree]:
    """Runs the model on (N, H, W, C) float images.

    `dropout_rate`: a traced scalar replacing the model's `model.dropout` rate (one run's
    in a run-parallel group, `hfc_jax.stacked`); None keeps the model's own.

    `mask` (N,) float, 1 for real rows and 0 for padding rows: the batch-statistic norm
    takes its statistics over the real rows only, and the padding rows' logits carry no
    gradient, so a loss summed over the batch (an attack's) reaches the real rows exactly
    as without the padding.

    Returns:
      (logits float32 (N, classes), the updated model state: new BatchNorm
      running averages when `train`, else the state unchanged).
    """
    model = nnx.merge(self.graphdef, params, model_state)
    if dropout_rate is not None:
      model.dropout.rate = dropout_rate
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
    logits = model(images, train=train, rngs=rngs, mask=mask)
    if mask is not None:
      real = (mask > 0)[:, None]
      logits = jnp.where(real, logits, jax.lax.stop_gradient(logits))
    if not train:
      return logits, model_state
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return logits, nnx.to_pure_dict(rest)

  def logits(self, params: PyTree, model_state: PyTree, images: jax.Array,
             mask: jax.Array | None = None) -> jax.Array:
    """Evaluation-mode logits (BN running statistics, no dropout); `mask` as in `apply`."""
    return self.apply(params, model_state, images, train=False, mask=mask)[0]
