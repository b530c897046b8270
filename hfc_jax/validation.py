"""Every check of a config that needs no data, run by `main` before any data is
loaded, any model built and any directory created (a bad value costs a second, not a
data load and a compile, and leaves no empty workdir behind).

Each module checks the section it reads (`<module>.check_config`); `check` runs them in
a fixed order. Each failure is one HfcError line naming the exact config path and what
is allowed. Checks that need the data (a radius against the image size of an npz set, a
batch against the training set size and the mesh) are `check_with_data`, run when the
data is loaded; it repeats no check `check` already passed for the same config.
"""

import json

import ml_collections

from hfc_jax import adversarial, errors, models, optimizers
from hfc_jax import data, evaluators, sharding, transforms
from hfc_jax.run import progress
from hfc_jax.workdir import checkpointing

# Image side of the data sets whose size is known without loading them.
KNOWN_SIZES = {"cifar10": 32, "cifar100": 32, "mnist": 28, "fashion_mnist": 28}
# Configs (as JSON) that passed the data-free checks in this process, so that a run
# that `main` checked is not checked again when `train_and_evaluate` loads its data.
_passed: set[str] = set()


def image_size(config: ml_collections.ConfigDict) -> int | None:
  """The image side of `config.data` when known before loading (else None)."""
  if config.data.name == "embedded":
    return int(config.data.image_size)
  return KNOWN_SIZES.get(config.data.name)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line HfcError for the first bad field of `config`: the devices and
  the training batch split over them first, then section by section."""
  sharding.check_config(config)
  _check_sections(config, image_size(config))


def check_with_data(config: ml_collections.ConfigDict, dataset, mesh) -> None:
  """The checks that need the loaded `dataset` and the `mesh`: radii against the real
  image size, the training batch against the mesh and the training set. The data-free
  checks run here too unless `check` passed this config (`train_and_evaluate` may be
  called without it); the mesh replaces `num_devices`."""
  size = dataset.image_size
  if _key(config) not in _passed:
    _check_sections(config, size)
  elif size != image_size(config):   # the size was not known before loading
    _check_sized(config, size)
  sharding.check_batch_size("train.batch_size", config.train.batch_size,
                            mesh.devices.size)
  if config.train.batch_size > len(dataset.x_train):
    raise errors.HfcError(f"train.batch_size={config.train.batch_size} exceeds the "
                          f"{len(dataset.x_train)} training images.")


def _check_sections(config: ml_collections.ConfigDict, size: int | None) -> None:
  """Every section's data-free check, for images of side `size` (None: unknown)."""
  data.check_config(config)
  models.check_config(config, size)
  progress.check_config(config)
  optimizers.check_config(config)
  transforms.check_config(config, size)
  evaluators.check_config(config)
  adversarial.check_config(config)
  checkpointing.check_config(config)
  _passed.add(_key(config))


def _check_sized(config: ml_collections.ConfigDict, size: int | None) -> None:
  """The sections whose radii depend on the image side `size`."""
  models.check_config(config, size)
  transforms.check_config(config, size)


def _key(config: ml_collections.ConfigDict) -> str:
  """`config` as canonical JSON: configs with equal fields share one key."""
  return json.dumps(config.to_dict(), sort_keys=True, default=str)
