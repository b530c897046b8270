"""Orbax checkpoints of a run: `<workdir>/checkpoints/<epoch>/{state,meta}`.

`state` is the train state pytree (parameters, BatchNorm statistics, optimiser
state, step, RNG key); `meta` is JSON: the config and the per-epoch metric history.
Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint untouched; the
leftover temporary directory is removed on the next start.
"""

import os

import jax
import orbax.checkpoint as ocp

from hfc_jax import errors


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Saves (asynchronously) and restores the train state of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, create: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, cleanup_tmp_directories=True,
        enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state, meta: dict) -> None:
    """Starts an asynchronous save; the step keeps running while it is written."""
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, epoch: int | None = None) -> dict:
    """The JSON metadata (config, history) of a checkpoint, without the arrays."""
    epoch = self.latest_epoch() if epoch is None else epoch
    out = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out["meta"]

  def restore(self, abstract_state, epoch: int | None = None):
    """Restores `(state, meta)`; `abstract_state` gives shapes, dtypes and shardings."""
    epoch = self.latest_epoch() if epoch is None else epoch
    out = self.manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def open_existing(workdir: str) -> Checkpointer:
  """A Checkpointer over a finished or running workdir; HfcError if it holds none."""
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    raise errors.HfcError(f"workdir={workdir!r} holds no checkpoint (no {path}).")
  ckpt = Checkpointer(workdir, create=False)
  if ckpt.latest_epoch() is None:
    raise errors.HfcError(f"workdir={workdir!r} holds no finished checkpoint in {path}.")
  return ckpt


def abstract_like(tree, sharding: jax.sharding.Sharding | None = None):
  """ShapeDtypeStructs of `tree`, each placed with `sharding` (default: its own)."""
  def one(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(one, tree)
