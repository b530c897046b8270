"""Data sets for hfc_jax: one `Dataset` of uint8 NHWC arrays, chosen by `data.name`.

  embedded       the built-in synthetic set (`synthetic.py`): no download, made from data.seed.
  cifar10, cifar100, mnist, fashion_mnist
                 tensorflow-datasets, read offline from data.data_dir (`tfds_source.py`).
  npz            your own file at data.path (`npz_source.py`).
  idx            a directory of MNIST-format IDX files at data.path, e.g. Fashion-MNIST from the
                 OS package dataset-fashion-mnist (`idx_source.py`, FASHION_MNIST_DIR).

Whatever the source, `load` then keeps a fixed subset when data.train_limit / data.test_limit are
set (`subset`) and permutes the training labels when data.shuffle_labels is on
(`shuffled_labels`, the paper's figure 3). Batching lives in `pipeline.py`; the data.aug_* fields
configure its training augmentation.
"""

import dataclasses

import ml_collections
import numpy as np
from ml_collections import config_dict

from hfc_jax.data import idx_source, npz_source, synthetic, tfds_source
from hfc_jax.data.pipeline import PAD_MODES
from hfc_jax.errors import HfcError, check_choice, check_range

NAMES = ("embedded", "cifar10", "cifar100", "mnist", "fashion_mnist", "npz", "idx")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A whole data set in host memory.

  Attributes:
    x_train: (N, H, W, C) uint8 images, H == W, C in {1, 3}.
    y_train: (N,) int32 labels in [0, num_classes).
    x_test: (M, H, W, C) uint8.
    y_test: (M,) int32.
    num_classes: number of classes.
    name: the data.name it came from.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test)):
      if x.dtype != np.uint8 or x.ndim != 4 or y.shape != (len(x),):
        raise ValueError(f"Dataset arrays must be uint8 NHWC with matching labels; got "
                         f"{x.dtype} {x.shape} and labels {y.shape}.")

  @property
  def image_size(self) -> int:
    """H (== W), pixels."""
    return self.x_train.shape[1]

  @property
  def channels(self) -> int:
    """C: 1 or 3."""
    return self.x_train.shape[3]


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the `data` section of the config, with every field and its default."""
  c = ml_collections.ConfigDict()
  c.name = "embedded"  # one of NAMES
  c.data_dir = config_dict.placeholder(str)  # tfds data dir; None: ~/tensorflow_datasets
  c.path = config_dict.placeholder(str)  # the .npz file for name='npz', the directory for 'idx'
  # The embedded set (see synthetic.py).
  c.seed = 0  # the embedded set is a function of this seed
  c.num_train = 10_000
  c.num_test = 2_000
  c.image_size = 32
  c.hf_prob = 0.9  # share of images whose texture is their own class's
  c.hf_amplitude = 0.04  # amplitude of each of the 2 texture cosines, [0, 1] pixel units
  # Training augmentation (pipeline.train_batches); the paper uses it only for adversarial training.
  c.augment = False
  c.aug_pad = 2  # pixels padded on each side before the random crop back to H x W
  c.aug_pad_mode = "zero"  # 'zero' or 'reflect'
  c.aug_flip = True  # random horizontal flip
  # Any source, applied after loading (`subset`, `shuffled_labels`).
  c.train_limit = 0  # keep a fixed subset of this many training examples; 0: all
  c.test_limit = 0  # the same for the test set
  c.subset_seed = 0  # seed of the permutation that picks those subsets
  c.shuffle_labels = False  # permute the training labels once (figure 3); test labels stay true
  c.label_seed = 0  # seed of that permutation
  return c


def _field(data_config, name: str):
  """Returns data_config.name, or its default when the field is absent."""
  if name in data_config:
    return data_config[name]
  return default_data_config()[name]


def check_augment(data_config) -> None:
  """Raises a one-line HfcError if the augmentation fields are invalid."""
  check_choice("data.aug_pad_mode", _field(data_config, "aug_pad_mode"), PAD_MODES)
  check_range("data.aug_pad", _field(data_config, "aug_pad"), 0, 64, integer=True)


def _load_arrays(data_config, name: str) -> dict:
  """Returns the dict of arrays (and maybe num_classes) from the source `name`."""
  if name == "embedded":
    return synthetic.generate(
        seed=_field(data_config, "seed"), num_train=_field(data_config, "num_train"),
        num_test=_field(data_config, "num_test"), image_size=_field(data_config, "image_size"),
        hf_prob=_field(data_config, "hf_prob"), hf_amplitude=_field(data_config, "hf_amplitude"))
  if name == "npz":
    return npz_source.load_npz(_field(data_config, "path"))
  if name == "idx":
    return idx_source.load_idx(_field(data_config, "path"))
  return tfds_source.load_tfds(name, _field(data_config, "data_dir"))


def subset(x: np.ndarray, y: np.ndarray, size: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
  """A fixed subset of `size` examples of (x, y), in their original order.

  The examples are the first `size` of np.random.default_rng(seed).permutation(len(x)), then
  sorted; size 0 keeps everything. The caller checks 0 <= size <= len(x).
  """
  if not size:
    return x, y
  idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:size])
  return x[idx], y[idx]


def shuffled_labels(y: np.ndarray, seed: int) -> np.ndarray:
  """Labels `y` (N,) permuted once by np.random.default_rng(seed): the same histogram, but
  no longer tied to the images (Zhang et al.'s "rethinking generalisation", figure 3)."""
  return y[np.random.default_rng(seed).permutation(len(y))]


def check_generic(data_config) -> None:
  """Raises a one-line HfcError if the subset or label-shuffle fields are invalid.

  (Whether a limit exceeds the examples of the source is checked once they are loaded.)
  """
  for field in ("train_limit", "test_limit", "subset_seed", "label_seed"):
    check_range(f"data.{field}", _field(data_config, field), 0, None, integer=True)
  check_choice("data.shuffle_labels", _field(data_config, "shuffle_labels"), (False, True))


def _limit_and_shuffle(arrays: dict, data_config, name: str) -> dict:
  """Applies data.train_limit / test_limit, then data.shuffle_labels, to the source's arrays."""
  out = dict(arrays)
  for split, word in (("train", "training"), ("test", "test")):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    size = _field(data_config, f"{split}_limit")
    if size > len(x):
      raise HfcError(f"data.{split}_limit={size!r} exceeds the {len(x)} {word} examples of "
                     f"data.name={name!r}; allowed: [0, {len(x)}] (0: all).")
    out[f"x_{split}"], out[f"y_{split}"] = subset(x, y, int(size),
                                                  _field(data_config, "subset_seed"))
  if _field(data_config, "shuffle_labels"):
    out["y_train"] = shuffled_labels(out["y_train"], _field(data_config, "label_seed"))
  return out


def load(data_config) -> Dataset:
  """Loads the data set that `data_config.name` names (see the module docstring).

  Raises:
    HfcError: one line naming the data.* field at fault, e.g. an unknown name, a missing
      file or a tfds set that is not prepared.
  """
  name = check_choice("data.name", _field(data_config, "name"), NAMES)
  check_augment(data_config)
  check_generic(data_config)
  arrays = _limit_and_shuffle(_load_arrays(data_config, name), data_config, name)
  num_classes = arrays.get("num_classes", synthetic.NUM_CLASSES)
  return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                 int(num_classes), name)
