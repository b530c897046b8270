"""The embedded default data set: class shapes in the low frequencies, a class texture in the high.

Nothing is downloaded: `generate(seed, ...)` builds the whole set with numpy in a few seconds, and
the same arguments always give identical arrays. It is made so that the paper's phenomenon can be
seen without CIFAR: each label is carried by two cues that live in different parts of the centred
2-D spectrum, and a CNN may learn either.

How an image is built (all values in [0, 1] units, S = image size, default 32; u = S / 32):

1. Class design, drawn once per seed (`make_design`). Each of the 10 classes gets two Gaussian
   blobs, each with a centre in [0.25 S, 0.75 S]^2, a width sigma in [2.5, 4] u pixels and a signed
   RGB colour of norm 0.3; and a texture: 2 lattice frequencies (|ky|, |kx|) taken from the
   ring 12.5 u <= sqrt(ky^2 + kx^2) <= 15.5 u, with |ky|, |kx| <= S/2 - 1. The 20 frequencies of
   the 10 classes are spread evenly in angle over the ring, so no two classes share one. Each
   frequency is used with its horizontal mirror (ky, -kx), so 4 cosines with fixed random phases
   and fixed random RGB weights; their sum is scaled so that its largest absolute value over
   pixels and channels is `hf_amplitude` (default 0.04). The mirror pair makes the texture's
   spectrum invariant under a horizontal flip, so flip augmentation does not mix classes.
2. Low-frequency "semantic" content per image (`_render_lfc`): a grey level 0.5 + U(-0.1, 0.1) per
   channel; a random smooth background field (cosines with |k| <= 2, independent per channel,
   standard deviation about 0.08); the two class blobs, both shifted together by N(0, 2.5 u)
   pixels, each also by N(0, 1 u), widths scaled by U(0.75, 1.33), colours scaled by U(0.6, 1.4)
   plus N(0, 0.08) per channel; and one distractor blob of random centre, width and colour. The sum
   is squashed smoothly into (0.1, 0.9) with 0.5 + 0.4 tanh((v - 0.5) / 0.4), which keeps it away
   from 0 and 1 so that no clipping smears the spectrum. This content has almost all of its energy
   inside radius 8 (blob spectra fall as exp(-2 pi^2 sigma^2 f^2)).
3. The texture (`_textures`): with probability `hf_prob` (default 0.9) the texture of the image's
   own class, else that of another class drawn uniformly (so the texture agrees with the label on
   exactly a `hf_prob` share of images on average). It is added, and the result is rounded to uint8.
   Values stay inside [0.06, 0.94], so nothing is clipped.

Labels are balanced: label = index mod 10, then shuffled. Train and test use independent random
streams from the same seed and the same class design, so changing `num_test` leaves the training
set unchanged.

What to expect, with the paper's disc mask of radius r (`dist < r` in the fftshift-ed spectrum):
- The texture lies entirely at 12.5 <= dist <= 15.5 (for 32x32), so it is in the HFC for r = 4, 8,
  12 and in the LFC for r = 16 and above; the uint8 rounding adds only white noise of about 0.001.
- HFC images at r = 4..12 look black (zero mean, a few hundredths in amplitude) yet a model that
  learnt the texture still classifies them well above chance; at r = 16 the HFC loses the texture
  and falls to near chance.
- LFC images at r = 4 keep the blurred layout but lose the texture, so a model trained on clean
  images scores lower there than on clean images; at r = 8 and 12 the shapes are back but the
  texture is not; at r = 16 the texture returns and accuracy recovers to the clean level.
- Training on textureless images (`hf_amplitude=0`) measures the semantic cue alone: a small CNN
  gets well above chance but clearly below 100%. Training with `hf_prob=1.0` makes the texture a
  perfect cue; `hf_prob=0.1` makes it an uninformative one.
"""

import dataclasses

import numpy as np

from hfc_jax.errors import HfcError, check_range

NUM_CLASSES = 10
BAND = (12.5, 15.5)  # texture ring for 32x32 images, in spectrum index units; scales with S / 32
_PAIRS = 1  # texture frequencies per class (each with its mirror)
_CHUNK = 2048  # images rendered at a time, to bound memory


@dataclasses.dataclass(frozen=True)
class Design:
  """The fixed per-class content of one seed.

  Attributes:
    centres: (10, 2, 2) float, blob centres (y, x) in pixels.
    sigmas: (10, 2) float, blob widths in pixels.
    colours: (10, 2, 3) float, signed RGB blob colours, norm 0.3.
    frequencies: (10, 2, 2) int, texture frequencies (|ky|, |kx|); each is used with (ky, -kx).
    textures: (10, S, S, 3) float32, the class textures, max |value| = hf_amplitude.
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


def _class_texture(rng: np.random.Generator, pairs: np.ndarray, size: int,
                   amplitude: float) -> np.ndarray:
  """Returns one (S, S, 3) float32 texture: a cosine at each (P, 2) frequency and at its mirror.

  Each cosine has a random phase and random RGB weights whose largest absolute value is
  `amplitude`, so |texture| <= 2 P amplitude.
  """
  freqs = np.concatenate([pairs, pairs * np.array([1, -1])])  # (ky, kx) and (ky, -kx)
  waves = _cosines(freqs, rng.uniform(0, 2 * np.pi, len(freqs)), size)
  weights = rng.normal(size=(len(freqs), 3))
  weights *= amplitude / np.abs(weights).max(axis=1, keepdims=True)
  return np.einsum("fhw,fc->hwc", waves, weights).astype(np.float32)


def make_design(rng: np.random.Generator, image_size: int, hf_amplitude: float) -> Design:
  """Draws the class blobs and textures (see the module docstring, step 1)."""
  points = ring_points(image_size)
  if len(points) < 2 * NUM_CLASSES:
    raise HfcError(f"data.image_size={image_size} is too small for the embedded textures; use >= 24.")
  scale = image_size / 32
  centres = rng.uniform(0.25, 0.75, (NUM_CLASSES, 2, 2)) * image_size
  sigmas = rng.uniform(1.5, 3.0, (NUM_CLASSES, 2)) * scale
  colours = rng.normal(size=(NUM_CLASSES, 2, 3))
  colours *= 0.3 / np.linalg.norm(colours, axis=-1, keepdims=True)
  picks = np.round(np.linspace(0, len(points) - 1, _PAIRS * NUM_CLASSES)).astype(int)
  frequencies = points[picks][rng.permutation(_PAIRS * NUM_CLASSES)].reshape(NUM_CLASSES, _PAIRS, 2)
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
  """Returns per-image blob centres (n, 3, 2), widths (n, 3) and colours (n, 3, 3); blob 2 distracts."""
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
  """Returns (n,) the class whose texture each image gets: its own with prob hf_prob, else another."""
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


def generate(seed: int = 0, num_train: int = 10_000, num_test: int = 2_000, image_size: int = 32,
             hf_prob: float = 0.9, hf_amplitude: float = 0.04) -> dict[str, np.ndarray]:
  """Builds the embedded data set; identical arguments give identical arrays.

  Returns:
    A dict with x_train (num_train, S, S, 3) uint8, y_train (num_train,) int32, x_test, y_test,
    and tex_train, tex_test (int32): the class whose texture each image carries.
  """
  check_range("data.seed", seed, 0, integer=True)
  check_range("data.num_train", num_train, 1, integer=True)
  check_range("data.num_test", num_test, 1, integer=True)
  check_range("data.image_size", image_size, 24, 256, integer=True)
  check_range("data.hf_prob", hf_prob, 0.0, 1.0)
  check_range("data.hf_amplitude", hf_amplitude, 0.0, 0.1 / (2 * _PAIRS))
  design_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
  design = make_design(np.random.default_rng(design_seq), image_size, hf_amplitude)
  out = {}
  for split, seq, n in (("train", train_seq, num_train), ("test", test_seq, num_test)):
    x, y, tex = sample_split(np.random.default_rng(seq), design, n, hf_prob)
    out.update({f"x_{split}": x, f"y_{split}": y, f"tex_{split}": tex})
  return out
