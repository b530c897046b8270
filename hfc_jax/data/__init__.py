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

Before that, `load` checks what every source gave (`_checked`), so that a bad file stops the
run with one line before any training: neither split may be empty, and labels must be integer
class ids (floats are accepted only when every value is a whole number, e.g. 3.0), fit int32
(checked before the cast) and lie in [0, num_classes). num_classes comes from the source's own
metadata (tfds, an npz file's `num_classes` key, the embedded set's 10), else data.num_classes,
else it is inferred as max label + 1 (logged), which must then leave no class of [0, max label]
without a training example: a stray label 255 or 1-based labels are refused, not turned into a
256-way or 11-way head.
"""

import dataclasses

import numpy as np
from absl import logging

from hfc_jax.data import idx_source, npz_source, synthetic, tfds_source
from hfc_jax.data.pipeline import PAD_MODES
from hfc_jax.errors import HfcError, check_choice, check_range

NAMES = ("embedded", "cifar10", "cifar100", "mnist", "fashion_mnist", "npz", "idx")
KEYS = ("x_train", "y_train", "x_test", "y_test")
INT32 = np.iinfo(np.int32)
INFERRED = "inferred as max label + 1"  # the origin of an inferred num_classes


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

  The embedded set's images are read-only: the arrays of a set made once in a process
  are shared by every later load of it (`synthetic.generate`); copy them to change them.
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


def check_config(config) -> None:
  """One-line HfcErrors for the data.* fields of `config` that need no data: the name,
  augmentation, subsets, labels and rescaling (`check_section`). The embedded set's own
  fields are checked as it is made (`synthetic.generate`), the rest once loaded."""
  from hfc_jax import frequency  # pylint: disable=g-import-not-at-top  (imports JAX)
  check_section(config.data)
  check_choice("data.rescale", config.data.rescale, frequency.RESCALE_CHOICES)


def check_section(data_config) -> None:
  """The checks of `data_config` (a config's data section) that `load` runs first."""
  check_choice("data.name", data_config.name, NAMES)
  check_augment(data_config)
  check_subset_and_labels(data_config)


def check_augment(data_config) -> None:
  """Raises a one-line HfcError if the augmentation fields are invalid."""
  check_choice("data.augment", data_config.augment, (False, True))
  check_choice("data.aug_flip", data_config.aug_flip, (False, True))
  check_choice("data.aug_pad_mode", data_config.aug_pad_mode, PAD_MODES)
  check_range("data.aug_pad", data_config.aug_pad, 0, 64, integer=True)


def _load_arrays(data_config, name: str) -> dict:
  """Returns the dict of arrays (and maybe num_classes) from the source `name`."""
  if name == "embedded":
    return {**synthetic.from_config(data_config), "num_classes": synthetic.NUM_CLASSES}
  if name == "npz":
    return npz_source.load_npz(data_config.path)
  if name == "idx":
    return idx_source.load_idx(data_config.path)
  return tfds_source.load_tfds(name, data_config.data_dir)


# ---------------------------------------------------------------- checks of the loaded arrays


@dataclasses.dataclass(frozen=True)
class _Source:
  """How error messages name a loaded source.

  Attributes:
    where: the prefix naming the config field(s), e.g. "data.path='x.npz'".
    names: array key (x_train, y_train, x_test, y_test) -> its name in messages.
    meta: what the source's own num_classes is, e.g. "its num_classes key".
  """
  where: str
  names: dict
  meta: str


def _source(data_config, name: str) -> _Source:
  """Returns the _Source of data.name `name` (see `_checked`)."""
  same = {k: k for k in KEYS}
  if name in ("npz", "idx"):
    names = dict(idx_source.FILES) if name == "idx" else same
    return _Source(f"data.path={data_config.path!r}", names, "its num_classes key")
  if name == "embedded":
    return _Source("data.name='embedded'", same, "the embedded set")
  where = f"data.name={name!r}, data.data_dir={data_config.data_dir!r}"
  return _Source(where, {k: f"{k} ({k[2:]} split)" for k in KEYS}, "its tfds metadata")


def _times(values: np.ndarray) -> str:
  """The distinct `values` with their counts, most frequent first (at most 5), e.g.
  '255 (3 times), -1 (1 time)'."""
  distinct, counts = np.unique(values, return_counts=True)
  order = np.argsort(-counts, kind="stable")
  parts = [f"{int(distinct[i])} ({_count(int(counts[i]), 'time')})" for i in order[:5]]
  if len(distinct) > 5:
    parts.append(f"and {len(distinct) - 5} other values")
  return ", ".join(parts)


def _count(count: int, word: str) -> str:
  """'1 label' or 'N labels'."""
  return f"{count} {word}{'s' * (count != 1)}"


def _check_not_empty(arrays: dict, source: _Source) -> None:
  """Raises a one-line HfcError if the training or the test split holds no image."""
  for split, word in (("train", "training"), ("test", "test")):
    if len(arrays[f"x_{split}"]) == 0:
      raise HfcError(f"{source.where}: {source.names['x_' + split]} holds no images; the "
                     f"{word} set must hold at least one image.")


def _integer_labels(y: np.ndarray, source: _Source, key: str) -> np.ndarray:
  """Returns labels `y` (N,) if they are integers, or floats whose every value is whole
  (e.g. 3.0); raises a one-line HfcError otherwise (bool, string, 2.5, nan)."""
  name = source.names[key]
  allowed = "expected integer class ids (floats only when every value is a whole number)"
  if np.issubdtype(y.dtype, np.integer):
    return y
  if not np.issubdtype(y.dtype, np.floating):
    raise HfcError(f"{source.where}: {name} has dtype {y.dtype}; {allowed}.")
  bad = y[~(np.isfinite(y) & (np.floor(y) == y))]
  if bad.size:
    raise HfcError(f"{source.where}: {name} has dtype {y.dtype} with {bad.size} non-whole "
                   f"value{'s' * (bad.size != 1)}, e.g. {bad[0].item()!r}; {allowed}.")
  return y


def _check_int32(y: np.ndarray, source: _Source, key: str) -> None:
  """Raises a one-line HfcError if a label of `y` (N,) does not fit int32, before any cast
  (a uint64 label 2**40 would otherwise wrap to 0)."""
  if np.issubdtype(y.dtype, np.integer) and np.can_cast(y.dtype, np.int32):
    return
  bad = (y > INT32.max) | (y < INT32.min)
  if bad.any():
    raise HfcError(f"{source.where}: {source.names[key]} has {_count(int(bad.sum()), 'label')} "
                   f"outside the int32 range: {_times(y[bad])}; class ids must be in "
                   f"[0, num_classes) with num_classes <= {INT32.max}.")


def _num_classes(ys: dict, meta: int | None, data_config, source: _Source) -> tuple[int, str]:
  """Returns (num_classes, where it comes from): the source's metadata `meta`, else
  data.num_classes, else max label + 1 over both splits (logged)."""
  wanted = int(data_config.num_classes)
  if meta is not None:
    if wanted and wanted != meta:
      raise HfcError(f"data.num_classes={wanted} disagrees with the {meta} classes of "
                     f"{source.where} ({source.meta}); allowed: 0 (use {meta}) or {meta}.")
    return int(meta), source.meta
  if wanted:
    return wanted, "data.num_classes"
  inferred = max(max(int(y.max()) for y in ys.values()) + 1, 1)
  logging.info("%s: num_classes=%d, %s; set data.num_classes to choose it.", source.where,
               inferred, INFERRED)
  return inferred, INFERRED


def _check_range(y: np.ndarray, num_classes: int, origin: str, source: _Source,
                 key: str) -> None:
  """Raises a one-line HfcError naming the labels of `y` outside [0, num_classes)."""
  bad = (y < 0) | (y >= num_classes)
  if bad.any():
    raise HfcError(f"{source.where}: {source.names[key]} has {_count(int(bad.sum()), 'label')} "
                   f"outside [0, {num_classes}): {_times(y[bad])}; allowed: class ids "
                   f"0..{num_classes - 1} (num_classes={num_classes}, {origin}).")


def _gaps(present: np.ndarray, num_classes: int) -> list[tuple[int, int]]:
  """The ranges [a, b] of [0, num_classes) missing from `present` (sorted, distinct)."""
  edges = np.concatenate([[-1], present.astype(np.int64), [num_classes]])
  jumps = np.nonzero(np.diff(edges) > 1)[0]
  return [(int(edges[i]) + 1, int(edges[i + 1]) - 1) for i in jumps]


def _check_gaps(y_train: np.ndarray, num_classes: int, source: _Source) -> None:
  """Raises a one-line HfcError if an inferred num_classes leaves a class of
  [0, num_classes) without a training example (a stray label, or 1-based labels)."""
  gaps = _gaps(np.unique(y_train), num_classes)
  if not gaps:
    return
  count = sum(b - a + 1 for a, b in gaps)
  shown = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in gaps[:5])
  shown += ", ..." if len(gaps) > 5 else ""
  base = " (class ids start at 0)" if gaps[0][0] == 0 else ""
  have = "has" if count == 1 else "have"
  raise HfcError(
      f"{source.where}: num_classes {INFERRED} = {num_classes}, but {count} "
      f"class{'es' * (count != 1)} ({shown}) {have} no example in "
      f"{source.names['y_train']}{base}; set --config.data.num_classes to the true number "
      "of classes (every label must then lie in [0, num_classes)) or fix the labels.")


def _checked(arrays: dict, data_config, source: _Source) -> dict:
  """Checks the arrays a source loaded and returns them with int32 labels and num_classes.

  Args:
    arrays: x_train (N, H, W, C) uint8, y_train (N,) labels of any dtype, x_test, y_test,
      and optionally num_classes (the source's own metadata).
    data_config: the data section (data.num_classes).
    source: how messages name the source.

  Raises:
    HfcError: one line, for an empty split or a bad label (see the module docstring).
  """
  _check_not_empty(arrays, source)
  ys = {key: _integer_labels(arrays[key], source, key) for key in ("y_train", "y_test")}
  for key, y in ys.items():
    _check_int32(y, source, key)
  num_classes, origin = _num_classes(ys, arrays.get("num_classes"), data_config, source)
  for key, y in ys.items():
    _check_range(y, num_classes, origin, source, key)
  if origin == INFERRED:
    _check_gaps(ys["y_train"], num_classes, source)
  out = {**arrays, "num_classes": num_classes}
  out.update({key: y.astype(np.int32) for key, y in ys.items()})
  return out


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


def check_subset_and_labels(data_config) -> None:
  """Raises a one-line HfcError if the subset or label-shuffle fields are invalid.

  (Whether a limit exceeds the examples of the source is checked once they are loaded.)
  """
  for field in ("train_limit", "test_limit", "subset_seed", "label_seed"):
    check_range(f"data.{field}", data_config[field], 0, None, integer=True)
  check_range("data.num_classes", data_config.num_classes, 0, INT32.max,
              integer=True)
  check_choice("data.shuffle_labels", data_config.shuffle_labels, (False, True))


def _limit_and_shuffle(arrays: dict, data_config, name: str) -> dict:
  """Applies data.train_limit / test_limit, then data.shuffle_labels, to the source's arrays."""
  out = dict(arrays)
  for split, word in (("train", "training"), ("test", "test")):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    size = data_config[f"{split}_limit"]
    if size > len(x):
      raise HfcError(f"data.{split}_limit={size!r} exceeds the {len(x)} {word} examples of "
                     f"data.name={name!r}; allowed: [0, {len(x)}] (0: all).")
    out[f"x_{split}"], out[f"y_{split}"] = subset(x, y, int(size),
                                                  data_config.subset_seed)
  if data_config.shuffle_labels:
    out["y_train"] = shuffled_labels(out["y_train"], data_config.label_seed)
  return out


def load(data_config) -> Dataset:
  """Loads the data set that `data_config.name` names (see the module docstring).

  Raises:
    HfcError: one line naming the data.* field at fault, e.g. an unknown name, a missing
      file, a tfds set that is not prepared, an empty split or a label outside
      [0, num_classes).
  """
  check_section(data_config)
  name = data_config.name
  arrays = _checked(_load_arrays(data_config, name), data_config, _source(data_config, name))
  arrays = _limit_and_shuffle(arrays, data_config, name)
  return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                 arrays["num_classes"], name)
