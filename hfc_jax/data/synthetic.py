"""The embedded default data set: class shapes in the low frequencies, a class texture in the high.

Nothing is downloaded: `generate(seed=..., ...)` builds the whole set with numpy (10,000 + 2,000
images in about 2 s), and the same arguments always give identical arrays. It is made so that the
paper's phenomenon shows without CIFAR: each label is carried by two cues that live in different
parts of the centred 2-D spectrum, and a CNN may learn either.

How an image is built (values in [0, 1] units; S = image size, default 32; u = S / 32):

1. Class design, drawn once per seed (`make_design`). Each of the 10 classes gets two Gaussian
   blobs, each with a centre in [0.25 S, 0.75 S]^2, a width sigma in [1.5, 3] u pixels and a signed
   RGB colour of norm 0.3; and one texture frequency (|ky|, |kx|) on the lattice ring
   12.5 u <= sqrt(ky^2 + kx^2) <= 15.5 u with |ky|, |kx| <= S/2 - 1. The 10 frequencies are spread
   evenly (by angle order) over the ring's lattice points, then dealt to the classes at random, so
   no two classes share one. The texture is two cosines, at (ky, kx) and its horizontal mirror
   (ky, -kx), each with a fixed random phase and fixed random RGB weights whose largest absolute
   value is `hf_amplitude` (default 0.04), so |texture| <= 2 hf_amplitude. The mirror makes the
   texture's spectrum invariant under a horizontal flip, so flip augmentation does not mix classes.
2. Smooth "semantic" content per image (`_render_lfc`): a grey level 0.5 + U(-0.1, 0.1) per
   channel; a random background field (cosines and sines at the 6 half-plane frequencies with
   0 < |k| <= 2, coefficients N(0, 0.035), independent per channel: about 0.086 standard
   deviation per pixel); the two class blobs, shifted together by N(0, 1.5 u) pixels and each by
   N(0, 0.75 u), widths times log-uniform(0.75, 1.33), colours times U(0.6, 1.4) plus N(0, 0.08)
   per channel; and a distractor blob (centre U(0.2, 0.8) S, width U(1.5, 3) u, random colour of
   norm 0.2). The sum v is squashed smoothly into (0.1, 0.9) by 0.5 + 0.4 tanh((v - 0.5) / 0.4),
   so that no later clipping smears the spectrum. About 99% of this content's (non-DC) energy is
   inside radius 4, 99.98% inside radius 8, and under 0.01% on the texture ring.
3. The texture (`_texture_ids`): with probability `hf_prob` (default 0.9) the image's own class's,
   else another class's drawn uniformly, so the texture agrees with the label on a `hf_prob` share
   of images on average (hf_prob = 0.1 makes it uninformative). It is added and the result rounded
   to uint8; values stay in [0.02, 0.98], so nothing is clipped.

Labels are balanced (index mod 10, shuffled). Train and test use independent random streams of the
same seed and share the class design, so changing `num_test` leaves the training set unchanged.

What to expect, with the paper's disc mask of radius r (`dist < r` in the fftshift-ed spectrum):
- The texture lies entirely at 12.5 <= dist <= 15.5 (32x32), so it is in the HFC for r = 4, 8, 12
  and in the LFC for r >= 16; uint8 rounding adds only white noise of about 0.001.
- HFC images at r = 4..12 look black (zero mean, |value| <= 0.08) yet keep the texture, so a model
  that learnt it classifies them well above chance, at least once each image is rescaled by its
  own maximum (the paper's normalisation); at r = 16 the HFC loses the texture: near chance.
- LFC images at r = 4..12 lose the texture (and at r = 4 some blob detail), so a model trained on
  clean images scores lower there than on clean images; at r = 16 the texture returns and the
  accuracy recovers to the clean level.
- Measured once (seed 0, defaults; 3-layer CNN 32-64-128 with global average pooling, no
  normalisation layers, Adam 1e-3, batch 128, 8 epochs, no augmentation, 2 CPU cores): clean test
  accuracy 0.91 (the model follows the texture on 99.9% of test images); LFC 0.18 at r = 4, 8 and
  12 and 0.91 at r = 16; HFC 0.46 at r = 4..12 as is, 0.59-0.64 when rescaled by its maximum, and
  0.10 at r = 16. With hf_amplitude = 0 the same model reaches 0.51 (still rising): the shapes are
  learnable but slower to learn than the texture, which is the paper's story. A model that also
  learns the shapes keeps more of its accuracy on LFC images at r <= 12.
"""

import dataclasses
import functools

import numpy as np

from hfc_jax.errors import HfcError, check_range

NUM_CLASSES = 10
BAND = (12.5, 15.5)  # texture ring for 32x32 images, in spectrum index units; scales with S / 32
_CHUNK = 2048  # images rendered at a time, to bound memory


@dataclasses.dataclass(frozen=True)
class Design:
  """The fixed per-class content of one seed.

  Attributes:
    centres: (10, 2, 2) float, blob centres (y, x) in pixels.
    sigmas: (10, 2) float, blob widths in pixels.
    colours: (10, 2, 3) float, signed RGB blob colours, norm 0.3.
    frequencies: (10, 2) int, texture frequency (|ky|, |kx|) of each class, used with (ky, -kx).
    textures: (10, S, S, 3) float32, the class textures, |value| <= 2 hf_amplitude.
  """
  centres: np.ndarray
  sigmas: np.ndarray
  colours: np.ndarray
  frequencies: np.ndarray
  textures: np.ndarray


def band(image_size: int) -> tuple[float, float]:
  """Returns the (low, high) radius of the texture ring for S x S images, in index units."""
  scale = image_size / 32
  return BAND[0] * scale, BAND[1] * scale


def ring_points(image_size: int) -> np.ndarray:
  """Returns (P, 2) int lattice points (|ky|, |kx|) in the texture ring, sorted by angle."""
  low, high = band(image_size)
  k = np.arange(image_size // 2)  # |k| <= S/2 - 1 keeps clear of the Nyquist row and column
  a, b = np.meshgrid(k, k, indexing="ij")
  dist = np.hypot(a, b)
  keep = (dist >= low) & (dist <= high)
  points = np.stack([a[keep], b[keep]], axis=-1)
  return points[np.argsort(np.arctan2(points[:, 0], points[:, 1]), kind="stable")]


def _cosines(freqs: np.ndarray, phases: np.ndarray, size: int) -> np.ndarray:
  """Returns (F, S, S) cosines cos(2 pi (ky y + kx x) / S + phase) for (F, 2) int frequencies."""
  y = np.arange(size)[:, None]
  x = np.arange(size)[None, :]
  angle = (freqs[:, 0, None, None] * y + freqs[:, 1, None, None] * x) * (2 * np.pi / size)
  return np.cos(angle + phases[:, None, None])


def _class_texture(rng: np.random.Generator, freq: np.ndarray, size: int,
                   amplitude: float) -> np.ndarray:
  """Returns one (S, S, 3) float32 texture: cosines at frequency (2,) (ky, kx) and at (ky, -kx).

  Each cosine has a random phase and random RGB weights whose largest absolute value is
  `amplitude`, so |texture| <= 2 amplitude.
  """
  freqs = np.stack([freq, freq * np.array([1, -1])])
  waves = _cosines(freqs, rng.uniform(0, 2 * np.pi, len(freqs)), size)
  weights = rng.normal(size=(len(freqs), 3))
  weights *= amplitude / np.abs(weights).max(axis=1, keepdims=True)
  return np.einsum("fhw,fc->hwc", waves, weights).astype(np.float32)


def make_design(rng: np.random.Generator, image_size: int, hf_amplitude: float) -> Design:
  """Draws the class blobs and textures (see the module docstring, step 1)."""
  points = ring_points(image_size)
  if len(points) < NUM_CLASSES:
    raise HfcError(f"data.image_size={image_size} is too small for the embedded textures; "
                   f"use >= 16.")
  scale = image_size / 32
  centres = rng.uniform(0.25, 0.75, (NUM_CLASSES, 2, 2)) * image_size
  sigmas = rng.uniform(1.5, 3.0, (NUM_CLASSES, 2)) * scale
  colours = rng.normal(size=(NUM_CLASSES, 2, 3))
  colours *= 0.3 / np.linalg.norm(colours, axis=-1, keepdims=True)
  picks = np.round(np.linspace(0, len(points) - 1, NUM_CLASSES)).astype(int)
  frequencies = points[picks][rng.permutation(NUM_CLASSES)]
  textures = np.stack([_class_texture(rng, f, image_size, hf_amplitude) for f in frequencies])
  return Design(centres, sigmas, colours, frequencies, textures)


def _field_basis(size: int) -> np.ndarray:
  """Returns (B, S, S) cosines and sines for the half-plane frequencies with 0 < |k| <= 2."""
  ks = [(a, b) for a in range(-2, 3) for b in range(-2, 3)
        if 0 < a * a + b * b <= 4 and (b > 0 or (b == 0 and a > 0))]
  freqs = np.array(ks)
  zeros = np.zeros(len(ks))
  return np.concatenate([_cosines(freqs, zeros, size), _cosines(freqs, zeros - np.pi / 2, size)])


def _blob_params(rng: np.random.Generator, design: Design, labels: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns per-image blob centres (n, 3, 2), widths (n, 3), colours (n, 3, 3).

  Blobs 0 and 1 are the class's, jittered; blob 2 is a random distractor.
  """
  n, scale = len(labels), size / 32
  centres = design.centres[labels] + rng.normal(0, 1.5 * scale, (n, 1, 2))
  centres += rng.normal(0, 0.75 * scale, (n, 2, 2))
  sigmas = design.sigmas[labels] * np.exp(rng.uniform(np.log(0.75), np.log(1.33), (n, 2)))
  colours = design.colours[labels] * rng.uniform(0.6, 1.4, (n, 2, 1))
  colours += rng.normal(0, 0.08, (n, 2, 3))
  d_centre = rng.uniform(0.2, 0.8, (n, 1, 2)) * size
  d_sigma = rng.uniform(1.5, 3.0, (n, 1)) * scale
  d_colour = rng.normal(size=(n, 1, 3))
  d_colour *= 0.2 / np.linalg.norm(d_colour, axis=-1, keepdims=True)
  return (np.concatenate([centres, d_centre], 1), np.concatenate([sigmas, d_sigma], 1),
          np.concatenate([colours, d_colour], 1))


def _render_lfc(grey: np.ndarray, field: np.ndarray, blobs: tuple, size: int) -> np.ndarray:
  """Returns (n, S, S, 3) float32 smooth content in (0.1, 0.9) (module docstring, step 2).

  Args:
    grey: (n, 3) grey level per channel.
    field: (n, 3, B) background coefficients for `_field_basis(size)`.
    blobs: centres (n, K, 2), widths (n, K), colours (n, K, 3) from `_blob_params`.
    size: S.
  """
  centres, sigmas, colours = blobs
  image = np.einsum("ncb,bhw->nhwc", field, _field_basis(size)) + grey[:, None, None, :]
  pos = np.arange(size, dtype=np.float64)
  denom = 2 * sigmas[..., None] ** 2
  gy = np.exp(-(pos - centres[..., 0, None]) ** 2 / denom)  # (n, K, S)
  gx = np.exp(-(pos - centres[..., 1, None]) ** 2 / denom)
  image += np.einsum("nky,nkx,nkc->nyxc", gy, gx, colours)
  return (0.5 + 0.4 * np.tanh((image - 0.5) / 0.4)).astype(np.float32)


def _texture_ids(rng: np.random.Generator, labels: np.ndarray, hf_prob: float) -> np.ndarray:
  """Returns (n,) the class whose texture each image carries: its own with prob hf_prob, else
  another class drawn uniformly."""
  other = (labels + rng.integers(1, NUM_CLASSES, len(labels))) % NUM_CLASSES
  return np.where(rng.uniform(size=len(labels)) < hf_prob, labels, other)


def sample_split(rng: np.random.Generator, design: Design, n: int,
                 hf_prob: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns images (n, S, S, 3) uint8, labels (n,) int32 and texture ids (n,) int32."""
  size = design.textures.shape[1]
  labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
  grey = 0.5 + rng.uniform(-0.1, 0.1, (n, 3))
  field = rng.normal(0, 0.035, (n, 3, len(_field_basis(size))))
  blobs = _blob_params(rng, design, labels, size)
  tex_ids = _texture_ids(rng, labels, hf_prob).astype(np.int32)
  images = np.empty((n, size, size, 3), np.uint8)
  for s in range(0, n, _CHUNK):
    part = slice(s, s + _CHUNK)
    lfc = _render_lfc(grey[part], field[part], tuple(b[part] for b in blobs), size)
    images[part] = np.round((lfc + design.textures[tex_ids[part]]) * 255)
  return images, labels, tex_ids


def from_config(data_config) -> dict[str, np.ndarray]:
  """`generate` with the settings of a config's `data` section (data.seed, num_train,
  num_test, image_size, hf_prob, hf_amplitude): the one place they are read, so their
  defaults live only in `hfc_jax.defaults`."""
  d = data_config
  return generate(seed=d.seed, num_train=d.num_train, num_test=d.num_test,
                  image_size=d.image_size, hf_prob=d.hf_prob, hf_amplitude=d.hf_amplitude)


def generate(*, seed: int, num_train: int, num_test: int, image_size: int, hf_prob: float,
             hf_amplitude: float) -> dict[str, np.ndarray]:
  """Builds the embedded data set; identical arguments give identical arrays.

  No argument has a default: the defaults are the config's (`from_config`). The last two
  sets made are kept: a repeated call in the same process (the runs of a sweep, a study
  after its run) returns the same arrays, read-only, instead of making them again (the
  default set takes about 2 CPU-s).

  Returns:
    A dict with x_train (num_train, S, S, 3) uint8, y_train (num_train,) int32, x_test, y_test,
    and tex_train, tex_test (int32): the class whose texture each image carries.
  """
  check_range("data.seed", seed, 0, integer=True)
  check_range("data.num_train", num_train, 1, integer=True)
  check_range("data.num_test", num_test, 1, integer=True)
  check_range("data.image_size", image_size, 16, 256, integer=True)
  check_range("data.hf_prob", hf_prob, 0.0, 1.0)
  check_range("data.hf_amplitude", hf_amplitude, 0.0, 0.05)  # keeps pixels inside [0, 1]
  return dict(_generate(int(seed), int(num_train), int(num_test), int(image_size),
                        float(hf_prob), float(hf_amplitude)))


@functools.lru_cache(maxsize=2)
def _generate(seed: int, num_train: int, num_test: int, image_size: int, hf_prob: float,
              hf_amplitude: float) -> dict[str, np.ndarray]:
  """`generate` after its checks; the arrays are made read-only, as callers share them."""
  design_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
  design = make_design(np.random.default_rng(design_seq), image_size, hf_amplitude)
  out = {}
  for split, seq, n in (("train", train_seq, num_train), ("test", test_seq, num_test)):
    x, y, tex = sample_split(np.random.default_rng(seq), design, n, hf_prob)
    out.update({f"x_{split}": x, f"y_{split}": y, f"tex_{split}": tex})
  for array in out.values():
    array.flags.writeable = False
  return out
