"""Models picked by name: `create('preact_resnet32', num_classes=10, in_channels=3)`.

Every model is an `nnx.Module` built as
`Model(*, num_classes, in_channels, norm, dropout, input_filter, filter_radius, dtype, rngs)`
and called as `model(x, train=..., rngs=..., mask=...)`, mapping NHWC float32 images in
[0, 1] (any size, any channel count) to float32 logits (N, num_classes). `rngs` is only
needed for dropout with train=True; `mask` (N,) float, 1 real and 0 padding rows, keeps the
padding of an evaluation batch out of the batch statistics ('batch_stats'). Models store
no `nnx.Rngs`, so `nnx.split(model, nnx.Param, nnx.BatchStat)` gives exactly the
parameters and the running statistics.

The first conv layer, the one the paper analyses and smooths, is the attribute
`first_conv` of every model: its HWIO kernel is `params['first_conv']['kernel']`
(shape (3, 3, C, 16) for preact_resnet32, (3, 3, C, 64) for resnet18 and (3, 3, C, 16)
for small_cnn); `first_conv_kernel` reads it from a model, a State or a pure dict.

Norms ('model.norm'): 'none' (the paper's vanilla), 'batch_stats' (the paper's BN: batch
statistics in train and eval, fixed gamma = 1, beta = 0, eps = 1e-3) and 'batchnorm'
(trainable scale/bias, running averages with momentum 0.9 used when train=False).
`dtype='bfloat16'` computes convs and dense layers in bfloat16; params stay float32.
"""

from typing import Any

import jax.numpy as jnp
from flax import nnx

from hfc_jax import errors
from hfc_jax.models import layers
from hfc_jax.models.preact_resnet import PreActResNet32
from hfc_jax.models.resnet import ResNet18
from hfc_jax.models.small_cnn import SmallCNN

MODELS = {"small_cnn": SmallCNN, "resnet18": ResNet18, "preact_resnet32": PreActResNet32}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create(name: str, *, num_classes: int, in_channels: int, norm: str = "none",
           dropout: float = 0.0, input_filter: str = "none", filter_radius: float = 0.0,
           dtype: str = "float32", seed: int = 0) -> nnx.Module:
  """Builds model `name` with parameters initialised from `seed`; bad values raise HfcError."""
  errors.check_choice("model.name", name, MODELS)
  errors.check_choice("model.norm", norm, layers.NORMS)
  errors.check_choice("model.input_filter", input_filter, layers.INPUT_FILTERS)
  errors.check_choice("model.dtype", dtype, DTYPES)
  errors.check_range("model.dropout", dropout, 0, 1)
  errors.check_range("model.filter_radius", filter_radius, 0)
  errors.check_range("model.num_classes", num_classes, 1, integer=True)
  errors.check_range("model.in_channels", in_channels, 1, integer=True)
  return MODELS[name](num_classes=num_classes, in_channels=in_channels, norm=norm,
                      dropout=dropout, input_filter=input_filter,
                      filter_radius=filter_radius, dtype=DTYPES[dtype],
                      rngs=nnx.Rngs(params=seed))


def from_config(model_config, *, num_classes: int, in_channels: int, seed: int = 0
                ) -> nnx.Module:
  """The model a config's `model` section names (see `create`)."""
  m = model_config
  return create(m.name, num_classes=num_classes, in_channels=in_channels, norm=m.norm,
                dropout=m.dropout, input_filter=m.input_filter,
                filter_radius=m.filter_radius, dtype=m.dtype, seed=seed)


def first_conv_kernel(params: Any) -> jnp.ndarray:
  """Returns the (3, 3, C, F) first-conv kernel of a model, its nnx.State or a pure dict."""
  if isinstance(params, nnx.Module):
    leaf = params.first_conv.kernel
  else:
    leaf = params["first_conv"]["kernel"]
  return jnp.asarray(leaf[...])
