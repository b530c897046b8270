"""Tests for hfc_jax.data: the embedded set, .npz and tfds sources, and the host pipeline."""

import time

import numpy as np
import pytest

from hfc_jax import data
from hfc_jax.data import npz_source, pipeline, synthetic, tfds_source
from hfc_jax.errors import HfcError


def _config(**overrides):
  config = data.default_data_config()
  config.update(overrides)
  return config


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
  b = data.load(_config(num_train=300, num_test=60))
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


def test_embedded_labels_are_balanced_and_texture_agrees_at_hf_prob():
  arrays = synthetic.generate(seed=3, num_train=5000, num_test=100)
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
  plain = synthetic.generate(hf_amplitude=0.0, **kwargs)
  textured = synthetic.generate(**kwargs)
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
  tfds = pytest.importorskip("tensorflow_datasets")
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
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
    pytest.skip("tensorflow is installed")
  except ImportError:
    pass
  _fake_cifar10(str(tmp_path), n_train=3, n_test=2)
  builder = tfds_source.prepared_builder("cifar10", str(tmp_path))

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
  return [labels for _, labels in pipeline.train_batches(x, y, **kwargs)]


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
  kwargs = dict(batch_size=32, seed=4, epoch=1, augment=augment, pad=2, pad_mode="reflect")
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


def test_augmented_batches_are_crops_of_their_images():
  x, y = _indexed(64, size=6)
  x[:] = np.random.default_rng(1).integers(0, 256, x.shape, dtype=np.uint8)
  images, labels = next(pipeline.train_batches(x, y, batch_size=16, seed=0, epoch=0,
                                               augment=True, pad=0, flip=True))
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
                                process_count=4))


def test_prefetch_yields_everything_in_order_and_reraises():
  assert list(pipeline.prefetch(iter(range(50)), size=3)) == list(range(50))

  def failing():
    yield 1
    raise RuntimeError("boom")

  stream = pipeline.prefetch(failing())
  assert next(stream) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(stream)
