"""The Fourier heat map (`--config.mode=fourier_heatmap`): basis images, the mode against
a direct loop, the low-pass model's exact invariance, compare, bad input, the bench."""

import functools
import json
import math
import os

import jax
import numpy as np
import pytest

from hfc_jax import errors, main, sharding, train
from hfc_jax.analysis import common, fourier_heatmap
from hfc_jax.benchmarks import driver
from tests.conftest import assert_refused_in_process, tiny_config

SIZE = 16
# eval.batch_size 32: `batch_size=0` (the run's own) scores 20 images in one batch of
# 32 rows, not 128.
TINY = {"data.num_train": 256, "data.num_test": 120, "data.image_size": SIZE,
        "train.epochs": 1, "eval.radii": (4, 6), "eval.train_subset": 64,
        "eval.batch_size": 32}


# ---------------------------------------------------------------------------
# An independent NumPy transcription of the recipe
# ---------------------------------------------------------------------------
def _conjugate(i: int, j: int, height: int, width: int) -> tuple[int, int]:
  """Centred position of the frequency -k, where (i, j) holds k = (i - H//2, j - W//2)."""
  return (-(i - height // 2) + height // 2) % height, (-(j - width // 2) + width // 2) % width


def _numpy_basis(i: int, j: int, height: int, width: int) -> np.ndarray:
  """Real part of the inverse FFT of a spectrum holding 1 at k and at -k, unit L2 norm."""
  spectrum = np.zeros((height, width), np.complex128)
  ki, kj = i - height // 2, j - width // 2
  spectrum[ki % height, kj % width] = 1.0
  spectrum[-ki % height, -kj % width] = 1.0
  image = np.fft.ifft2(spectrum)
  assert np.abs(image.imag).max() < 1e-12      # Hermitian spectrum: a real image
  return image.real / np.linalg.norm(image.real)


@functools.partial(jax.jit, static_argnums=3)
def _signs(seed, pair, images, channels):
  """The documented signs: rademacher(fold_in(fold_in(key(seed), pair), n), (C,))."""
  key = jax.random.fold_in(jax.random.key(seed), pair)
  return jax.vmap(lambda n: jax.random.rademacher(jax.random.fold_in(key, n), (channels,),
                                                  dtype=np.float32))(images)


def _cross_entropy(logits, labels):
  """Per-row cross-entropy of float logits (N, K) and int labels, in float64."""
  z = logits.astype(np.float64)
  top = z.max(axis=-1, keepdims=True)
  log_norm = top[:, 0] + np.log(np.sum(np.exp(z - top), axis=-1))
  return log_norm - z[np.arange(len(z)), labels]


def _direct_loop(functional, params, model_state, x, y, *, eps, batch_size, seed):
  """Error rate and mean loss (H, W) at every frequency (both halves computed), each
  batch of real images scored unpadded; plus, per frequency, the number of images whose
  top-2 logits lie within 1e-4 (near ties, which float rounding could flip)."""
  n, height, width, channels = x.shape
  logits_fn = jax.jit(functional.logits)
  error, loss, ties = (np.zeros((height, width)) for _ in range(3))
  for i in range(height):
    for j in range(width):
      pair = min(i * width + j, int(np.ravel_multi_index(_conjugate(i, j, height, width),
                                                         (height, width))))
      signs = np.asarray(_signs(seed, pair, np.arange(n), channels))
      delta = eps * signs[:, None, None, :] * _numpy_basis(i, j, height, width)[None, :, :, None]
      xp = np.clip(x + delta, 0.0, 1.0).astype(np.float32)
      for start in range(0, n, batch_size):
        logits = np.asarray(logits_fn(params, model_state, xp[start:start + batch_size]))
        labels = y[start:start + batch_size]
        top2 = np.sort(logits, axis=-1)[:, -2:]
        ties[i, j] += np.sum(top2[:, 1] - top2[:, 0] < 1e-4)
        error[i, j] += np.sum(np.argmax(logits, -1) != labels) / n
        loss[i, j] += np.sum(_cross_entropy(logits, labels)) / n
  return error, loss, ties


# ---------------------------------------------------------------------------
# Basis images and frequency bookkeeping
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(8, 8), (16, 16), (7, 7), (6, 5), (4, 6)])
def test_basis_images_are_real_unit_and_two_point(height, width):
  index = np.arange(height * width)
  images = np.asarray(jax.jit(jax.vmap(functools.partial(
      fourier_heatmap.basis_image, height=height, width=width)))(index))
  assert images.dtype == np.float32 and images.shape == (height * width, height, width)
  np.testing.assert_allclose(np.linalg.norm(images.reshape(len(index), -1), axis=1), 1.0,
                             atol=1e-6)
  self_conjugate = 0
  for f in index:
    i, j = divmod(int(f), width)
    ci, cj = _conjugate(i, j, height, width)
    assert fourier_heatmap.conjugate_index(f, height, width) == ci * width + cj
    spectrum = np.fft.fftshift(np.fft.fft2(images[f].astype(np.float64)))
    support = np.argwhere(np.abs(spectrum) > 1e-4)
    expected = {(i, j), (ci, cj)}
    assert {tuple(p) for p in support} == expected, (height, width, i, j)
    self_conjugate += len(expected) == 1
    np.testing.assert_allclose(images[f], _numpy_basis(i, j, height, width), atol=2e-6)
  # Self-conjugate points: DC, plus the Nyquist row / column / corner of even sides.
  assert self_conjugate == (2 if height % 2 == 0 else 1) * (2 if width % 2 == 0 else 1)
  pairs = fourier_heatmap.frequency_indices(height, width)
  assert len(pairs) == (height * width + self_conjugate) // 2
  both = np.concatenate([pairs, fourier_heatmap.conjugate_index(pairs, height, width)])
  assert set(both.tolist()) == set(index.tolist())        # every frequency covered


def test_chunks_cover_every_pair_once_in_equal_calls():
  pairs = fourier_heatmap.frequency_indices(32, 32)
  assert len(pairs) == 514
  calls = fourier_heatmap.chunk_entries(pairs, 4.0, per_call=64)
  assert len(calls) == 9 and {len(c[0]) for c in calls} == {58}    # 515 entries + 7 clean
  index = np.concatenate([c[0] for c in calls])
  eps = np.concatenate([c[1] for c in calls])
  assert eps[0] == 0 and np.all(eps[1:515] == 4.0) and np.all(eps[515:] == 0)
  np.testing.assert_array_equal(index[1:515], pairs)
  near = fourier_heatmap.frequency_indices(32, 32, max_radius=2)
  assert len(near) == (13 + 1) // 2            # 13 lattice points with |k| <= 2
  assert fourier_heatmap.default_eps(32, 32) == 4.0
  assert fourier_heatmap.default_eps(16, 16) == 2.0


# ---------------------------------------------------------------------------
# The mode on trained tiny workdirs
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """Trained on 8 devices, 16x16 embedded images: the paper's batch-statistic BN, none
  (same test set), and one with another test set."""
  root = tmp_path_factory.mktemp("heatmap")
  settings = {"bn": {}, "none": {"model.norm": "none"},
              "other": {"data.num_test": 60, "model.norm": "none"}}
  out = {}
  for name, extra in settings.items():
    config = tiny_config(**{**TINY, **extra})
    train.train_and_evaluate(config, str(root / name), mesh=sharding.make_mesh(8))
    out[name] = (str(root / name), config)
  return out


def _heatmap_config(config, **overrides):
  config = config.copy_and_resolve_references()
  config.mode = "fourier_heatmap"
  config.fourier_heatmap.num_images = 12
  config.fourier_heatmap.batch_size = 5        # 12 images: the last batch of 2 is padded
  config.fourier_heatmap.frequencies_per_call = 16
  config.fourier_heatmap.seed = 3
  for key, value in overrides.items():
    config.fourier_heatmap[key] = value
  return config


@pytest.mark.slow
def test_mode_equals_a_direct_loop_over_every_frequency(workdirs, capsys):
  workdir, config = workdirs["bn"]
  results = main.run(_heatmap_config(config), workdir)
  out = os.path.join(workdir, fourier_heatmap.MODE)
  assert sorted(os.listdir(out)) == ["heatmap.json", "heatmap.npy", "heatmap.png",
                                     "loss.npy", "provenance.json"]
  heat, loss = np.load(os.path.join(out, "heatmap.npy")), np.load(os.path.join(out, "loss.npy"))
  assert heat.shape == loss.shape == (SIZE, SIZE) and heat.dtype == np.float32
  on_disk = json.load(open(os.path.join(out, "heatmap.json")))
  assert on_disk == json.loads(json.dumps(results))
  np.testing.assert_array_equal(np.array(on_disk["errors"], np.float32), heat)
  assert on_disk["eps"] == 2.0 and on_disk["num_images"] == 12 and on_disk["radii"] == [4, 6]
  assert on_disk["frequencies"] == (SIZE * SIZE + 4) // 2 and on_disk["compare"] == []
  # The loop: every (i, j) on its own, NumPy basis, the documented signs, unpadded batches.
  trained = common.restore(workdir)
  x, y, _ = common.load_test_set(trained, 12)
  x = x.astype(np.float32) / 255.0
  ref_error, ref_loss, ties = _direct_loop(trained.functional, trained.params,
                                          trained.model_state, x, y, eps=2.0, batch_size=5,
                                          seed=3)
  # Equal wherever float rounding cannot flip a prediction; elsewhere by the near ties.
  sure = ties == 0
  assert sure.mean() > 0.95
  np.testing.assert_allclose(heat[sure], ref_error[sure], atol=1e-6)
  assert np.all(np.abs(heat - ref_error) <= ties / 12 + 1e-6)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)
  conjugates = [_conjugate(i, j, SIZE, SIZE) for i in range(SIZE) for j in range(SIZE)]
  np.testing.assert_array_equal(heat.ravel(), [heat[c] for c in conjugates])
  logits_fn = jax.jit(trained.functional.logits)
  clean = np.concatenate([np.argmax(logits_fn(trained.params, trained.model_state,
                                              x[s:s + 5]), -1) for s in range(0, 12, 5)])
  assert results["clean_error"] == pytest.approx(np.mean(clean != y), abs=1e-6)
  assert len(np.unique(heat)) > 3              # the map is not flat
  assert "fourier_heatmap" in capsys.readouterr().out


@pytest.mark.slow
def test_a_lowpass_model_ignores_every_frequency_outside_its_disc(workdirs):
  """Behind a low-pass input layer at radius R (keeps |k| < R) the trained model sees
  clip(x + eps s U) filtered. When the clip does not bite (mid-grey images, 0.25 + x / 2,
  and eps max|U| < 0.25) a basis image with |k| >= R is removed entirely, so the error
  at every such frequency is the clean error, exactly (up to float rounding in the FFT,
  far below the smallest top-2 logit gap, checked)."""
  radius, eps, mesh = 4.0, 2.0, sharding.make_mesh(8)
  trained = common.restore(workdirs["bn"][0], mesh=mesh)
  cfg = trained.config.copy_and_resolve_references()
  cfg.model.input_filter, cfg.model.filter_radius = "lowpass", radius
  lowpass, _, _ = common.abstract_model(cfg, trained.num_classes, trained.channels,
                                       trained.image_size)
  x, y, _ = common.load_test_set(trained, 20)     # two batches of 10
  x = 0.25 + 0.5 * x.astype(np.float32) / 255.0
  basis = jax.jit(jax.vmap(functools.partial(   # the program of test_basis_images_...
      fourier_heatmap.basis_image, height=SIZE, width=SIZE)))(np.arange(SIZE * SIZE))
  peak = float(np.abs(np.asarray(basis)).max())
  assert x.min() >= 0.25 and x.max() <= 0.75 and eps * peak < 0.25   # no clipping
  variables = (trained.params, trained.model_state)
  placed = common.batches(x, y, mesh=mesh, batch_size=10, field="batch")
  result = fourier_heatmap.heatmap(
      fourier_heatmap.make_chunk_fn(lowpass.logits, mesh), variables, placed, height=SIZE,
      width=SIZE, eps=eps, batch_size=10, seed=0, per_call=40)
  logits = np.concatenate([np.asarray(jax.jit(lowpass.logits)(*variables, x[s:s + 10]))
                           for s in range(0, 20, 10)])
  top2 = np.sort(logits, axis=-1)[:, -2:]
  assert np.min(top2[:, 1] - top2[:, 0]) > 1e-3
  assert result["clean_error"] == pytest.approx(np.mean(np.argmax(logits, -1) != y))
  ki, kj = np.meshgrid(np.arange(SIZE) - SIZE // 2, np.arange(SIZE) - SIZE // 2,
                       indexing="ij")
  outside = np.sqrt(ki ** 2 + kj ** 2) >= radius          # the filter's boundary: dist < r
  assert outside.sum() == SIZE * SIZE - 45                  # 45 lattice points with |k| < 4
  np.testing.assert_array_equal(result["errors"][outside], result["clean_error"])
  np.testing.assert_allclose(result["loss"][outside], result["clean_loss"], rtol=1e-5)
  # Not vacuous: inside the disc the perturbation does change predictions.
  assert np.any(result["errors"][~outside] != result["clean_error"])


@pytest.mark.slow
def test_compare_draws_models_side_by_side_on_one_scale(workdirs):
  (bn, config), (none, _) = workdirs["bn"], workdirs["none"]
  alone = main.run(_heatmap_config(config, num_images=20, batch_size=0), none)
  both = main.run(_heatmap_config(config, num_images=20, batch_size=0, compare=(none,)), bn)
  assert both["batch_size"] == 32                      # 0: the run's eval.batch_size
  assert [c["name"] for c in both["compare"]] == ["none"]
  assert both["compare"][0]["errors"] == alone["errors"]
  assert both["compare"][0]["clean_error"] == alone["clean_error"]
  np.testing.assert_array_equal(np.load(os.path.join(bn, "fourier_heatmap", "heatmap.npy")),
                                np.array(both["errors"], np.float32))
  fig = fourier_heatmap.heatmap_figure([both] + both["compare"], both)
  images = [im for ax in fig.axes for im in ax.get_images()]
  assert len(images) == 2 and images[0].get_clim() == images[1].get_clim()
  vmax = max(np.max(both["errors"]), np.max(alone["errors"]))
  assert images[0].get_clim() == pytest.approx((0.0, vmax))
  assert sum(len(ax.patches) for ax in fig.axes) == 4  # eval.radii (4, 6) per panel
  assert "eps=2" in fig.texts[0].get_text()
  # max_radius: only |k| <= 3 computed, with the values of the full map (same signs).
  near = main.run(_heatmap_config(config, num_images=20, batch_size=0, max_radius=3.0), none)
  ki, kj = np.meshgrid(np.arange(SIZE) - SIZE // 2, np.arange(SIZE) - SIZE // 2,
                       indexing="ij")
  inside = np.sqrt(ki ** 2 + kj ** 2) <= 3
  errors_near = np.array(near["errors"], np.float64)          # null -> NaN
  assert near["frequencies"] == (29 + 1) // 2 and np.all(np.isnan(errors_near[~inside]))
  np.testing.assert_array_equal(errors_near[inside], np.array(alone["errors"])[inside])
  heat = np.load(os.path.join(none, "fourier_heatmap", "heatmap.npy"))
  assert np.isnan(heat).sum() == SIZE * SIZE - 29


def _only_error_line(function, *args):
  with pytest.raises(errors.HfcError) as raised:
    function(*args)
  message = str(raised.value)
  assert "\n" not in message
  return message


@pytest.mark.slow
def test_bad_input_is_one_line_naming_the_field_and_writes_nothing(workdirs, tmp_path):
  other, config = workdirs["other"]
  empty = str(tmp_path / "empty")
  cases = [({"eps": 0.0}, "fourier_heatmap.eps=0.0 must be positive"),
           ({"eps": -1.0}, "fourier_heatmap.eps=-1.0 must be positive"),
           ({"num_images": 61}, "fourier_heatmap.num_images=61 exceeds the 60 test images"),
           ({"frequencies_per_call": 0}, "fourier_heatmap.frequencies_per_call=0 is out of range"),
           ({"compare": (empty,)}, "fourier_heatmap.compare: workdir="),
           ({"compare": (workdirs["bn"][0],)},
            "fourier_heatmap.compare: '" + workdirs["bn"][0] + "' holds a model of another "
            "test set than '" + other + "' (data num_test=120 vs 60)")]
  for overrides, expected in cases:
    message = _only_error_line(main.run, _heatmap_config(config, **overrides), other)
    assert expected in message, message
  assert "holds no checkpoint" in _only_error_line(main.run, _heatmap_config(config), empty)
  assert not os.path.exists(os.path.join(other, fourier_heatmap.MODE))
  # From flags as main parses them: one line, nothing written (tests/main_test.py
  # runs the process: exit status 2).
  assert_refused_in_process(other, "fourier_heatmap.eps=-1", "--config.mode=fourier_heatmap",
                            "--config.fourier_heatmap.eps=-1", tiny=False)


# ---------------------------------------------------------------------------
# The bench section
# ---------------------------------------------------------------------------
def test_bench_heatmap_section_prints_both_throughputs_and_the_target(tmp_path, capsys):
  path = str(tmp_path / "bench.json")
  results = driver.run(["heatmap"], tiny=True, json_path=path)
  assert set(results) == {"meta", "heatmap"}
  r = results["heatmap"]["small_cnn"]
  assert r["batch_size"] == 32 and r["frequencies_per_call"] == 4
  for key in ("plain_eval", "heatmap"):
    for value in (r[key]["compile_s"], r[key]["warmup_s"], r[key]["step_s"]["median"],
                  r[key]["images_per_s"]["min"], r[key]["images_per_s"]["max"]):
      assert math.isfinite(value) and value > 0
  heat, plain = r["heatmap"]["images_per_s"]["median"], r["plain_eval"]["images_per_s"]["median"]
  assert r["ratio"] == pytest.approx(heat / plain)
  assert r["map_32x32_1000_images_s"] == pytest.approx(515 * 1000 / heat)
  # Heat-map calls count 4 perturbed images per image of the batch.
  assert r["heatmap"]["step_s"]["median"] == pytest.approx(4 * 32 / heat, rel=0.5)
  printed = capsys.readouterr().out
  verdict = "ok" if r["ratio"] >= 0.9 else "MISSED"
  assert "small_cnn heat map / plain eval img/s" in printed and f">= 0.9: {verdict}" in printed
  assert "small_cnn plain eval b32" in printed and "heat map x4 freq b32" in printed
  with open(path) as f:
    assert json.load(f) == json.loads(json.dumps(results))
