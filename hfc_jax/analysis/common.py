"""What every post-training study shares: restore a workdir, load its test set, score
it in batches, and write `<workdir>/<mode>/`.

A study restores the model of a workdir written on any mesh (a TPU pod, a GPU host)
onto any mesh (default: one CPU device, a laptop), builds only what the model needs
(abstract shapes from `nnx.eval_shape`, no optimiser state), and then works on the
parameters alone. Nothing here imports the trainer.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from hfc_jax import defaults, errors, evaluate, fileio, models
from hfc_jax import sharding
from hfc_jax import xla_flags
from hfc_jax import data as data_lib
from hfc_jax.models.functional import Functional
from hfc_jax.workdir import checkpointing, provenance, records
from hfc_jax.workdir.layout import Workdir

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Trained:
  """A workdir's model at one checkpoint, restored for analysis."""
  functional: Functional     # the model as pure functions of (params, model_state)
  params: PyTree             # nested dict of float32 arrays, replicated over the mesh
  model_state: PyTree        # BatchNorm running statistics ({} without them)
  config: ml_collections.ConfigDict   # the run's own config
  history: list              # the per-epoch records up to this checkpoint
  step: int                  # optimiser steps taken
  num_classes: int
  channels: int
  image_size: int | None     # image side the model was built for (None: written before
                             # checkpoints recorded it; only plain_cnn needs it)
  name: str = ""             # what tables and figures call it (`display_names`)

  @property
  def epoch(self) -> int:
    """Epochs finished at this checkpoint."""
    return len(self.history)


def apply_backend_settings() -> None:
  """The XLA settings `main` uses (`xla_flags.set_cpu_defaults`), so that a study run
  from a script computes as `main` does (other CPU convolution code gave FGSM accuracies
  up to 0.007 apart). XLA reads them when JAX starts its backend: when a script has
  already run JAX code with other flags, this says so instead."""
  before = os.environ.get("XLA_FLAGS", "")
  after = xla_flags.set_cpu_defaults()
  if after != before and jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
    logging.warning(
        "JAX started before hfc_jax set XLA_FLAGS=%r, so its CPU convolutions are not "
        "main's and results can differ from main's in the last digits; call "
        "hfc_jax.analysis.common.apply_backend_settings() before any JAX computation.",
        after)


def cpu_mesh() -> jax.sharding.Mesh:
  """A one-device mesh on the first CPU device (a laptop's)."""
  return jax.sharding.Mesh(np.array(jax.devices("cpu")[:1]), (sharding.DATA_AXIS,))


def abstract_model(config: ml_collections.ConfigDict, num_classes: int, channels: int,
                   image_size: int | None) -> tuple[Functional, PyTree, PyTree]:
  """(functional, abstract params, abstract model state) of `config.model` for square
  `image_size` images, built with `nnx.eval_shape`: shapes and dtypes only, no array is
  allocated."""
  size = None if image_size is None else (image_size, image_size)
  model = nnx.eval_shape(lambda: models.from_config(
      config.model, num_classes=num_classes, in_channels=channels, image_size=size,
      seed=config.seed))
  return Functional.split(model)


def restore(workdir: Workdir | str, step: int | None = None, *, mesh=None) -> Trained:
  """Restores the model of `workdir` (a `Workdir` or a path, local or gs://) at `step`
  (default: the newest
  readable checkpoint, possibly mid-epoch; an unreadable one is reported in one line
  and skipped), replicated over `mesh` (default: `cpu_mesh()`), whatever mesh wrote
  it. Reads the parameters, model state and step only; changes nothing."""
  apply_backend_settings()
  workdir = Workdir.of(workdir)
  ckpt = checkpointing.open_existing(workdir)
  placed, name = sharding.replicated(mesh or cpu_mesh()), workdir.name
  try:
    if step is not None:
      try:
        return _restore_step(ckpt, step, placed, name)
      except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
        raise errors.HfcError(f"workdir={workdir.path!r}: checkpoint {step} cannot be read "
                              f"({type(e).__name__}).") from None
    newest = checkpointing.newest_readable(
        ckpt, lambda s: _restore_step(ckpt, s, placed, name),
        lambda s, e: logging.warning("checkpoint %s/%d cannot be read (%s); using the one "
                                     "before", ckpt.directory, s, type(e).__name__))
    if newest is None:
      raise errors.HfcError(f"workdir={workdir.path!r}: no checkpoint in {ckpt.directory} "
                            "can be read.")
    return newest[1]
  finally:
    ckpt.close()


def _restore_step(ckpt: checkpointing.Checkpointer, step: int, placed, name: str
                  ) -> Trained:
  meta = ckpt.restore_meta(step)
  config = defaults.complete(meta["config"])   # + fields added since it was written
  functional, params, model_state = abstract_model(
      config, meta["num_classes"], meta["channels"], meta.get("image_size"))
  item = {"params": params, "model_state": model_state,
          "step": jax.ShapeDtypeStruct((), np.int32)}
  state = ckpt.restore_partial(checkpointing.abstract_like(item, placed), step)
  return Trained(functional, state["params"], state["model_state"], config,
                 meta["history"], int(state["step"]), meta["num_classes"],
                 meta["channels"], meta.get("image_size"), name)


# Data fields that change only the training images or where the data is read from,
# not the test set a study scores (roles 'training_data' and 'machine' in `defaults.ROLES`).
TRAINING_ONLY = tuple(f.removeprefix("data.") for f in
                      defaults.fields_with_role(defaults.TRAINING_DATA, defaults.MACHINE)
                      if f.startswith("data."))


def check_same_test_set(models: list[tuple[str, Trained]], field: str) -> None:
  """Every model must be of the first's test set (data set, image size, channels,
  classes): a study scores them all on the first's test images. HfcError naming
  `field` (the study's `compare`) otherwise, listing the data fields that differ."""
  def signature(trained):
    data = {k: v for k, v in trained.config.data.to_dict().items()
            if k not in TRAINING_ONLY}
    return data, trained.channels, trained.num_classes
  first_dir, first = models[0]
  for workdir, trained in models[1:]:
    if signature(trained) != signature(first):
      a, b = signature(trained)[0], signature(first)[0]
      differ = ", ".join(f"{k}={a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b))
                         if a.get(k) != b.get(k)) or "channels or classes differ"
      raise errors.HfcError(
          f"{field}: {workdir!r} holds a model of another test set than {first_dir!r} "
          f"(data {differ}); compare models of one data set and image size.")


def restore_compared(workdir: Workdir, compare, *, field: str, mesh
                     ) -> list[tuple[str, Trained]]:
  """[(workdir path, Trained)] for the run's workdir and each of `compare` (the study's
  `field`, e.g. 'kernels.compare'), all of one test set (`check_same_test_set`)."""
  workdir = Workdir.of(workdir)
  models = [(workdir.path, restore(workdir, mesh=mesh))]
  for other in compare:
    if not isinstance(other, str) or not other:
      raise errors.HfcError(f"{field}={tuple(compare)!r} must list workdirs.")
    try:
      models.append((other, restore(Workdir.of(other, field), mesh=mesh)))
    except errors.HfcError as e:
      raise errors.HfcError(f"{field}: {e}") from None
  check_same_test_set(models, field)
  names = display_names([w for w, _ in models])
  return [(w, dataclasses.replace(t, name=n)) for (w, t), n in zip(models, names)]


def display_names(workdirs: list[str]) -> list[str]:
  """The shortest path endings that tell `workdirs` apart: their basenames, or as many
  trailing components as it takes when two share one (`fig5_small_cnn_s0/vanilla` and
  `fig5_plain_cnn_s0/vanilla`, not `vanilla` twice). The same workdir twice gets the
  same name."""
  paths = [str(w).rstrip("/") for w in workdirs]
  distinct = sorted(set(paths))
  parts = {p: p.split("/") for p in distinct}
  for depth in range(1, max(len(p) for p in parts.values()) + 1):
    names = {p: "/".join(parts[p][-depth:]) for p in distinct}
    if len(set(names.values())) == len(distinct):
      return [names[p] for p in paths]
  return paths


def load_test_set(trained: Trained, num_images: int = 0, *, field: str = ""
                  ) -> tuple[np.ndarray, np.ndarray, data_lib.Dataset]:
  """The run's own test set (its config's data section): the first `num_images`
  images (0: all) as (x uint8 NHWC, y int32, the data set); HfcError naming `field`
  when more images are asked for than there are."""
  dataset = data_lib.load(trained.config.data)
  x, y = dataset.x_test, dataset.y_test
  if num_images > len(x):
    raise errors.HfcError(f"{field}={num_images} exceeds the {len(x)} test images of "
                          f"data.name={dataset.name!r}.")
  if num_images:
    x, y = x[:num_images], y[:num_images]
  return x, y, dataset


def batches(x: np.ndarray, y: np.ndarray, *, mesh, batch_size: int, field: str
            ) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  """Every image once, placed on the mesh: (images float32 in [0, 1], labels int32,
  mask) global arrays of `batch_size` real images each (`evaluate.eval_batches`, the
  per-epoch evaluation's padded layout, so batch statistics match it)."""
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
  return list(evaluate.eval_batches(x, y, mesh=mesh, batch_size=batch_size, field=field))


def per_image(fn: Callable[..., jax.Array], placed: list, *args) -> np.ndarray:
  """Runs the jitted `fn(*args, images, labels, mask, batch_index)` on every placed
  batch (all dispatched before any is fetched) and returns its per-row outputs of the
  real images, concatenated in order: (N, ...) numpy. The one batched scorer of the
  studies; `evaluate.variant_accuracies` is the per-epoch pass's own, which sums on device."""
  outs = [fn(*args, *batch, i) for i, batch in enumerate(placed)]
  parts = jax.device_get([(out, batch[2]) for out, batch in zip(outs, placed)])
  return np.concatenate([np.asarray(o)[np.asarray(m) > 0] for o, m in parts])


def output_dir(workdir: Workdir | str, mode: str) -> str:
  """Where study `mode` writes (`Workdir.study`: `<workdir>/<mode>`), created (process
  0)."""
  out = Workdir.of(workdir).study(mode)
  if jax.process_index() == 0:
    fileio.makedirs(out)
  return out


def write_outputs(out: str, *, json_files: dict[str, Any] | None = None,
                  texts: dict[str, str] | None = None, figures: dict[str, Any] | None = None,
                  arrays: dict[str, np.ndarray] | None = None, dpi: int = 110) -> None:
  """Writes a study's files into `out` (process 0 only): JSON (atomic, sorted keys,
  numpy numbers as JSON numbers: `json_ready`),
  Markdown/text, matplotlib Figures as PNG, numpy arrays as .npy, and
  `provenance.json` (the commit, versions and command that made them)."""
  if jax.process_index() != 0:
    return
  records.write_json(fileio.join(out, "provenance.json"), provenance.describe())
  for name, obj in (json_files or {}).items():
    records.write_json(fileio.join(out, name), json_ready(obj))
  for name, text in (texts or {}).items():
    fileio.write_text(fileio.join(out, name), text)
  for name, fig in (figures or {}).items():
    fileio.save_figure(fig, fileio.join(out, name), dpi=dpi, bbox_inches="tight")
  for name, array in (arrays or {}).items():
    fileio.save_npy(fileio.join(out, name), array)


def json_ready(obj: Any) -> Any:
  """`obj` with numpy scalars and arrays turned into JSON types (checked by a dump)."""
  converted = jax.tree.map(lambda v: v.tolist() if hasattr(v, "tolist") else v, obj)
  json.dumps(converted)
  return converted

