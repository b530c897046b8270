"""Models picked by name: `create('preact_resnet32', num_classes=10, in_channels=3)`.

Every model is an `nnx.Module` built as
`Model(*, num_classes, in_channels, norm, dropout, input_filter, filter_radius, dtype,
widths, input_mean, input_std, rngs)` (plus `image_size` for a model whose
`needs_image_size` is set, as plain_cnn's flattened head, and `depth`, `width_factor`
for one whose `takes_depth` is set, as wide_resnet) and called as
`model(x, train=..., rngs=..., mask=...)`,
mapping NHWC float32 images in [0, 1] (any size, any channel count) to float32 logits
(N, num_classes). `rngs` is only
needed for dropout with train=True; `mask` (N,) float, 1 real and 0 padding rows, keeps the
padding of an evaluation batch out of the batch statistics ('paper_bn'). Models store
no `nnx.Rngs`, so `nnx.split(model, nnx.Param, nnx.BatchStat)` gives exactly the
parameters and the running statistics.

The first conv layer, the one the paper analyses and smooths, is the attribute
`first_conv` of every model: its HWIO kernel is `params['first_conv']['kernel']`
(shape (3, 3, C, 16) for preact_resnet32 and wide_resnet, (3, 3, C, 64) for resnet18
and preact_resnet18, (3, 3, C, 16) for small_cnn, (3, 3, C, 32) for plain_cnn and
(7, 7, C, 64) for the torchvision ResNets); `first_conv_kernel` reads it from a model,
a State or a pure dict.

Models whose weights come from PyTorch (`hfc_jax.importing`): wide_resnet and
preact_resnet18 (RobustBench's), resnet18_torch (resnet18 with PyTorch's padding, the
common PyTorch CIFAR ResNet-18), torchvision_resnet18 and torchvision_resnet50. Their
inputs are [0, 1] images like every model's; `input_mean` / `input_std`
(`model.input_mean`, `model.input_std`) standardise them inside the model, after the
input filter, for weights trained on standardised images.

Norms ('model.norm'): 'none' (the paper's vanilla), 'paper_bn' (the paper's BN: batch
statistics in train and eval, no running averages, fixed gamma = 1, beta = 0, eps = 1e-3)
and 'batchnorm' (trainable scale/bias, running averages with momentum 0.9 used when
train=False). 'paper_bn' was called 'batch_stats', which is still accepted
(`layers.canonical_norm`); it was renamed because Flax's 'batch_stats' collection holds
running averages, which only 'batchnorm' keeps.
`dtype='bfloat16'` computes convs and dense layers in bfloat16; params stay float32.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from hfc_jax import errors, frequency
from hfc_jax.models import layers
from hfc_jax.models import plain_cnn, preact_resnet, preact_resnet18, resnet, small_cnn
from hfc_jax.models import torchvision_resnet, wide_resnet

MODELS = {"small_cnn": small_cnn.SmallCNN, "plain_cnn": plain_cnn.PlainCNN,
          "plain_cnn_early_pool": plain_cnn.PlainCNNEarlyPool,
          "plain_cnn_gap": plain_cnn.PlainCNNGlobalPool,
          "resnet18": resnet.ResNet18, "preact_resnet32": preact_resnet.PreActResNet32,
          "resnet18_torch": functools.partial(resnet.ResNet18, padding="torch"),
          "preact_resnet18": preact_resnet18.PreActResNet18,
          "wide_resnet": wide_resnet.WideResNet,
          "torchvision_resnet18": torchvision_resnet.TorchvisionResNet18,
          "torchvision_resnet50": torchvision_resnet.TorchvisionResNet50}
# Each model's default widths: what `model.widths` (when not empty) replaces, entry by entry.
DEFAULT_WIDTHS = {"small_cnn": small_cnn.WIDTHS, "plain_cnn": plain_cnn.WIDTHS,
                  "plain_cnn_early_pool": plain_cnn.WIDTHS, "plain_cnn_gap": plain_cnn.WIDTHS,
                  "resnet18": resnet.WIDTHS, "preact_resnet32": preact_resnet.WIDTHS,
                  "resnet18_torch": resnet.WIDTHS, "preact_resnet18": preact_resnet18.WIDTHS,
                  "wide_resnet": wide_resnet.WIDTHS,
                  "torchvision_resnet18": torchvision_resnet.WIDTHS,
                  "torchvision_resnet50": torchvision_resnet.WIDTHS}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create(name: str, *, num_classes: int, in_channels: int, norm: str = "none",
           dropout: float = 0.0, input_filter: str = "none", filter_radius: float = 0.0,
           dtype: str = "float32", widths: Sequence[int] = (),
           input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
           depth: int = 0, width_factor: int = 0,
           image_size: Sequence[int] | None = None, seed: int = 0) -> nnx.Module:
  """Builds model `name` with parameters initialised from `seed`; bad values raise HfcError.

  `widths`: channel widths replacing `DEFAULT_WIDTHS[name]` (same length; empty keeps
  them). `input_mean`, `input_std`: per-channel standardisation of the [0, 1] input
  inside the model (1 or `in_channels` values each; empty: none). `depth`,
  `width_factor`: of the models that set `takes_depth` (wide_resnet; 0 keeps the
  model's own), 0 for the others. `image_size`: (height, width) of the input images,
  needed by the models that set `needs_image_size` (plain_cnn) and ignored by the others.
  """
  widths = check(name, norm=norm, dropout=dropout, input_filter=input_filter,
                 filter_radius=filter_radius, dtype=dtype, widths=widths,
                 input_mean=input_mean, input_std=input_std, depth=depth,
                 width_factor=width_factor, image_size=image_size)
  errors.check_range("model.num_classes", num_classes, 1, integer=True)
  errors.check_range("model.in_channels", in_channels, 1, integer=True)
  layers.check_standardize(input_mean, input_std, in_channels)
  kwargs = {"widths": widths}
  if getattr(MODELS[name], "needs_image_size", False):
    if image_size is None:
      raise errors.HfcError(f"model.name={name!r} needs the image size (its dense head is "
                            "built for one); pass image_size=(height, width).")
    kwargs["image_size"] = tuple(int(s) for s in image_size)
  kwargs.update({k: v for k, v in (("depth", depth), ("width_factor", width_factor)) if v})
  return MODELS[name](num_classes=num_classes, in_channels=in_channels, norm=norm,
                      dropout=dropout, input_filter=input_filter,
                      filter_radius=filter_radius, dtype=DTYPES[dtype],
                      input_mean=tuple(input_mean), input_std=tuple(input_std),
                      rngs=nnx.Rngs(params=seed), **kwargs)


def check(name: str, *, norm: str, dropout: float, input_filter: str,
          filter_radius: float, dtype: str, widths: Sequence[int],
          input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
          depth: int = 0, width_factor: int = 0,
          image_size: Sequence[int] | None = None) -> tuple[int, ...]:
  """One-line HfcErrors naming the model.* field of a bad value, shared by `create` and
  `check_config`; returns the widths to build (`check_widths`). A used input filter's
  radius must lie in [1, max(height, width)] of `image_size` (>= 1 while unknown)."""
  errors.check_choice("model.name", name, MODELS)
  errors.check_choice("model.norm", layers.canonical_norm(norm), layers.NORMS)
  errors.check_choice("model.input_filter", input_filter, layers.INPUT_FILTERS)
  errors.check_choice("model.dtype", dtype, DTYPES)
  errors.check_range("model.dropout", dropout, 0, 1)
  if input_filter == "none":
    errors.check_range("model.filter_radius", filter_radius, 0)
  else:
    frequency.check_radius(filter_radius, *(image_size or (None, None)),
                           field="model.filter_radius")
  layers.check_standardize(input_mean, input_std)
  check_depth(name, depth, width_factor)
  return check_widths(name, widths)


def check_depth(name: str, depth: int, width_factor: int) -> None:
  """HfcError naming model.depth or model.width_factor: 0 (the model's own), or for a
  model that `takes_depth` (wide_resnet) a depth 6n + 4 (n >= 1) and a factor >= 1."""
  errors.check_range("model.depth", depth, 0, integer=True)
  errors.check_range("model.width_factor", width_factor, 0, integer=True)
  if not getattr(MODELS[name], "takes_depth", False):
    for field, value in (("model.depth", depth), ("model.width_factor", width_factor)):
      if value:
        raise errors.HfcError(f"{field}={value!r}: model.name={name!r} has a fixed depth "
                              "and width factor; only wide_resnet takes them (0 for the "
                              "others).")
  elif depth and (depth < 10 or (depth - 4) % 6):
    raise errors.HfcError(f"model.depth={depth!r}: a wide_resnet has depth 6n + 4 with "
                          "n >= 1 blocks per stage (10, 16, 22, 28, 34, ..., 70), or 0 "
                          "for 28.")


def check_config(config, image_size: int | None = None) -> None:
  """One-line HfcErrors for the model.* fields of `config` (`check`) for square images
  of side `image_size` (None: not known before the data is loaded)."""
  m = config.model
  check(m.name, norm=m.norm, dropout=m.dropout, input_filter=m.input_filter,
        filter_radius=m.filter_radius, dtype=m.dtype, widths=m.widths,
        input_mean=m.input_mean, input_std=m.input_std, depth=m.depth,
        width_factor=m.width_factor,
        image_size=(image_size, image_size) if image_size else None)


def check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
  """`widths`, or model `name`'s defaults when empty; HfcError naming model.widths when
  the count or a value is wrong."""
  default = DEFAULT_WIDTHS[name]
  if not widths:
    return tuple(default)
  widths = tuple(widths)
  if len(widths) != len(default) or not all(
      isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
    raise errors.HfcError(f"model.widths={widths!r}: {name} takes {len(default)} positive "
                          f"integers (default {default}), or () for the default.")
  return widths


def from_config(model_config, *, num_classes: int, in_channels: int,
                image_size: Sequence[int], seed: int = 0) -> nnx.Module:
  """The model a config's `model` section names for (height, width) `image_size` images
  (see `create`)."""
  m = model_config
  return create(m.name, num_classes=num_classes, in_channels=in_channels, norm=m.norm,
                dropout=m.dropout, input_filter=m.input_filter,
                filter_radius=m.filter_radius, dtype=m.dtype,
                widths=m.widths, input_mean=m.input_mean, input_std=m.input_std,
                depth=m.depth, width_factor=m.width_factor,
                image_size=image_size, seed=seed)


def first_conv_kernel(params: Any) -> jnp.ndarray:
  """Returns the (kh, kw, C, F) first-conv kernel of a model, its nnx.State or a pure dict."""
  if isinstance(params, nnx.Module):
    leaf = params.first_conv.kernel
  else:
    leaf = params["first_conv"]["kernel"]
  return jnp.asarray(leaf[...])
