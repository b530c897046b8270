"""Host-side numpy input: shuffled training batches, padded evaluation batches, prefetching.

Images stay uint8 NHWC here (the device converts them to float). Every random choice of an epoch
(the order and the crop/flip of each example) is drawn for the GLOBAL batch from (seed, epoch)
alone, and process p of P takes rows [p B/P, (p+1) B/P) of each global batch of B, so the global
batch is the same whatever the number of processes.
"""

import math
import queue
import threading
from collections.abc import Iterator

import numpy as np

from hfc_jax.errors import HfcError, check_choice

PAD_MODES = {"zero": "constant", "reflect": "reflect"}  # config name -> numpy.pad mode


def num_train_steps(n: int, batch_size: int) -> int:
  """Returns the number of training steps in an epoch of `n` examples (remainder dropped)."""
  return n // batch_size


def _local_size(batch_size: int, process_index: int, process_count: int) -> int:
  """Returns batch_size // process_count after checking the split is exact and the index valid."""
  if batch_size < 1 or batch_size % process_count:
    raise HfcError(f"batch_size={batch_size} must be a positive multiple of the process "
                   f"count {process_count}.")
  if not 0 <= process_index < process_count:
    raise HfcError(f"process_index={process_index} is not in [0, {process_count}).")
  return batch_size // process_count


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """Returns the (n,) example order of an epoch; it depends only on (seed, epoch)."""
  return np.random.default_rng([seed, epoch, 0]).permutation(n)


def augment_params(count: int, *, seed: int, epoch: int, pad: int,
                   flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns crop offsets dy, dx in [0, 2 pad] and flip flags, each (count,), from (seed, epoch)."""
  rng = np.random.default_rng([seed, epoch, 1])
  dy, dx = rng.integers(0, 2 * pad + 1, (2, count))
  flips = rng.random(count) < 0.5 if flip else np.zeros(count, bool)
  return dy, dx, flips


def pad_images(images: np.ndarray, pad: int, pad_mode: str) -> np.ndarray:
  """Returns (B, H + 2 pad, W + 2 pad, C) `images` padded on H and W, equal to numpy.pad's
  'constant' (zero) or 'reflect' mode.

  Writes the border with slices instead of calling numpy.pad, which costs 3-5x more on a
  batch of 128 32x32 images; a reflect pad of `pad` >= H or W (reflected more than once)
  is left to numpy.pad.
  """
  b, h, w, c = images.shape
  mode = PAD_MODES[check_choice("data.aug_pad_mode", pad_mode, PAD_MODES)]
  if mode == "reflect" and pad >= min(h, w):
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  out = np.zeros((b, h + 2 * pad, w + 2 * pad, c), images.dtype)
  out[:, pad:pad + h, pad:pad + w] = images
  if mode == "reflect" and pad:   # rows, then columns over the padded rows (as numpy.pad)
    out[:, :pad] = out[:, 2 * pad:pad:-1]
    out[:, pad + h:] = out[:, pad + h - 2:h - 2:-1]
    out[:, :, :pad] = out[:, :, 2 * pad:pad:-1]
    out[:, :, pad + w:] = out[:, :, pad + w - 2:w - 2:-1]
  return out


def crop_flip(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flips: np.ndarray, *,
              pad: int, pad_mode: str) -> np.ndarray:
  """Pads by `pad` pixels, crops back to H x W at offsets (dy, dx), flips rows where `flips`.

  Args:
    images: (B, H, W, C) uint8.
    dy, dx: (B,) int crop offsets in the padded image, in [0, 2 pad].
    flips: (B,) bool, mirror left-right after the crop.
    pad: padding on each side, pixels.
    pad_mode: 'zero' or 'reflect' (numpy.pad's 'reflect': the edge pixel is not repeated).

  Returns:
    (B, H, W, C) uint8; output[b, i, j] = padded[b, dy + i, dx + j'] with j' = W - 1 - j if flipped.
  """
  b, h, w, c = images.shape
  padded = pad_images(images, pad, pad_mode)
  pixels = padded.view(f"V{c * padded.itemsize}")[..., 0]  # one item per pixel
  # Each output row is W contiguous pixels of a padded row: gather whole row segments
  # (a view of every W-wide window), not single pixels; 3x faster than a per-pixel gather.
  windows = np.lib.stride_tricks.sliding_window_view(pixels, w, axis=2)  # (B, H+2p, 2p+1, W)
  out = windows[np.arange(b)[:, None], dy[:, None] + np.arange(h), dx[:, None]]  # (B, H, W)
  mirrored = np.flatnonzero(flips)
  out[mirrored] = out[mirrored, :, ::-1]
  return out.view(images.dtype).reshape(b, h, w, c)


def train_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int, epoch: int,
                  augment: bool, pad: int, pad_mode: str, flip: bool,
                  process_index: int = 0, process_count: int = 1,
                  start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields this process's share of each global training batch of one epoch.

  Args:
    x: (N, H, W, C) uint8 images; y: (N,) int labels.
    batch_size: the GLOBAL batch size B, a multiple of process_count.
    seed, epoch: all randomness of the epoch comes from these two.
    augment: pad + random crop (+ random horizontal flip if `flip`), see `crop_flip`.
    pad, pad_mode, flip: the augmentation's settings (`data.aug_pad`, `data.aug_pad_mode`,
      `data.aug_flip`; no defaults here, the config's are in `hfc_jax.defaults`).
    process_index, process_count: this process and how many share each batch.
    start_step: the first step to yield (a run resumed mid-epoch); the batches are the
      same as those steps' batches of an uninterrupted epoch.

  Yields:
    num_train_steps(N, B) - start_step pairs of images (B / P, H, W, C) uint8 and
    labels (B / P,) int32.
  """
  local = _local_size(batch_size, process_index, process_count)
  steps = num_train_steps(len(x), batch_size)
  order = epoch_permutation(len(x), seed, epoch)
  if augment:
    dy, dx, flips = augment_params(steps * batch_size, seed=seed, epoch=epoch, pad=pad, flip=flip)
  for step in range(start_step, steps):
    part = slice(step * batch_size + process_index * local,
                 step * batch_size + (process_index + 1) * local)
    idx = order[part]
    images = x[idx]
    if augment:
      images = crop_flip(images, dy[part], dx[part], flips[part], pad=pad, pad_mode=pad_mode)
    yield images, y[idx].astype(np.int32, copy=False)


def eval_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int,
                 padded_size: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields every example once, in order, `batch_size` real examples per global batch.

  Each global batch has `padded_size` rows (default: `batch_size` rounded up to a multiple
  of the process count): its real examples first, in order, then zero images with label 0
  and mask 0, so shapes never change; the masks of all batches and processes sum to N.
  Process p holds rows [p R / P, (p + 1) R / P) of each global batch of R rows.

  Args:
    x: (N, H, W, C) images; y: (N,) int labels.
    batch_size: B, the number of REAL examples per global batch (the last one: the rest).
    padded_size: R >= B, the physical global batch (e.g. `sharding.padded_batch_size`),
      a multiple of process_count.

  Yields:
    ceil(N / B) triples of images (R / P, H, W, C), labels (R / P,) int32 and
    mask (R / P,) float32.
  """
  if batch_size < 1:
    raise HfcError(f"batch_size={batch_size} must be a positive integer.")
  if padded_size is None:
    padded_size = math.ceil(batch_size / process_count) * process_count
  if padded_size < batch_size:
    raise HfcError(f"padded_size={padded_size} is smaller than batch_size={batch_size}.")
  local = _local_size(padded_size, process_index, process_count)
  n = len(x)
  for step in range(math.ceil(n / batch_size)):
    real = min(batch_size, n - step * batch_size)   # real rows of this global batch
    first = process_index * local                    # this process's first row in it
    valid = min(max(real - first, 0), local)
    start = step * batch_size + first
    images = np.zeros((local,) + x.shape[1:], x.dtype)
    labels = np.zeros(local, np.int32)
    images[:valid] = x[start:start + valid]
    labels[:valid] = y[start:start + valid]
    mask = (np.arange(local) < valid).astype(np.float32)
    yield images, labels, mask


class _Raised:
  """Carries an exception from the prefetch thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
  """Puts `item` unless `stop` is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def prefetch(iterator, size: int) -> Iterator:
  """Runs `iterator` in a background thread, at most `size` items ahead; re-raises its errors.

  The thread starts at once, so the first items are ready before they are asked for. Closing
  or dropping the returned generator stops the thread at its next item.
  """
  q, stop, done = queue.Queue(maxsize=size), threading.Event(), object()

  def work():
    try:
      for item in iterator:
        if not _put(q, item, stop):
          return
    except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
      _put(q, _Raised(e), stop)
      return
    _put(q, done, stop)

  threading.Thread(target=work, daemon=True, name="hfc-prefetch").start()

  def consume():
    try:
      while (item := q.get()) is not done:
        if isinstance(item, _Raised):
          raise item.error
        yield item
    finally:
      stop.set()

  return consume()
