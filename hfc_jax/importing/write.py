"""An imported model as a workdir: the importer's one use of `hfc_jax.workdir` (writing
it, and recognising it so that training does not resume from it).

A local workdir is written into a hidden folder beside it and renamed into place when
complete, so an import that fails or is interrupted leaves no workdir (and no folder);
a remote one (gs://) is written in place, after every check has passed. Either way the
workdir must be new or empty: an import never mixes with a trained run.
"""

import os
import shutil
import uuid

from hfc_jax import errors, fileio
from hfc_jax.workdir import checkpointing, provenance
from hfc_jax.workdir.layout import Workdir

STEP = 0   # the step an imported checkpoint is saved under


def check_new(workdir: str) -> str:
  """`workdir` normalised; HfcError naming --workdir when it holds files already."""
  path = fileio.check("--workdir", workdir)
  if fileio.is_file(path) or (fileio.is_dir(path) and any(fileio.path(path).iterdir())):
    raise errors.HfcError(f"--workdir={path!r} exists and is not empty; import into a new "
                          "workdir.")
  return path


def write_workdir(workdir: str, *, state: dict, meta: dict, config: dict,
                  record: dict) -> None:
  """Writes the checkpoint (step `STEP`: `state` = {'params', 'model_state', 'step'} and
  `meta`, as training does), `config.json` and one provenance.jsonl line (this start,
  with the import `record`) into the new workdir `workdir`."""
  if fileio.is_remote(workdir):
    _write(Workdir.of(workdir), state, meta, config, record)
    return
  staging = os.path.join(os.path.dirname(workdir),
                         f".{os.path.basename(workdir)}.importing-{uuid.uuid4().hex[:8]}")
  try:
    _write(Workdir.of(staging), state, meta, config, record)
    if os.path.isdir(workdir):
      os.rmdir(workdir)   # empty (check_new)
    os.rename(staging, workdir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _write(workdir: Workdir, state: dict, meta: dict, config: dict, record: dict) -> None:
  """The files, through the public API of `hfc_jax.workdir`."""
  workdir.create()
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    ckpt.save(STEP, state, meta)
  finally:
    ckpt.close()
  workdir.write_config(config)
  workdir.append_start({"step": STEP, **provenance.describe(), "imported": record})


def refuse_training(workdir: Workdir) -> None:
  """HfcError when `workdir` holds imported weights (its provenance.jsonl says so):
  training would find no optimiser state to resume from. Called by `main` in train mode."""
  if fileio.is_file(workdir.provenance) and any("imported" in start
                                                for start in workdir.read_starts()):
    raise errors.HfcError(f"workdir={workdir.path!r} holds weights imported with "
                          "python -m hfc_jax.import_weights, not a training run; analyse it "
                          "with --config.mode=..., or train in a new --workdir.")
