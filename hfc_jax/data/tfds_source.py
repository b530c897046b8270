"""CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST through tensorflow-datasets, without the network.

Left alone, `tfds.load` retries the network for minutes when it is offline. Here we only open a
builder (`tfds.builder(name, data_dir=...)` reads local files) and check `is_prepared()`; if the
data is not there we fail at once with a one-line HfcError that says how to get it:

  on a connected machine (building the image sets needs tensorflow there):
    tfds build cifar10 --data_dir=DIR --file_format=array_record
  then copy DIR here and run with --config.data.data_dir=DIR.

A prepared split is read whole into numpy: `builder.as_data_source(split)` needs no tensorflow
(array_record files; images are decoded with OpenCV or Pillow). Sets prepared in the default
tfrecord format are read with `tfds.as_numpy(builder.as_dataset(...))` when tensorflow is
installed; otherwise the error says to install it or rebuild with `--file_format=array_record`.
"""

import numpy as np

from hfc_jax.errors import HfcError

# data.name -> tensorflow-datasets name.
TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "mnist": "mnist",
              "fashion_mnist": "fashion_mnist"}
_CHUNK = 1024  # records decoded per data-source call


def _how_to_get(tfds_name: str) -> str:
  """Returns the one-line recipe for preparing `tfds_name` offline."""
  return (f"on a connected machine with tensorflow, run `tfds build {tfds_name} --data_dir=DIR "
          f"--file_format=array_record`, copy DIR here and pass --config.data.data_dir=DIR "
          f"(or use --config.data.name=embedded)")


def prepared_builder(tfds_name: str, data_dir: str | None):
  """Returns the tfds builder for `tfds_name` if its files are prepared; never uses the network.

  Raises:
    HfcError: naming data.name and data.data_dir, if the data set is not prepared there.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy, optional)
  where = f"data.name={tfds_name!r}, data.data_dir={data_dir!r}"
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many types here)
    first_line = (str(e).strip().splitlines() or [""])[0]
    raise HfcError(f"{where}: tfds cannot open it ({type(e).__name__}: {first_line}); "
                   f"{_how_to_get(tfds_name)}.") from e
  if not builder.is_prepared():
    raise HfcError(f"{where}: not prepared at {builder.data_dir} and nothing is downloaded here; "
                   f"{_how_to_get(tfds_name)}.")
  return builder


def _read_data_source(source, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns all records of a random-access data source as images and labels as stored."""
  images, labels = [], []
  for start in range(0, len(source), _CHUNK):
    records = source.__getitems__(list(range(start, min(start + _CHUNK, len(source)))))
    images.extend(r[image_key] for r in records)
    labels.extend(r[label_key] for r in records)
  return np.stack(images), np.asarray(labels)


def _read_with_tensorflow(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a tfrecord-format split through tf.data; needs tensorflow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, fmt = builder.info.name, builder.info.file_format
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    raise HfcError(
        f"data.name={name!r}, data.data_dir={builder.data_dir!r}: stored as "
        f"{getattr(fmt, 'value', fmt)}, which needs tensorflow to read; `pip install "
        f"tensorflow`, or rebuild it with `tfds build {name} --data_dir=DIR "
        f"--file_format=array_record`.") from None
  x, y = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
  return x, y


def read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns one split as images (N, H, W, C) uint8 and labels (N,) as stored (int64);
  `hfc_jax.data.load` checks them and casts them to int32."""
  image_key, label_key = builder.info.supervised_keys
  try:
    source = builder.as_data_source(split)
  except (NotImplementedError, ValueError):  # not array_record: tf.data is the only reader
    return _read_with_tensorflow(builder, split)
  try:
    x, y = _read_data_source(source, image_key, label_key)
  except ImportError as e:
    raise HfcError(f"data.name={builder.info.name!r}: decoding images needs Pillow or OpenCV "
                   f"({e}); `pip install pillow`.") from e
  return x.astype(np.uint8, copy=False), y


def load_tfds(name: str, data_dir: str | None) -> dict:
  """Loads `name` (a key of TFDS_NAMES) from `data_dir`.

  Returns:
    A dict with x_train (N, H, W, C) uint8, y_train (N,) int64, x_test, y_test, and
    num_classes from the tfds metadata.
  """
  builder = prepared_builder(TFDS_NAMES[name], data_dir)
  x_train, y_train = read_split(builder, "train")
  x_test, y_test = read_split(builder, "test")
  num_classes = builder.info.features[builder.info.supervised_keys[1]].num_classes
  return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
          "num_classes": int(num_classes)}
