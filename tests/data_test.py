"""Tests for hfc_jax.data: the embedded set, .npz and tfds sources, and the host pipeline."""

import gzip
import os
import struct
import sys
import time

import ml_collections
import numpy as np
import pytest

from hfc_jax import data, defaults, main
from hfc_jax.data import idx_source, npz_source, pipeline, synthetic, tfds_source
from hfc_jax.errors import HfcError
from tests.conftest import tiny_config


def _config(**overrides):
  config = defaults.get_config().data
  config.update(overrides)
  return config


def _augment_args(**overrides):
  """`pipeline.train_batches`' augmentation keywords from the default data config."""
  dc = _config()
  return {"pad": dc.aug_pad, "pad_mode": dc.aug_pad_mode, "flip": dc.aug_flip, **overrides}


def _radius(size: int) -> np.ndarray:
  """(S, S) distance of each fftshift-ed spectrum index from (S/2, S/2)."""
  yy, xx = np.mgrid[:size, :size]
  return np.hypot(yy - size // 2, xx - size // 2)


def _power(images: np.ndarray) -> np.ndarray:
  """(N, S, S) spectral power of float images (N, S, S, C), summed over channels."""
  spectrum = np.fft.fftshift(np.fft.fft2(images, axes=(1, 2)), axes=(1, 2))
  return (np.abs(spectrum) ** 2).sum(-1)


# ---------------------------------------------------------------- embedded set


def test_embedded_is_deterministic_with_expected_shapes():
  a = data.load(_config(num_train=300, num_test=60))
  synthetic._generate.cache_clear()      # made again, not the kept arrays
  b = data.load(_config(num_train=300, num_test=60))
  assert a.x_train is not b.x_train
  for field in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.x_train.shape == (300, 32, 32, 3) and a.x_train.dtype == np.uint8
  assert a.y_train.shape == (300,) and a.y_train.dtype == np.int32
  assert a.x_test.shape == (60, 32, 32, 3)
  assert (a.num_classes, a.image_size, a.channels, a.name) == (10, 32, 3, "embedded")
  other = data.load(_config(num_train=300, num_test=60, seed=1))
  assert not np.array_equal(a.x_train, other.x_train)
  fewer_test = data.load(_config(num_train=300, num_test=20))
  np.testing.assert_array_equal(a.x_train, fewer_test.x_train)


def test_a_repeated_embedded_set_is_the_kept_read_only_one():
  synthetic._generate.cache_clear()
  args = dict(seed=0, num_train=40, num_test=20, image_size=16, hf_prob=0.9,
              hf_amplitude=0.03)
  a, b = synthetic.generate(**args), synthetic.generate(**args)
  assert a is not b and all(a[k] is b[k] for k in a)
  assert synthetic._generate.cache_info().hits == 1
  with pytest.raises(ValueError, match="read-only"):
    a["x_train"][0, 0, 0, 0] = 0
  assert synthetic.generate(**{**args, "seed": 1})["x_train"] is not a["x_train"]


def test_embedded_labels_are_balanced_and_texture_agrees_at_hf_prob():
  arrays = synthetic.from_config(_config(seed=3, num_train=5000, num_test=100))
  np.testing.assert_array_equal(np.bincount(arrays["y_train"]), np.full(10, 500))
  agree = np.mean(arrays["tex_train"] == arrays["y_train"])
  assert 0.88 < agree < 0.92
  pixels = arrays["x_train"]
  assert pixels.min() >= 5 and pixels.max() <= 250  # nothing clipped at 0 or 255


def test_texture_energy_lies_in_the_ring():
  low, high = synthetic.band(32)
  assert (low, high) == (12.5, 15.5)
  dist = _radius(32)
  ring = (dist >= low) & (dist <= high)
  design = synthetic.make_design(np.random.default_rng(0), 32, 0.04)
  power = _power(design.textures.astype(np.float64))
  assert np.all(power[:, ring].sum(-1) / power.sum((1, 2)) > 1 - 1e-9)
  # In the paper's masks (dist < r): outside the disc for r = 12, inside it for r = 16.
  assert np.all(power[:, dist < 12].sum(-1) < 1e-9 * power.sum((1, 2)))
  assert np.all(power[:, dist >= 16].sum(-1) < 1e-9 * power.sum((1, 2)))
  # Distinct classes use distinct frequencies.
  assert len({tuple(f) for f in design.frequencies.reshape(-1, 2)}) == design.frequencies.size // 2


def test_texture_in_the_uint8_images_lies_in_the_ring():
  kwargs = dict(seed=5, num_train=400, num_test=10)
  plain = synthetic.from_config(_config(hf_amplitude=0.0, **kwargs))
  textured = synthetic.from_config(_config(**kwargs))
  np.testing.assert_array_equal(plain["y_train"], textured["y_train"])
  diff = textured["x_train"].astype(np.float64) - plain["x_train"]  # texture + rounding noise
  power = _power(diff / 255).sum(0)
  dist = _radius(32)
  ring = (dist >= 12.5) & (dist <= 15.5)
  assert power[ring].sum() / power.sum() > 0.95
  plain_power = _power(plain["x_train"] / 255 - 0.5).sum(0)
  assert plain_power[ring].sum() < 0.05 * power[ring].sum()  # the smooth content is not there


# ---------------------------------------------------------------- npz source


def _save(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _valid_arrays(shape, n_train=12, n_test=5):
  rng = np.random.default_rng(0)
  return {"x_train": rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
          "y_train": np.arange(n_train) % 4, "x_test": rng.integers(0, 256, (n_test,) + shape,
                                                                    dtype=np.uint8),
          "y_test": np.arange(n_test) % 3}


@pytest.mark.parametrize("shape,expected", [((28, 28), (28, 28, 1)), ((28, 28, 1), (28, 28, 1)),
                                            ((32, 32, 3), (32, 32, 3))])
def test_npz_round_trip(tmp_path, shape, expected):
  arrays = _valid_arrays(shape)
  path = _save(tmp_path / "d.npz", **arrays)
  ds = data.load(_config(name="npz", path=path))
  assert ds.x_train.shape == (12,) + expected and ds.x_test.shape == (5,) + expected
  np.testing.assert_array_equal(ds.x_train.reshape(arrays["x_train"].shape), arrays["x_train"])
  np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
  assert ds.y_train.dtype == np.int32
  assert (ds.num_classes, ds.image_size, ds.channels) == (4, expected[0], expected[2])


def _broken(arrays, case):
  if case == "missing key":
    del arrays["y_test"]
  elif case == "non-square":
    arrays["x_train"] = np.zeros((12, 28, 30), np.uint8)
  elif case == "wrong dtype":
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
  elif case == "channels":
    arrays["x_train"] = np.zeros((12, 32, 32, 4), np.uint8)
  elif case == "count mismatch":
    arrays["y_train"] = arrays["y_train"][:-1]
  return arrays


@pytest.mark.parametrize("case,words", [("missing key", "y_test"), ("non-square", "square"),
                                        ("wrong dtype", "uint8"), ("channels", "channels"),
                                        ("count mismatch", "images")])
def test_npz_validation_errors(tmp_path, case, words):
  path = _save(tmp_path / "d.npz", **_broken(_valid_arrays((32, 32, 3)), case))
  with pytest.raises(HfcError, match=words) as info:
    data.load(_config(name="npz", path=path))
  message = str(info.value)
  assert message.startswith("data.path=") and "\n" not in message


def test_npz_missing_file(tmp_path):
  with pytest.raises(HfcError, match="data.path=.*no such file"):
    npz_source.load_npz(str(tmp_path / "absent.npz"))


def test_unknown_name_is_one_line():
  with pytest.raises(HfcError, match="data.name='imagenet' is not allowed"):
    data.load(_config(name="imagenet"))


# ---------------------------------------------------------------- tfds source


def test_tfds_not_prepared_fails_fast_offline(tmp_path):
  start = time.perf_counter()
  with pytest.raises(HfcError) as info:
    data.load(_config(name="cifar10", data_dir=str(tmp_path)))
  elapsed = time.perf_counter() - start
  message = str(info.value)
  assert elapsed < 10, elapsed
  assert "\n" not in message
  for words in ("data.name='cifar10'", "data.data_dir=", "not prepared", "tfds build cifar10",
                "--file_format=array_record"):
    assert words in message


def _fake_cifar10(data_dir: str, n_train: int, n_test: int) -> None:
  """Prepares a tiny array_record 'cifar10' in data_dir, offline and without tensorflow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top

  def examples(n, offset):
    for i in range(n):
      pixels = np.full((32, 32, 3), (offset + i) % 256, np.uint8)
      yield i, {"id": f"{offset}_{i}", "image": Image.fromarray(pixels), "label": i % 10}

  with tfds.core.registered.skip_registration():

    class FakeCifar10(cifar.Cifar10):  # writes what the real builder would, from our examples
      name = "cifar10"

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(n_train, 0),
                "test": self._generate_examples(n_test, 100)}

      def _generate_examples(self, n, offset):  # pylint: disable=arguments-renamed
        return examples(n, offset)

  FakeCifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_reads_a_prepared_array_record_set(tmp_path):
  _fake_cifar10(str(tmp_path), n_train=30, n_test=7)
  ds = data.load(_config(name="cifar10", data_dir=str(tmp_path)))
  assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (7, 32, 32, 3) and ds.y_test.dtype == np.int32
  assert ds.num_classes == 10
  # Each fake image is constant with value = its index (+100 for test); labels are index % 10.
  values = ds.x_train[:, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(np.sort(values), np.arange(30))
  np.testing.assert_array_equal(ds.y_train, values % 10)
  np.testing.assert_array_equal(np.sort(ds.x_test[:, 5, 5, 2]), np.arange(100, 107))


def test_tfds_tfrecord_without_tensorflow_says_so(tmp_path, monkeypatch):
  _fake_cifar10(str(tmp_path), n_train=3, n_test=2)
  builder = tfds_source.prepared_builder("cifar10", str(tmp_path))
  # A None entry in sys.modules makes `import tensorflow` raise ImportError, installed or not.
  monkeypatch.setitem(sys.modules, "tensorflow", None)

  def not_array_record(split):
    raise NotImplementedError(split)

  monkeypatch.setattr(builder, "as_data_source", not_array_record)
  with pytest.raises(HfcError, match="needs tensorflow.*--file_format=array_record"):
    tfds_source.read_split(builder, "train")


# ---------------------------------------------------------------- pipeline


def _indexed(n, size=4):
  """n images whose pixel (0, 0, 0) holds the index mod 256, and labels = index."""
  x = np.zeros((n, size, size, 3), np.uint8)
  x[:, 0, 0, 0] = np.arange(n) % 256
  return x, np.arange(n, dtype=np.int32)


def _epoch_labels(y, **kwargs):
  x = np.zeros((len(y), 4, 4, 3), np.uint8)
  return [labels for _, labels in pipeline.train_batches(x, y, **_augment_args(), **kwargs)]


def test_train_epoch_is_a_permutation_minus_remainder():
  _, y = _indexed(1003)
  batches = _epoch_labels(y, batch_size=100, seed=0, epoch=0, augment=False)
  assert len(batches) == pipeline.num_train_steps(1003, 100) == 10
  seen = np.concatenate(batches)
  assert len(seen) == 1000 and len(np.unique(seen)) == 1000
  assert all(b.dtype == np.int32 and b.shape == (100,) for b in batches)


def test_train_order_depends_only_on_seed_and_epoch():
  _, y = _indexed(500)
  run = lambda seed, epoch: np.concatenate(
      _epoch_labels(y, batch_size=50, seed=seed, epoch=epoch, augment=False))
  np.testing.assert_array_equal(run(1, 2), run(1, 2))
  assert not np.array_equal(run(1, 2), run(1, 3))
  assert not np.array_equal(run(1, 2), run(2, 2))


@pytest.mark.parametrize("augment", [False, True])
def test_process_slices_concatenate_to_the_global_batch(augment):
  x = np.random.default_rng(0).integers(0, 256, (130, 8, 8, 3), dtype=np.uint8)
  y = np.arange(130, dtype=np.int32)
  kwargs = dict(batch_size=32, seed=4, epoch=1, augment=augment,
                **_augment_args(pad=2, pad_mode="reflect"))
  whole = list(pipeline.train_batches(x, y, **kwargs))
  parts = [list(pipeline.train_batches(x, y, process_index=p, process_count=4, **kwargs))
           for p in range(4)]
  assert len(whole) == 4 and all(len(p) == 4 for p in parts)
  for step, (images, labels) in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([p[step][0] for p in parts]), images)
    np.testing.assert_array_equal(np.concatenate([p[step][1] for p in parts]), labels)
    assert parts[0][step][0].shape == (8, 8, 8, 3)


def _grid():
  """One 3x3 image with two channels: channel c of pixel value v is 10 v + c."""
  v = np.arange(9).reshape(1, 3, 3, 1)
  return (10 * v + np.arange(2)).astype(np.uint8)


def test_crop_flip_zero_pad_matches_hand_computed():
  out = pipeline.crop_flip(_grid(), np.array([0]), np.array([2]), np.array([True]), pad=1,
                           pad_mode="zero")
  # Zero-padded 5x5, rows 0..2, cols 2..4 = [[0, 0, 0], [1, 2, 0], [4, 5, 0]], then mirrored.
  expected = np.array([[0, 0, 0], [0, 2, 1], [0, 5, 4]])
  np.testing.assert_array_equal(out[0, ..., 0], 10 * expected)
  np.testing.assert_array_equal(out[0, ..., 1], np.where(expected > 0, 10 * expected + 1, 0))


def test_crop_flip_reflect_pad_matches_hand_computed():
  out = pipeline.crop_flip(_grid(), np.array([1]), np.array([0]), np.array([False]), pad=1,
                           pad_mode="reflect")
  # Reflect-padded rows 1..3 are [1 0 1 2 1], [4 3 4 5 4], [7 6 7 8 7]; cols 0..2 kept.
  expected = np.array([[1, 0, 1], [4, 3, 4], [7, 6, 7]])
  np.testing.assert_array_equal(out[0, ..., 0], 10 * expected)
  np.testing.assert_array_equal(out[0, ..., 1], 10 * expected + 1)


@pytest.mark.parametrize("pad_mode", ["zero", "reflect"])
@pytest.mark.parametrize("pad,size,channels", [(0, 5, 3), (1, 6, 1), (2, 8, 3), (4, 7, 3),
                                               (3, 3, 2), (5, 4, 3)])
def test_crop_flip_equals_numpy_pad_slice_and_mirror(pad_mode, pad, size, channels):
  # Pads >= the image size (last two) reflect more than once (numpy.pad's own path).
  rng = np.random.default_rng(pad * 10 + size)
  images = rng.integers(0, 256, (9, size, size, channels), dtype=np.uint8)
  dy, dx = rng.integers(0, 2 * pad + 1, (2, 9))
  flips = rng.random(9) < 0.5
  mode = {"zero": "constant", "reflect": "reflect"}[pad_mode]
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  np.testing.assert_array_equal(pipeline.pad_images(images, pad, pad_mode), padded)
  out = pipeline.crop_flip(images, dy, dx, flips, pad=pad, pad_mode=pad_mode)
  assert out.dtype == np.uint8 and out.shape == images.shape
  for b in range(9):
    crop = padded[b, dy[b]:dy[b] + size, dx[b]:dx[b] + size]
    np.testing.assert_array_equal(out[b], crop[:, ::-1] if flips[b] else crop)


def test_augmented_batches_are_crops_of_their_images():
  x, y = _indexed(64, size=6)
  x[:] = np.random.default_rng(1).integers(0, 256, x.shape, dtype=np.uint8)
  images, labels = next(pipeline.train_batches(x, y, batch_size=16, seed=0, epoch=0,
                                               augment=True,
                                               **_augment_args(pad=0, flip=True)))
  for image, label in zip(images, labels):  # pad 0: only the flip can change an image
    assert np.array_equal(image, x[label]) or np.array_equal(image, x[label][:, ::-1])


def test_eval_batches_pad_the_last_batch_with_mask_zero():
  x, y = _indexed(1003)
  batches = list(pipeline.eval_batches(x, y, batch_size=100))
  assert len(batches) == 11
  assert all(b[0].shape == (100, 4, 4, 3) and b[2].dtype == np.float32 for b in batches)
  assert sum(b[2].sum() for b in batches) == 1003
  labels = np.concatenate([b[1][b[2] > 0] for b in batches])
  np.testing.assert_array_equal(labels, y)
  assert np.all(batches[-1][0][3:] == 0) and np.all(batches[-1][2][3:] == 0)


def test_eval_batches_split_over_processes():
  x, y = _indexed(250)
  parts = [list(pipeline.eval_batches(x, y, batch_size=64, process_index=p, process_count=4))
           for p in range(4)]
  assert all(len(p) == 4 for p in parts)
  assert sum(b[2].sum() for p in parts for b in p) == 250
  order = np.concatenate([parts[p][s][1][parts[p][s][2] > 0] for s in range(4) for p in range(4)])
  np.testing.assert_array_equal(order, y)


def test_batch_size_must_split_over_processes():
  x, y = _indexed(10)
  with pytest.raises(HfcError, match="multiple of the process count"):
    next(pipeline.train_batches(x, y, batch_size=6, seed=0, epoch=0, augment=False,
                                process_count=4, **_augment_args()))


def test_prefetch_yields_everything_in_order_and_reraises():
  assert list(pipeline.prefetch(iter(range(50)), size=3)) == list(range(50))

  def failing():
    yield 1
    raise RuntimeError("boom")

  stream = pipeline.prefetch(failing(), size=2)
  assert next(stream) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(stream)


# ---------------------------------------------------------------- idx source


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
  """An IDX file: big-endian magic, big-endian int32 sizes, then the uint8 values."""
  header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}i", *array.shape)
  return header + array.astype(np.uint8).tobytes()


def _idx_arrays(n_train=7, n_test=3, size=6):
  rng = np.random.default_rng(1)
  return {"x_train": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
          "y_train": np.array([0, 4, 1, 1, 2, 0, 3][:n_train], np.uint8),
          "x_test": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
          "y_test": np.array([5, 0, 2][:n_test], np.uint8)}


def _write_idx_dir(directory, arrays, compression="gz"):
  """Writes the four IDX files; compression: 'gz', 'plain', 'mixed' or 'multi-member'."""
  directory.mkdir(exist_ok=True)
  for i, (key, name) in enumerate(idx_source.FILES.items()):
    magic = idx_source.IMAGES_MAGIC if key.startswith("x") else idx_source.LABELS_MAGIC
    raw = _idx_bytes(arrays[key], magic)
    if compression == "plain" or (compression == "mixed" and i % 2):
      (directory / name).write_bytes(raw)
    elif compression == "multi-member":  # as `cat a.gz b.gz` makes
      (directory / (name + ".gz")).write_bytes(gzip.compress(raw[:10]) + gzip.compress(raw[10:]))
    else:
      (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
  return str(directory)


@pytest.mark.parametrize("compression", ["gz", "plain", "mixed", "multi-member"])
def test_idx_round_trip(tmp_path, compression):
  arrays = _idx_arrays()
  path = _write_idx_dir(tmp_path / "mnist", arrays, compression)
  ds = data.load(_config(name="idx", path=path, num_classes=6))  # class 5 is only in the test set
  assert ds.x_train.shape == (7, 6, 6, 1) and ds.x_test.shape == (3, 6, 6, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])
  np.testing.assert_array_equal(ds.x_test[..., 0], arrays["x_test"])
  np.testing.assert_array_equal(ds.y_train, [0, 4, 1, 1, 2, 0, 3])
  np.testing.assert_array_equal(ds.y_test, [5, 0, 2])
  assert (ds.num_classes, ds.image_size, ds.channels, ds.name) == (6, 6, 1, "idx")


def test_idx_parses_a_hand_written_header():
  raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 9, 8, 7, 6, 5, 4])
  x = idx_source.parse_idx(raw, idx_source.IMAGES_MAGIC, "f")
  np.testing.assert_array_equal(x, [[[9, 8, 7]], [[6, 5, 4]]])


def _break_idx(directory, case):
  """Damages the idx directory written by _write_idx_dir (gzipped) in one way."""
  images = directory / "train-images-idx3-ubyte.gz"
  labels = directory / "train-labels-idx1-ubyte.gz"
  raw = gzip.decompress(images.read_bytes())
  if case == "missing file":
    labels.unlink()
  elif case == "bad magic":
    images.write_bytes(gzip.compress(struct.pack(">I", idx_source.LABELS_MAGIC) + raw[4:]))
  elif case == "truncated":
    images.write_bytes(gzip.compress(raw[:-1]))
  elif case == "truncated header":
    images.write_bytes(gzip.compress(raw[:10]))
  elif case == "truncated gzip":
    images.write_bytes(images.read_bytes()[:-20])
  elif case == "not gzip":
    images.write_bytes(raw)  # a plain file named .gz
  elif case == "too long":
    images.write_bytes(gzip.compress(raw + b"\0"))
  elif case == "count mismatch":
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(6), idx_source.LABELS_MAGIC)))
  elif case == "non-square":
    images.write_bytes(gzip.compress(_idx_bytes(np.zeros((7, 6, 5)), idx_source.IMAGES_MAGIC)))
  elif case == "size mismatch":
    images.write_bytes(gzip.compress(_idx_bytes(np.zeros((7, 5, 5)), idx_source.IMAGES_MAGIC)))


@pytest.mark.parametrize("case,words", [
    ("missing file", "has no train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz"),
    ("bad magic", "magic number 0x00000801; expected 0x00000803"),
    ("truncated", "truncated: header says shape \\(7, 6, 6\\) \\(252 bytes.*251 bytes"),
    ("truncated header", "truncated: 10 bytes, shorter than its 16-byte header"),
    ("truncated gzip", "cannot read train-images-idx3-ubyte.gz"),
    ("not gzip", "cannot read train-images-idx3-ubyte.gz"),
    ("too long", "longer than its header says"),
    ("count mismatch", "7 images but train-labels-idx1-ubyte has 6 labels"),
    ("non-square", "6x5; expected square"),
    ("size mismatch", "expected the same size")])
def test_idx_errors_name_data_path(tmp_path, case, words):
  path = _write_idx_dir(tmp_path / "mnist", _idx_arrays())
  _break_idx(tmp_path / "mnist", case)
  with pytest.raises(HfcError, match=words) as info:
    data.load(_config(name="idx", path=path))
  message = str(info.value)
  assert message.startswith(f"data.path={path!r}: ") and "\n" not in message


@pytest.mark.parametrize("path", [None, "/nonexistent/mnist", "file"])
def test_idx_missing_directory(tmp_path, path):
  if path == "file":
    path = str(tmp_path / "f")
    open(path, "w").close()
  words = "data.path=.*no such directory.*dataset-fashion-mnist"
  with pytest.raises(HfcError, match=words) as info:
    data.load(_config(name="idx", path=path))
  assert "\n" not in str(info.value)


def test_real_fashion_mnist():
  """The OS package dataset-fashion-mnist (.ci/run installs it): 60000 + 10000 images."""
  assert os.path.isdir(idx_source.FASHION_MNIST_DIR), (
      f"{idx_source.FASHION_MNIST_DIR} is missing: run `apt-get install dataset-fashion-mnist` "
      "(.ci/run does so when it runs as root with apt-get).")
  start = time.perf_counter()
  ds = data.load(_config(name="idx", path=idx_source.FASHION_MNIST_DIR))
  elapsed = time.perf_counter() - start
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
  # Real photos on a black background: corners dark, full uint8 range used, images differ.
  assert ds.x_train[:, 0, 0].mean() < 5 and ds.x_train.max() == 255
  assert 60 < ds.x_train.mean() < 90
  assert len(np.unique(ds.x_train[:100].reshape(100, -1), axis=0)) == 100
  assert elapsed < 10, elapsed  # about 0.3 s on one core


# ---------------------------------------------------------------- subsets and shuffled labels


def test_subset_is_a_fixed_sorted_sample():
  x = np.arange(100) * 10
  y = np.arange(100)
  sx, sy = data.subset(x, y, 30, seed=3)
  expected = np.sort(np.random.default_rng(3).permutation(100)[:30])
  np.testing.assert_array_equal(sy, expected)
  np.testing.assert_array_equal(sx, expected * 10)  # images and labels stay paired
  assert len(np.unique(sy)) == 30 and np.all(np.diff(sy) > 0)
  np.testing.assert_array_equal(data.subset(x, y, 30, seed=3)[1], sy)
  assert not np.array_equal(data.subset(x, y, 30, seed=4)[1], sy)
  assert data.subset(x, y, 0, seed=3)[1] is y
  np.testing.assert_array_equal(data.subset(x, y, 100, seed=3)[1], y)


def test_limits_through_load():
  full = data.load(_config(num_train=200, num_test=50))
  ds = data.load(_config(num_train=200, num_test=50, train_limit=40, test_limit=10,
                         subset_seed=7))
  train_idx = np.sort(np.random.default_rng(7).permutation(200)[:40])
  test_idx = np.sort(np.random.default_rng(7).permutation(50)[:10])
  np.testing.assert_array_equal(ds.x_train, full.x_train[train_idx])
  np.testing.assert_array_equal(ds.y_train, full.y_train[train_idx])
  np.testing.assert_array_equal(ds.x_test, full.x_test[test_idx])
  np.testing.assert_array_equal(ds.y_test, full.y_test[test_idx])
  assert ds.num_classes == 10


@pytest.mark.parametrize("field,value,words", [
    ("train_limit", 201, "data.train_limit=201 exceeds the 200 training examples of "
                         "data.name='embedded'; allowed: \\[0, 200\\]"),
    ("test_limit", 51, "data.test_limit=51 exceeds the 50 test examples"),
    ("train_limit", -1, "data.train_limit=-1 is out of range"),
    ("subset_seed", 1.5, "data.subset_seed=1.5 must be an integer"),
    ("shuffle_labels", "yes", "data.shuffle_labels='yes' is not allowed")])
def test_limit_and_shuffle_errors(field, value, words):
  fields = {**_config(num_train=200, num_test=50).to_dict(), field: value}
  config = ml_collections.ConfigDict(fields)  # a fresh dict: no type checks against defaults
  with pytest.raises(HfcError, match=words) as info:
    data.load(config)
  assert "\n" not in str(info.value)


def test_shuffled_labels_are_a_fixed_permutation():
  y = np.random.default_rng(0).integers(0, 10, 1000).astype(np.int32)
  a, b = data.shuffled_labels(y, 5), data.shuffled_labels(y, 5)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, y[np.random.default_rng(5).permutation(1000)])
  assert not np.array_equal(a, data.shuffled_labels(y, 6))
  np.testing.assert_array_equal(np.bincount(a, minlength=10), np.bincount(y, minlength=10))
  assert 0.05 < np.mean(a == y) < 0.15  # about 1/10: no longer tied to the images
  assert a.dtype == np.int32


def test_shuffled_labels_through_load_touch_only_training_labels():
  kwargs = dict(num_train=300, num_test=60)
  full = data.load(_config(**kwargs))
  ds = data.load(_config(shuffle_labels=True, label_seed=3, **kwargs))
  np.testing.assert_array_equal(ds.y_train, data.shuffled_labels(full.y_train, 3))
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.bincount(full.y_train))
  assert np.mean(ds.y_train == full.y_train) < 0.25
  np.testing.assert_array_equal(ds.x_train, full.x_train)
  np.testing.assert_array_equal(ds.x_test, full.x_test)
  np.testing.assert_array_equal(ds.y_test, full.y_test)
  again = data.load(_config(shuffle_labels=True, label_seed=3, **kwargs))
  np.testing.assert_array_equal(again.y_train, ds.y_train)
  other = data.load(_config(shuffle_labels=True, label_seed=4, **kwargs))
  assert not np.array_equal(other.y_train, ds.y_train)
  # With a limit, the labels of the kept subset are the ones shuffled.
  both = data.load(_config(shuffle_labels=True, label_seed=3, train_limit=100, **kwargs))
  kept = data.subset(full.x_train, full.y_train, 100, 0)[1]
  np.testing.assert_array_equal(both.y_train, data.shuffled_labels(kept, 3))


def test_configs_without_the_new_fields_still_load():
  """A config written before the subset fields existed, completed as main and restore do."""
  config = _config(num_train=100, num_test=20).to_dict()
  for field in ("train_limit", "test_limit", "subset_seed", "shuffle_labels", "label_seed"):
    del config[field]
  ds = data.load(defaults.complete({"data": config}).data)
  assert len(ds.x_train) == 100 and len(ds.x_test) == 20


# ---------------------------------------------------------------- labels and classes, any source


def _labelled(y_train, y_test=(0, 1, 2), size=4, **extra):
  """npz arrays with the given labels (any dtype) and random uint8 images."""
  rng = np.random.default_rng(0)
  y_train, y_test = np.asarray(y_train), np.asarray(y_test)
  return {"x_train": rng.integers(0, 256, (len(y_train), size, size, 3), dtype=np.uint8),
          "y_train": y_train, "y_test": y_test,
          "x_test": rng.integers(0, 256, (len(y_test), size, size, 3), dtype=np.uint8), **extra}


def _npz_error(tmp_path, arrays, **config) -> str:
  """The one-line HfcError message of loading `arrays` as an npz set."""
  path = _save(tmp_path / "x.npz", **arrays)
  with pytest.raises(HfcError) as info:
    data.load(_config(name="npz", path=path, **config))
  message = str(info.value)
  assert "\n" not in message
  return message.replace(repr(path), "P")


def test_stray_label_255_is_refused_not_a_256_way_head(tmp_path):
  labels = np.concatenate([np.arange(20) % 10, [255, 255, 255]]).astype(np.uint8)
  assert _npz_error(tmp_path, _labelled(labels)) == (
      "data.path=P: num_classes inferred as max label + 1 = 256, but 245 classes (10..254) "
      "have no example in y_train; set --config.data.num_classes to the true number of "
      "classes (every label must then lie in [0, num_classes)) or fix the labels.")
  assert _npz_error(tmp_path, _labelled(labels), num_classes=10) == (
      "data.path=P: y_train has 3 labels outside [0, 10): 255 (3 times); allowed: class ids "
      "0..9 (num_classes=10, data.num_classes).")


def test_one_based_labels_are_refused(tmp_path):
  labels = np.arange(20) % 10 + 1  # 1..10
  message = _npz_error(tmp_path, _labelled(labels, y_test=(1, 5, 10)))
  assert message.startswith("data.path=P: num_classes inferred as max label + 1 = 11, but 1 "
                            "class (0) has no example in y_train (class ids start at 0); "
                            "set --config.data.num_classes")
  assert _npz_error(tmp_path, _labelled(labels, y_test=(1, 5, 10)), num_classes=10) == (
      "data.path=P: y_train has 2 labels outside [0, 10): 10 (2 times); allowed: class ids "
      "0..9 (num_classes=10, data.num_classes).")


def test_uint64_labels_beyond_int32_are_refused_before_the_cast(tmp_path):
  labels = np.array([0, 1, 2, 2**40, 1], np.uint64)  # 2**40 would wrap to 0 as int32
  assert _npz_error(tmp_path, _labelled(labels), num_classes=3) == (
      "data.path=P: y_train has 1 label outside the int32 range: 1099511627776 (1 time); "
      "class ids must be in [0, num_classes) with num_classes <= 2147483647.")


@pytest.mark.parametrize("split,word", [("test", "test"), ("train", "training")])
def test_an_empty_split_is_refused(tmp_path, split, word):
  arrays = _labelled(np.arange(6) % 3)
  arrays[f"x_{split}"], arrays[f"y_{split}"] = np.zeros((0, 4, 4, 3), np.uint8), np.zeros(0)
  assert _npz_error(tmp_path, arrays) == (
      f"data.path=P: x_{split} holds no images; the {word} set must hold at least one image.")


def test_a_class_without_training_example_is_a_gap(tmp_path):
  arrays = _labelled([0, 1, 3, 3, 1, 0], y_test=(0, 2, 3))
  assert _npz_error(tmp_path, arrays) == (
      "data.path=P: num_classes inferred as max label + 1 = 4, but 1 class (2) has no example "
      "in y_train; set --config.data.num_classes to the true number of classes (every label "
      "must then lie in [0, num_classes)) or fix the labels.")
  ds = data.load(_config(name="npz", path=str(tmp_path / "x.npz"), num_classes=4))
  assert ds.num_classes == 4  # stated, so a class without examples is allowed


def test_num_classes_key_in_the_file_gives_the_head_size(tmp_path):
  arrays = _labelled(np.arange(30) % 10, num_classes=np.int64(12))
  path = _save(tmp_path / "x.npz", **arrays)
  ds = data.load(_config(name="npz", path=path))
  assert ds.num_classes == 12 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.y_train, np.arange(30) % 10)
  assert data.load(_config(name="npz", path=path, num_classes=12)).num_classes == 12
  assert _npz_error(tmp_path, arrays, num_classes=10) == (
      "data.num_classes=10 disagrees with the 12 classes of data.path=P (its num_classes "
      "key); allowed: 0 (use 12) or 12.")


def test_num_classes_key_must_be_one_positive_integer(tmp_path):
  for bad in (np.float64(12.0), np.array([10, 12]), np.int64(0)):
    message = _npz_error(tmp_path, _labelled(np.arange(6) % 3, num_classes=bad))
    assert message.startswith("data.path=P: num_classes is ")
    assert message.endswith("; expected one integer in [1, 2147483647].")


def test_data_num_classes_when_the_file_has_none(tmp_path):
  path = _save(tmp_path / "x.npz", **_labelled(np.arange(6) % 3))
  assert data.load(_config(name="npz", path=path)).num_classes == 3
  assert data.load(_config(name="npz", path=path, num_classes=7)).num_classes == 7
  with pytest.raises(HfcError, match=r"^data.num_classes=-1 is out of range; allowed: \[0, "):
    data.load(_config(name="npz", path=path, num_classes=-1))


def test_inferred_num_classes_is_logged(tmp_path, caplog):
  path = _save(tmp_path / "x.npz", **_labelled(np.arange(6) % 3))
  with caplog.at_level("INFO", logger="absl"):   # whatever verbosity absl was left at
    data.load(_config(name="npz", path=path))
  assert f"data.path={path!r}: num_classes=3, inferred as max label + 1" in caplog.text


def test_whole_float_labels_are_accepted_others_refused(tmp_path):
  path = _save(tmp_path / "x.npz", **_labelled(np.arange(6.0) % 3, y_test=(0.0, 2.0)))
  ds = data.load(_config(name="npz", path=path))
  assert ds.y_train.dtype == np.int32 and ds.num_classes == 3
  np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 0, 1, 2])
  assert _npz_error(tmp_path, _labelled([0.0, 1.0, 2.5, np.nan, 2.0])) == (
      "data.path=P: y_train has dtype float64 with 2 non-whole values, e.g. 2.5; "
      "expected integer class ids (floats only when every value is a whole number).")
  for labels, dtype in (([True, False, True], "bool"), (["0", "1", "2"], "<U1")):
    assert _npz_error(tmp_path, _labelled(labels)) == (
        f"data.path=P: y_train has dtype {dtype}; expected integer class ids (floats only "
        "when every value is a whole number).")


def test_negative_labels_are_outside_the_range(tmp_path):
  assert _npz_error(tmp_path, _labelled([0, 1, 2], y_test=(0, -1, -1, -7))) == (
      "data.path=P: y_test has 3 labels outside [0, 3): -1 (2 times), -7 (1 time); allowed: "
      "class ids 0..2 (num_classes=3, inferred as max label + 1).")


@pytest.mark.parametrize("case,message", [
    ("float images", "x_train has dtype float32; expected uint8 in [0, 255]."),
    ("5-d images", "x_test has shape (3, 4, 4, 3, 1); expected (N, H, W) or (N, H, W, C)."),
    ("size mismatch", "x_train images are (4, 4, 3) but x_test images are (6, 6, 3); "
                      "expected the same (H, W, C).")])
def test_npz_image_errors_are_one_exact_line(tmp_path, case, message):
  arrays = _labelled(np.arange(6) % 3)
  if case == "float images":
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
  elif case == "5-d images":
    arrays["x_test"] = arrays["x_test"][..., None]
  else:
    arrays["x_test"] = np.zeros((3, 6, 6, 3), np.uint8)
  assert _npz_error(tmp_path, arrays) == f"data.path=P: {message}"


def test_idx_labels_are_checked_too(tmp_path):
  path = _write_idx_dir(tmp_path / "mnist", _idx_arrays())  # class 5 only in the test set
  with pytest.raises(HfcError) as info:
    data.load(_config(name="idx", path=path))
  assert str(info.value) == (
      f"data.path={path!r}: num_classes inferred as max label + 1 = 6, but 1 class (5) has no "
      "example in train-labels-idx1-ubyte; set --config.data.num_classes to the true number "
      "of classes (every label must then lie in [0, num_classes)) or fix the labels.")
  with pytest.raises(HfcError, match=r"t10k-labels-idx1-ubyte has 1 label outside \[0, 5\)"):
    data.load(_config(name="idx", path=path, num_classes=5))


def test_metadata_num_classes_wins_and_must_agree():
  kwargs = dict(num_train=100, num_test=20)
  assert data.load(_config(num_classes=10, **kwargs)).num_classes == 10
  with pytest.raises(HfcError) as info:
    data.load(_config(num_classes=12, **kwargs))
  assert str(info.value) == ("data.num_classes=12 disagrees with the 10 classes of "
                             "data.name='embedded' (the embedded set); allowed: 0 (use 10) or 10.")


def test_main_refuses_an_empty_test_set_before_training(tmp_path):
  arrays = _labelled(np.arange(64) % 4, size=8)
  arrays["x_test"], arrays["y_test"] = np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64)
  path = _save(tmp_path / "x.npz", **arrays)
  config = tiny_config(**{"data.name": "npz", "data.path": path, "eval.radii": (2,)})
  with pytest.raises(HfcError) as info:
    main.run(config, str(tmp_path / "run"))
  assert str(info.value) == (
      f"data.path={path!r}: x_test holds no images; the test set must hold at least one "
      "image.")
  assert not (tmp_path / "run").exists()   # the new workdir is removed again
