"""The import, from a weights file to a workdir, checking everything before writing.

  1. the workdir must be new (`write.check_new`), the data section valid;
  2. read the file (`readers`), sort its keys (`convert.prepare`);
  3. build the architecture's shapes for the file's classes and input channels and check
     every key and shape against them (`convert.check`; a file of another architecture
     gets the one it fits as a hint, `detect`);
  4. decide the input standardisation (`standardization`), check that the data set's
     classes and channels fit the weights (`check_data`) and that the config builds the
     model that was converted (`check_restorable`);
  5. write the workdir (`write.write_workdir`): a checkpoint that every
     `--config.mode` restores like a trained one, its config, and the provenance
     (source file, SHA-256, architecture, standardisation) in provenance.jsonl and in
     the checkpoint's metadata.

Nothing is written before step 5, and step 5 writes into a new folder that is renamed
into place when complete (locally), so a refused import leaves nothing behind.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from hfc_jax import defaults, errors, models, validation
from hfc_jax.data import synthetic
from hfc_jax.importing import archs, convert, detect, readers, write
from hfc_jax.models.functional import Functional

# (classes, channels) of the data sets that have them fixed, known without loading.
KNOWN_DATA = {"embedded": (synthetic.NUM_CLASSES, 3), "cifar10": (10, 3),
              "cifar100": (100, 3), "mnist": (10, 1), "fashion_mnist": (10, 1)}


def standardization(prepared: convert.Prepared, arch: archs.Arch,
                    mean: Sequence[float] | None, std: Sequence[float] | None
                    ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
  """(mean, std, where they come from) of the model's input standardisation: the file's
  buffers, else the command's `mean` / `std` (None: not given; empty: none), else the
  architecture's default. Buffers and a different command-line value: HfcError."""
  given = mean is not None or std is not None
  if given and (mean is None or std is None):
    raise errors.HfcError("--input_mean and --input_std go together; give both (or "
                          "neither, for the file's or the architecture's default).")
  if prepared.mean:
    keys = prepared.standardize_keys
    if given and (tuple(mean), tuple(std)) != (prepared.mean, prepared.std):
      raise errors.HfcError(
          f"the file standardises its inputs itself ({'/'.join(keys)} = {prepared.mean} / "
          f"{prepared.std}); drop --input_mean and --input_std.")
    return prepared.mean, prepared.std, f"the file's {' / '.join(keys)} buffers"
  if given:
    return tuple(mean), tuple(std), "--input_mean / --input_std"
  return arch.mean, arch.std, arch.default_preprocessing


def check_data(config: ml_collections.ConfigDict, classes: int, channels: int,
               where: str) -> None:
  """HfcError when the data set's classes or channels (where known without loading
  it) differ from the weights'."""
  d = config.data
  known_classes, known_channels = KNOWN_DATA.get(d.name, (d.num_classes or None, None))
  for what, theirs, ours in (("classes", classes, known_classes),
                             ("input channels", channels, known_channels)):
    if ours is not None and theirs != ours:
      raise errors.HfcError(f"{where}: the weights have {theirs} {what}, data.name="
                            f"{d.name!r} has {ours}; import with the data set the model "
                            "was trained for.")


def build_config(arch: archs.Arch, data: ml_collections.ConfigDict,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> ml_collections.ConfigDict:
  """The workdir's config: the defaults, with `data` and the imported model."""
  model = {**archs.model_fields(arch), "norm": "batchnorm", "input_mean": mean,
           "input_std": std}
  config = defaults.complete({"data": data.to_dict(), "model": model})
  validation.check(config)
  return config


def check_restorable(config: ml_collections.ConfigDict, classes: int, channels: int,
                     params: dict, model_state: dict) -> None:
  """Builds the model from `config` as the analyses will (`models.from_config`, shapes
  only): HfcError for a setting that does not fit the weights (a standardisation of
  another channel count); the converted trees must have its structure and shapes."""
  size = validation.image_size(config)
  model = nnx.eval_shape(lambda: models.from_config(
      config.model, num_classes=classes, in_channels=channels,
      image_size=(size, size) if size else None))
  _, want_params, want_state = Functional.split(model)
  for want, got in ((want_params, params), (want_state, model_state)):
    if jax.tree.map(np.shape, want) != jax.tree.map(np.shape, got):
      raise RuntimeError("converted weights do not have the model's structure")


def read_checked(spec: archs.Arch, weights: str) -> tuple[readers.Weights, convert.Prepared,
                                                          dict[str, convert.Target]]:
  """Steps 2 and 3: the file, its sorted keys, and the model's leaves they fill, every
  key and shape checked; an HfcError says which `--arch` the file fits, if another."""
  file = readers.read(weights)
  where = f"--weights={file.path!r} as --arch={spec.name}"
  prepared = convert.prepare(file.tensors, spec)
  try:
    classes, channels = convert.head_and_channels(prepared, spec, where)
    _, params, model_state = convert.abstract_split(spec, classes, channels)
    expected = convert.targets(spec.name_map(), params, model_state)
    convert.check(prepared, expected, where)
  except errors.HfcError as e:
    found = detect.detect(file.tensors, exclude=spec.name)
    raise errors.HfcError(str(e).rstrip(".") + (f"; the file fits --arch={found}."
                                                 if found else ".")) from None
  return file, prepared, expected


def import_weights(*, arch: str, weights: str, workdir: str,
                   data: ml_collections.ConfigDict, input_mean: Sequence[float] | None = None,
                   input_std: Sequence[float] | None = None) -> dict:
  """Imports file `weights` as architecture `arch` (an `archs.parse` spelling) into the
  new `workdir`, for the test set of `data` (a config's data section). Returns the
  import record (also in the workdir's provenance.jsonl) and the workdir; raises a
  one-line HfcError, having written nothing, for a bad file, architecture, data section,
  standardisation or workdir."""
  spec = archs.parse(arch)
  workdir = write.check_new(workdir)
  build_config(spec, data, (), ())   # the data section, before the file is read
  file, prepared, expected = read_checked(spec, weights)
  params, model_state = convert.convert(prepared, expected)
  classes, channels = params["head"]["kernel"].shape[1], params["first_conv"]["kernel"].shape[2]
  mean, std, how = standardization(prepared, spec, input_mean, input_std)
  config = build_config(spec, data, mean, std)
  check_data(config, classes, channels, f"--weights={file.path!r}")
  check_restorable(config, classes, channels, params, model_state)
  record = {"source": readers.describe(file), "arch": arch,
            "model": {k: config.model[k] for k in ("name", "depth", "width_factor", "norm")},
            "num_classes": classes, "channels": channels,
            "parameters": int(sum(a.size for a in jax.tree.leaves(params))),
            "preprocessing": {"input_mean": list(mean), "input_std": list(std), "from": how},
            "stripped_prefixes": list(prepared.stripped),
            "ignored_keys": _ignored(prepared.ignored)}
  state = {"params": params, "model_state": model_state, "step": np.int32(write.STEP)}
  meta = {"config": config.to_dict(), "history": [], "num_classes": classes,
          "channels": channels, "image_size": validation.image_size(config),
          "imported": record}
  write.write_workdir(workdir, state=jax.tree.map(jnp.asarray, state), meta=meta,
                      config=config.to_dict(), record=record)
  return {**record, "workdir": workdir}


def _ignored(keys: Sequence[str]) -> dict:
  """The keys set aside, for the record: how many BatchNorm counters, and the others."""
  counters = [k for k in keys if k.endswith(convert.COUNTERS)]
  return {"num_batches_tracked": len(counters),
          "unused": [k for k in keys if k not in counters]}
