r"""Fourier heat map of a trained workdir (`--config.mode=fourier_heatmap`).

  python -m hfc_jax.main --config=configs/default.py --workdir=W --config.mode=fourier_heatmap

Yin et al. (NeurIPS 2019), "A Fourier perspective on model robustness", section 3: for
every frequency (i, j) of the centred spectrum of an H x W image, the real Fourier
basis image U_ij (unit L2 norm, its FFT non-zero only at (i, j) and at the conjugate
point) is added to each test image as clip(x + eps * s * U_ij, 0, 1), with a random
sign s in {-1, +1} drawn per image and per channel, and the model's test error under
that perturbation is recorded at (i, j). Zero frequency sits at (H // 2, W // 2), as in
`hfc_jax.frequency`.

The basis image of frequency (ki, kj) = (i - H // 2, j - W // 2) is
`cos(2 pi (ki y / H + kj x / W))` divided by its L2 norm, sqrt(HW / 2), or sqrt(HW)
at the self-conjugate frequencies (the zero frequency and, for even sizes, the Nyquist
points), where the cosine is +-1. (i, j) and its conjugate have the same basis image
and, by construction, the same signs, so only one of each pair is computed and the
other is mirrored: the map is exactly conjugate-symmetric.

eps is the L2 norm of the perturbation of each channel, in [0, 1] pixel units. Default
(`fourier_heatmap.eps=None`): 4 * sqrt(H W) / 32, the paper's eps = 4 for 32x32
CIFAR-10 images, scaled so that the per-pixel amplitude, eps * sqrt(2 / (H W)) = 0.177,
is the same at every image size (for square images eps = 4 * H / 32: 3.5 at 28x28).

Randomness: the signs of image n (its index in the test set) at the frequency pair of
canonical index f (the smaller flat index H-major, of (i, j) and its conjugate) are
`jax.random.rademacher(fold_in(fold_in(key(seed), f), n), (C,))`: the same whatever
the batch size, mesh or number of images.

Speed: basis images and signs are made on device; each jitted call scores a chunk of
`fourier_heatmap.frequencies_per_call` frequencies on one sharded, padded batch of
images (`lax.map` over the frequencies, one forward pass each, the padding rows masked
out of batch statistics as in the per-epoch evaluation); sums stay on device and are
fetched once. The clean error is one more entry of the first chunk (eps 0).

Writes to `<workdir>/fourier_heatmap/`:
  * `heatmap.npy`: float32 (H, W) test error rate per frequency, zero frequency at the
    centre (NaN beyond `fourier_heatmap.max_radius` when that is set);
    `loss.npy`: the mean cross-entropy, same layout.
  * `heatmap.json`: the settings, the clean error and loss, `errors` and `loss` as
    nested (H, W) lists, and the same for every `fourier_heatmap.compare` workdir.
  * `heatmap.png`: the map(s) side by side on one colour scale, with circles at each
    run's own `eval.radii`.
"""

import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from hfc_jax import errors, evaluate, sharding
from hfc_jax.analysis import common
from hfc_jax.workdir.layout import Workdir

MODE = "fourier_heatmap"
REFERENCE_EPS = 4.0    # Yin et al.'s L2 norm on 32x32 CIFAR-10 images in [0, 1]
REFERENCE_SIZE = 32


# ---------------------------------------------------------------------------
# Frequencies and basis images
# ---------------------------------------------------------------------------
def conjugate_index(index, height: int, width: int):
  """Flat (H-major) centred index of the frequency conjugate to `index` (ints or int
  arrays, numpy or jnp): (i, j) -> ((2 (H // 2) - i) mod H, (2 (W // 2) - j) mod W)."""
  i, j = index // width, index % width
  return ((2 * (height // 2) - i) % height) * width + (2 * (width // 2) - j) % width


def frequency_indices(height: int, width: int, max_radius: float = 0.0) -> np.ndarray:
  """Canonical flat centred indices, one per conjugate pair (the smaller of the two),
  ascending: int32 (U,), U = (H W + self-conjugate points) / 2 (514 at 32x32). With
  max_radius > 0 only frequencies with |k| <= max_radius."""
  index = np.arange(height * width)
  keep = index <= conjugate_index(index, height, width)
  if max_radius > 0:
    ki, kj = index // width - height // 2, index % width - width // 2
    keep &= np.sqrt(ki.astype(np.float64) ** 2 + kj ** 2) <= max_radius
  return index[keep].astype(np.int32)


def basis_image(index: jax.Array, height: int, width: int) -> jax.Array:
  """The real Fourier basis image of flat centred index `index` (int scalar, may be
  traced): float32 (H, W) of unit L2 norm whose FFT is non-zero only at the index and
  its conjugate. The phase is reduced modulo 1 in integers first, so it is exact."""
  ki = index // width - height // 2
  kj = index % width - width // 2
  y = jnp.arange(height, dtype=jnp.int32)[:, None]
  x = jnp.arange(width, dtype=jnp.int32)[None, :]
  turns = (ki * y * width + kj * x * height) % (height * width)   # phase, in 1 / (H W)
  wave = jnp.cos((2 * jnp.pi / (height * width)) * turns.astype(jnp.float32))
  self_conjugate = ((2 * ki) % height == 0) & ((2 * kj) % width == 0)
  norm = jnp.where(self_conjugate, math.sqrt(height * width), math.sqrt(height * width / 2))
  return wave / norm


def random_signs(key: jax.Array, index: jax.Array, rows: jax.Array, channels: int
                 ) -> jax.Array:
  """float32 (B, C) signs in {-1, +1}: row b gets rademacher(fold_in(fold_in(key,
  index), rows[b]), (C,)), `rows` (B,) int being the images' indices in the test set."""
  pair_key = jax.random.fold_in(key, index)
  one = lambda n: jax.random.rademacher(jax.random.fold_in(pair_key, n), (channels,),
                                        dtype=jnp.float32)
  return jax.vmap(one)(rows)


def perturb(x: jax.Array, basis: jax.Array, signs: jax.Array, eps: jax.Array) -> jax.Array:
  """clip(x + eps * s * U, 0, 1): x (B, H, W, C) in [0, 1], basis U (H, W), signs s
  (B, C), eps a scalar L2 norm per channel. Returns float32 (B, H, W, C)."""
  delta = (eps * signs)[:, None, None, :] * basis[None, :, :, None]
  return jnp.clip(x + delta, 0.0, 1.0)


# ---------------------------------------------------------------------------
# The jitted chunk: several frequencies on one batch
# ---------------------------------------------------------------------------
def chunk_step(params, model_state, images, labels, mask, first, indices, eps, key, *,
               logits_fn) -> dict[str, jax.Array]:
  """Errors and loss of one (padded) batch under each of F perturbations.

  Args:
    params, model_state: the model's variables (pure dicts).
    images: (B, H, W, C) uint8 or float in [0, 1]; labels: (B,) int; mask: (B,) 0/1,
      real rows first (`common.batches`' layout).
    first: int scalar, the test-set index of row 0 (row b is image first + b).
    indices: (F,) int32 flat centred frequency indices; eps: (F,) float32 L2 norms
      (eps 0 scores the clean images).
    key: the heat map's PRNG key.
    logits_fn: (params, model_state, images, mask=...) -> (N, K) logits; the mask keeps
      the padding rows out of batch statistics.

  Returns:
    {'wrong': (F,) float32 misclassified real images, 'loss': (F,) summed
    cross-entropy, 'count': real images}. The frequencies run one after another
    (`lax.map`, one forward pass of the whole batch each, as `evaluate.eval_step`
    scores its variants).
  """
  x = evaluate.to_float(images)
  height, width, channels = x.shape[1:]
  rows = first + jnp.arange(x.shape[0], dtype=jnp.int32)

  def one(entry):
    index, norm = entry
    signs = random_signs(key, index, rows, channels)
    xp = perturb(x, basis_image(index, height, width), signs, norm)
    logits = logits_fn(params, model_state, xp, mask=mask)
    wrong = (jnp.argmax(logits, axis=-1) != labels).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(wrong * mask), jnp.sum(loss * mask)

  wrong, loss = jax.lax.map(one, (indices, eps))
  return {"wrong": wrong, "loss": loss, "count": jnp.sum(mask)}


def make_chunk_fn(logits_fn, mesh):
  """Jits `chunk_step` for a mesh: replicated variables and outputs, sharded batch."""
  step = functools.partial(chunk_step, logits_fn=logits_fn)
  return jax.jit(step, out_shardings=sharding.replicated(mesh))


def chunk_entries(indices: np.ndarray, eps: float, per_call: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """The (indices, eps) of each call: a clean entry (index 0, eps 0) and then every
  index at eps, in ceil((U + 1) / per_call) equal chunks padded with clean entries (so
  every call has one shape and the padding wastes less than one entry per chunk)."""
  all_index = np.concatenate([[0], indices]).astype(np.int32)
  all_eps = np.concatenate([[0.0], np.full(len(indices), eps)]).astype(np.float32)
  calls = math.ceil(len(all_index) / per_call)
  size = math.ceil(len(all_index) / calls)
  pad = calls * size - len(all_index)
  all_index = np.concatenate([all_index, np.zeros(pad, np.int32)])
  all_eps = np.concatenate([all_eps, np.zeros(pad, np.float32)])
  return [(all_index[c * size:(c + 1) * size], all_eps[c * size:(c + 1) * size])
          for c in range(calls)]


def heatmap(chunk_fn, variables, placed: list, *, height: int, width: int, eps: float,
            batch_size: int, seed: int, per_call: int, max_radius: float = 0.0) -> dict:
  """The heat map of one model over the placed batches (`common.batches` of
  `batch_size` real images each): every chunk of frequencies on each batch in turn,
  each chunk's sums added up on device by `evaluate.accumulate` and fetched once.

  Returns {'errors', 'loss': float32 (H, W) error rate and mean loss per frequency,
  zero frequency at the centre (NaN where not computed); 'clean_error', 'clean_loss';
  'frequencies': pairs computed; 'seconds': wall time}.
  """
  t0 = time.perf_counter()
  indices = frequency_indices(height, width, max_radius)
  key = jax.random.key(seed)
  chunks = chunk_entries(indices, eps, per_call)

  def all_chunks(images, labels, mask, first):   # one batch, every chunk: [chunk sums]
    return [sharding.one_at_a_time_on_cpu(
        chunk_fn(*variables, images, labels, mask, first, chunk_index, chunk_eps, key))
            for chunk_index, chunk_eps in chunks]

  sums = evaluate.accumulate(all_chunks, ((*batch, np.int32(b * batch_size))
                                          for b, batch in enumerate(placed)))
  count = max(float(sums[0]["count"]), 1.0)
  wrong = np.concatenate([s["wrong"] for s in sums]) / count
  loss = np.concatenate([s["loss"] for s in sums]) / count
  return {"errors": mirror(wrong[1:1 + len(indices)], indices, height, width),
          "loss": mirror(loss[1:1 + len(indices)], indices, height, width),
          "clean_error": float(wrong[0]), "clean_loss": float(loss[0]),
          "frequencies": int(len(indices)), "seconds": time.perf_counter() - t0}


def mirror(values: np.ndarray, indices: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 (H, W) map with `values` (U,) at `indices` and at their conjugates, NaN
  elsewhere."""
  out = np.full(height * width, np.nan, np.float32)
  out[indices] = values
  out[conjugate_index(indices, height, width)] = values
  return out.reshape(height, width)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def check_heatmap_config(fc) -> None:
  """One-line HfcErrors for the `fourier_heatmap.*` fields."""
  if fc.eps is not None and not fc.eps > 0:
    raise errors.HfcError(f"fourier_heatmap.eps={fc.eps!r} must be positive (the L2 norm "
                          "of each channel's perturbation; None: 4 * H / 32).")
  errors.check_range("fourier_heatmap.num_images", fc.num_images, 0, None, integer=True)
  errors.check_range("fourier_heatmap.batch_size", fc.batch_size, 0, None, integer=True)
  errors.check_range("fourier_heatmap.frequencies_per_call", fc.frequencies_per_call, 1,
                     None, integer=True)
  errors.check_range("fourier_heatmap.max_radius", fc.max_radius, 0.0, None)
  errors.check_range("fourier_heatmap.seed", fc.seed, 0, None, integer=True)
  for workdir in fc.compare:
    if not isinstance(workdir, str) or not workdir:
      raise errors.HfcError(f"fourier_heatmap.compare={tuple(fc.compare)!r} must list "
                            "workdirs.")


def default_eps(height: int, width: int) -> float:
  """4 * sqrt(H W) / 32: Yin et al.'s eps = 4 at 32x32, same per-pixel amplitude."""
  return REFERENCE_EPS * math.sqrt(height * width) / REFERENCE_SIZE


def run(config, workdir: Workdir) -> dict:
  """Computes the heat map of `workdir` (and of `fourier_heatmap.compare`), writes
  `<workdir>/fourier_heatmap/`; returns the results. Every check runs first."""
  fc = config.fourier_heatmap
  check_heatmap_config(fc)
  mesh = sharding.make_mesh(config.num_devices)
  models = common.restore_compared(workdir, fc.compare, field="fourier_heatmap.compare",
                                   mesh=mesh)
  x, y, dataset = common.load_test_set(models[0][1], fc.num_images,
                                       field="fourier_heatmap.num_images")
  height, width = x.shape[1:3]
  batch_size = fc.batch_size or models[0][1].config.eval.batch_size
  placed = common.batches(x, y, mesh=mesh, batch_size=batch_size,
                          field="fourier_heatmap.batch_size")
  eps = float(fc.eps) if fc.eps is not None else default_eps(height, width)
  settings = {"eps": eps, "num_images": int(len(x)), "batch_size": int(batch_size),
              "seed": int(fc.seed), "max_radius": float(fc.max_radius),
              "image_size": [int(height), int(width)], "data": dataset.name}
  maps = []
  for w, trained in models:
    fn = make_chunk_fn(trained.functional.logits, mesh)
    maps.append(heatmap(fn, (trained.params, trained.model_state), placed, height=height,
                        width=width, eps=eps, batch_size=batch_size, seed=int(fc.seed),
                        per_call=int(fc.frequencies_per_call),
                        max_radius=float(fc.max_radius)))
    _print_summary(w, maps[-1], len(x))
  entries = [_entry(w, t, m) for (w, t), m in zip(models, maps)]
  results = {**settings, **entries[0], "compare": entries[1:]}
  common.write_outputs(common.output_dir(workdir, MODE),
                       json_files={"heatmap.json": results},
                       arrays={"heatmap.npy": maps[0]["errors"], "loss.npy": maps[0]["loss"]},
                       figures={"heatmap.png": heatmap_figure(entries, settings)}, dpi=120)
  return results


def _entry(workdir: str, trained: common.Trained, result: dict) -> dict:
  """One model's part of heatmap.json: NaN (not computed) becomes null."""
  nested = lambda a: [[None if math.isnan(v) else float(v) for v in row] for row in a]
  return {"workdir": workdir, "name": trained.name, "epoch": trained.epoch,
          "step": trained.step, "radii": [float(r) for r in trained.config.eval.radii],
          "clean_error": result["clean_error"], "clean_loss": result["clean_loss"],
          "frequencies": result["frequencies"], "seconds": result["seconds"],
          "errors": nested(result["errors"]), "loss": nested(result["loss"])}


def _print_summary(workdir: str, result: dict, num_images: int) -> None:
  if jax.process_index() != 0:
    return
  errors_map = result["errors"]
  height, width = errors_map.shape
  peak = np.unravel_index(np.nanargmax(errors_map), errors_map.shape)
  images = (result["frequencies"] + 1) * num_images
  print(f"fourier_heatmap {workdir}: {result['frequencies']} frequency pairs x {num_images} "
        f"images in {result['seconds']:.1f} s ({images / result['seconds']:,.0f} img/s); "
        f"clean error {result['clean_error']:.4f}, mean {np.nanmean(errors_map):.4f}, max "
        f"{errors_map[peak]:.4f} at k=({peak[0] - height // 2}, {peak[1] - width // 2})",
        flush=True)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def heatmap_figure(entries: Sequence[dict], settings: dict) -> Figure:
  """The heat maps side by side on one colour scale [0, max error], zero frequency in
  the centre (vertical frequency ki up, horizontal kj right), with a circle at each of
  the model's eval radii; grey where not computed."""
  maps = [np.array(e["errors"], dtype=np.float32) for e in entries]   # None -> NaN
  height, width = maps[0].shape
  vmax = max([float(np.nanmax(m)) for m in maps] + [1e-6])
  extent = (-(width // 2) - 0.5, width - width // 2 - 0.5,
            -(height // 2) - 0.5, height - height // 2 - 0.5)
  cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
  fig = Figure(figsize=(3.6 * len(maps) + 1.2, 4.0), layout="constrained")
  axes = fig.subplots(1, len(maps), squeeze=False)[0]
  for ax, entry, m in zip(axes, entries, maps):
    image = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=vmax, origin="lower", extent=extent,
                      interpolation="nearest")
    for r in entry["radii"]:
      ax.add_patch(Circle((0, 0), r, fill=False, color="white", lw=0.8, ls="--"))
      ax.text(r * 0.7071, r * 0.7071, f"{r:g}", color="white", fontsize=6)
    ax.set_title(f"{entry['name']} (epoch {entry['epoch']})\nclean error "
                 f"{entry['clean_error']:.3f}", fontsize=8)
    ax.set_xlabel("horizontal frequency kj", fontsize=7)
    ax.set_ylabel("vertical frequency ki", fontsize=7)
    ax.tick_params(labelsize=6)
  bar = fig.colorbar(image, ax=list(axes), shrink=0.85)
  bar.set_label("test error", fontsize=8)
  bar.ax.tick_params(labelsize=7)
  fig.suptitle(f"Fourier heat map: error under clip(x + eps s U_ij), eps={settings['eps']:g}"
               f" (L2 per channel), {settings['num_images']} {settings['data']} test images"
               "; circles: eval radii", fontsize=8)
  return fig
