"""Every check of a config that needs no data, run by `main` before any data is
loaded, any model built and any directory created (a bad value costs a second, not a
data load and a compile, and leaves no empty workdir behind).

Each failure is one HfcError line naming the exact config path and what is allowed.
Checks that need the data (a radius against the image size of an npz set, a batch
against the training set size, the mesh) are `check_with_data`, run when the data is
loaded.
"""

import ml_collections

from hfc_jax import errors, frequency, models, optimizers, sharding, transforms
from hfc_jax.models import layers

# Image side of the data sets whose size is known without loading them.
KNOWN_SIZES = {"cifar10": 32, "cifar100": 32, "mnist": 28, "fashion_mnist": 28}
RESCALES = ("none", "per_image_max")


def image_size(config: ml_collections.ConfigDict) -> int | None:
  """The image side of `config.data` when known before loading (else None)."""
  if config.data.name == "embedded":
    return int(config.data.image_size)
  return KNOWN_SIZES.get(config.data.name)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line HfcError for the first bad field of `config`."""
  size = image_size(config)
  check_devices(config)
  check_model(config.model, size)
  check_training(config, size)
  check_eval(config.eval, size)
  check_data(config.data)
  from hfc_jax import adversarial  # pylint: disable=g-import-not-at-top
  adversarial.Adversary.from_config(config.adv)


def check_data(d: ml_collections.ConfigDict) -> None:
  from hfc_jax import data  # pylint: disable=g-import-not-at-top
  errors.check_choice("data.name", d.name, data.NAMES)
  data.check_augment(d)
  data.check_subset_and_labels(d)


def check_devices(config: ml_collections.ConfigDict) -> None:
  """The mesh size and the training batch against it (JAX is started by now)."""
  import jax  # pylint: disable=g-import-not-at-top
  n = jax.device_count()
  if config.num_devices is not None:
    n = int(errors.check_range("num_devices", config.num_devices, 1, n, integer=True))
  batch = errors.check_range("train.batch_size", config.train.batch_size, 1, None,
                             integer=True)
  if batch % n or batch % jax.process_count():
    raise errors.HfcError(
        f"train.batch_size={batch} must be a positive multiple of the number of devices "
        f"({n}); a training batch is split evenly over them.")


def check_model(m: ml_collections.ConfigDict, size: int | None) -> None:
  errors.check_choice("model.name", m.name, models.MODELS)
  errors.check_choice("model.norm", m.norm, layers.NORMS)
  errors.check_choice("model.input_filter", m.input_filter, layers.INPUT_FILTERS)
  errors.check_choice("model.dtype", m.dtype, models.DTYPES)
  errors.check_range("model.dropout", m.dropout, 0, 1)
  models.check_widths(m.name, m.widths)
  if m.input_filter != "none":
    _check_radius("model.filter_radius", m.filter_radius, size)


def check_training(config: ml_collections.ConfigDict, size: int | None) -> None:
  tc = config.train
  errors.check_range("train.epochs", tc.epochs, 1, None, integer=True)
  errors.check_range("train.batch_size", tc.batch_size, 1, None, integer=True)
  errors.check_range("train.log_every_steps", tc.log_every_steps, 1, None, integer=True)
  errors.check_range("train.prefetch", tc.prefetch, 1, None, integer=True)
  errors.check_range("train.smooth_kernel_weight", tc.smooth_kernel_weight, 0)
  errors.check_range("train.divergence_loss", tc.divergence_loss, 0)
  errors.check_range("train.divergence_log_points", tc.divergence_log_points, 1, None,
                     integer=True)
  transforms.check_config(tc, size)
  errors.check_range("checkpoint.every_steps", config.checkpoint.every_steps, 0, None,
                     integer=True)
  errors.check_range("checkpoint.keep", config.checkpoint.keep, 2, None, integer=True)
  errors.check_choice("data.rescale", config.data.rescale, RESCALES)
  optimizers.make_optimizer(config.optim, 1, tc.epochs)   # checks every optim.* field


def check_with_data(config: ml_collections.ConfigDict, dataset, mesh) -> None:
  """The checks that need the loaded `dataset` (its image size and training set) and
  the `mesh`, plus the eval, model and training fields again, now against the real
  image size (`train_and_evaluate` may be called without `check`): one-line HfcErrors
  for values wrong for this data or these devices."""
  size = dataset.image_size
  check_eval(config.eval, size)
  check_model(config.model, size)
  sharding.check_batch_size("train.batch_size", config.train.batch_size, mesh)
  sharding.padded_batch_size("eval.batch_size", config.eval.batch_size, mesh)
  if config.train.batch_size > len(dataset.x_train):
    raise errors.HfcError(
        f"train.batch_size={config.train.batch_size} exceeds the "
        f"{len(dataset.x_train)} training images.")
  check_training(config, size)


def check_eval(ec: ml_collections.ConfigDict, size: int | None) -> None:
  if not ec.radii:
    raise errors.HfcError("eval.radii=() must name at least one radius.")
  for r in ec.radii:
    _check_radius("eval.radii", r, size)
  frequency.check_bands(ec.bands, size, size, field="eval.bands")
  errors.check_choice("eval.inclusive", ec.inclusive, (False, True))
  errors.check_choice("eval.rescale", ec.rescale, RESCALES)
  errors.check_range("eval.batch_size", ec.batch_size, 1, None, integer=True)
  for field in ("train_subset", "test_subset", "robust_subset"):
    errors.check_range(f"eval.{field}", ec[field], 0, None, integer=True)
  errors.check_range("eval.robust_steps", ec.robust_steps, 0, None, integer=True)
  errors.check_range("eval.robust_eps", ec.robust_eps, 0.0, 1.0)


def _check_radius(field: str, radius, size: int | None) -> None:
  if size:
    frequency.check_radius(radius, size, size, field=field)
  else:
    errors.check_range(field, radius, 1, None)
