"""What the train step does to a batch before the model sees it: the paper's variants.

Two pure, jittable transforms, applied on device to the float images of a global batch:

- `frequency_component`: train on the LFC or HFC of the images only (table 1 and
  figure 6 of the paper): the images are replaced by their split at one radius, the
  same split (`frequency.split`) the evaluation uses. Labels are unchanged.
- `mixup` (Zhang et al. 2018, figure 5 of the paper): one lambda ~ Beta(alpha, alpha)
  per batch, each image mixed with the image at the same place in a random
  permutation of the batch, and the one-hot labels mixed with the same lambda. The
  paper uses alpha = 0.5; the original code draws lambda from Beta(1, 1).

Both are functions of the global batch: under `jit` on a mesh the permutation of
`mixup` may move images between devices, and the split of `frequency_component` is
run per device with `shard_map` (see `make_component_fn`), as in the evaluation.
"""

import functools

import jax
import jax.numpy as jnp

from hfc_jax import errors, frequency, sharding

COMPONENTS = ("original", "lfc", "hfc")


def frequency_component(x: jax.Array, component: str, radius: float, *,
                        inclusive: bool = False, rescale: str = "none") -> jax.Array:
  """The `component` of images `x` at `radius`.

  Args:
    x: (N, H, W, C) float images in [0, 1].
    component: 'original' (x itself, rescaled if asked), 'lfc' or 'hfc'.
    radius: disc radius in frequency-index units (ignored for 'original'); a float, or
      a traced scalar (one run's radius in a run-parallel group: `frequency.split_traced`).
    inclusive: disc boundary `dist <= r` (paper) instead of `dist < r` (code).
    rescale: 'none' or 'per_image_max' (each output image divided by its own max).

  Returns:
    (N, H, W, C) float32. LFC + HFC == x up to float error (with rescale='none').
  """
  errors.check_choice("train.input_component", component, COMPONENTS)
  if component == "original":
    x = x.astype(jnp.float32)
    return frequency.rescale_per_image_max(x) if rescale == "per_image_max" else x
  split = frequency.split_traced if isinstance(radius, jax.Array) else frequency.split
  lfc, hfc = split(x, radius, inclusive=inclusive, rescale=rescale)
  return lfc if component == "lfc" else hfc


def make_component_fn(mesh, component: str, radius: float, *, inclusive: bool,
                      rescale: str):
  """`frequency_component` as a function of a batch-sharded array, split per device
  with `shard_map` (left to the partitioner, a batch-sharded FFT is gathered)."""
  fn = functools.partial(frequency_component, component=component, radius=radius,
                         inclusive=inclusive, rescale=rescale)
  if component == "original":
    return fn
  spec = jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec)


def mixup(key: jax.Array, x: jax.Array, labels: jax.Array, num_classes: int,
          alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes a batch with a permutation of itself.

  Args:
    key: PRNG key; it draws lambda and the permutation.
    x: (N, H, W, C) float images.
    labels: (N,) int class ids in [0, num_classes).
    num_classes: K.
    alpha: Beta(alpha, alpha) parameter, > 0.

  Returns:
    (mixed images (N, H, W, C), mixed one-hot targets (N, K) float32, lambda scalar):
    mixed = lam * x + (1 - lam) * x[perm], targets likewise with one_hot(labels).
  """
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, x.shape[0])
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  mixed_x = lam * x + (1.0 - lam) * x[perm]
  mixed_y = lam * onehot + (1.0 - lam) * onehot[perm]
  return mixed_x.astype(x.dtype), mixed_y, lam


def check_config(config, image_size: int | None) -> None:
  """One-line HfcErrors for the frequency splits a run makes: the training input
  (train.input_component, input_radius, mixup_alpha) and the per-epoch evaluation
  (eval.*; its robust_* fields: `adversarial.check_config`). Radii are checked against
  `image_size` when it is known and the radius is used (else only >= 1)."""
  _check_train(config.train, image_size)
  _check_eval(config.eval, image_size)


def _check_train(train_config, image_size: int | None) -> None:
  """train.input_component, its radius (against `image_size` when used) and mixup_alpha."""
  component = errors.check_choice("train.input_component",
                                  train_config.input_component,
                                  COMPONENTS)
  # Checked even when unused (only >= 1 then), so that a typo never waits for the next run.
  size = image_size if component != "original" else None
  frequency.check_radius(train_config.input_radius, size, size, field="train.input_radius")
  errors.check_range("train.mixup_alpha", train_config.mixup_alpha, 0.0, 100.0)


def _check_eval(eval_config, image_size: int | None) -> None:
  """eval.*: at least one radius, each in [1, image_size], annuli inside the spectrum,
  the split's boundary and rescaling, the batch size and the scored subsets."""
  ec = eval_config
  if not ec.radii:
    raise errors.HfcError("eval.radii=() must name at least one radius.")
  for r in ec.radii:
    frequency.check_radius(r, image_size, image_size, field="eval.radii")
  frequency.check_bands(ec.bands, image_size, image_size, field="eval.bands")
  errors.check_choice("eval.inclusive", ec.inclusive, (False, True))
  errors.check_choice("eval.rescale", ec.rescale, frequency.RESCALE_CHOICES)
  errors.check_range("eval.batch_size", ec.batch_size, 1, None, integer=True)
  for field in ("train_subset", "test_subset"):
    errors.check_range(f"eval.{field}", ec[field], 0, None, integer=True)
