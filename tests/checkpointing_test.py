"""Orbax checkpoints: no compiled work at save time, restore across meshes and formats."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hfc_jax import errors, sharding
from hfc_jax.workdir import checkpointing
from hfc_jax.workdir.layout import Workdir
from tests.conftest import LogCollector


def _state(mesh):
  """A small replicated train-state-like pytree: float leaves of several shapes,
  an int step and raw RNG key data, with distinct values."""
  rng = np.random.default_rng(0)
  tree = {"conv": {"kernel": rng.normal(size=(3, 3, 3, 16)).astype(np.float32),
                   "bias": rng.normal(size=(16,)).astype(np.float32)},
          "dense": rng.normal(size=(64, 10)).astype(np.float32),
          "step": np.int32(7),
          "rng": np.asarray(jax.random.key_data(jax.random.key(3)))}
  return sharding.put_replicated(tree, mesh)


def _assert_equal_trees(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _compiles_during_save(ckpt, epoch, state) -> list[str]:
  handler = LogCollector()
  root = logging.getLogger()
  root.addHandler(handler)
  old_level = logging.getLogger("jax").level
  logging.getLogger("jax").setLevel(logging.WARNING)
  try:
    with jax.log_compiles(True):
      ckpt.save(epoch, state, {"epoch": epoch})
      ckpt.wait()
  finally:
    root.removeHandler(handler)
    logging.getLogger("jax").setLevel(old_level)
  return [m for m in handler.messages if m.startswith("Finished XLA compilation of")]


def test_save_on_8_devices_compiles_nothing_and_restores_on_1(tmp_path):
  # Orbax's default replica-parallel save slices every replicated leaf with a small
  # compiled program per shape and device (7.5 s for a ResNet-18 state's first save).
  state = _state(sharding.make_mesh(8))
  ckpt = checkpointing.Checkpointer(Workdir.of(tmp_path))
  assert _compiles_during_save(ckpt, 1, state) == []
  ckpt.close()

  one = sharding.make_mesh(1)
  ckpt = checkpointing.open_existing(Workdir.of(tmp_path))
  restored, meta = ckpt.restore(checkpointing.abstract_like(state, sharding.replicated(one)))
  ckpt.close()
  assert meta == {"epoch": 1}
  _assert_equal_trees(restored, state)
  assert all(x.sharding == sharding.replicated(one) for x in jax.tree.leaves(restored))


def test_orbax_global_type_handlers_are_left_alone(tmp_path):
  before = ocp.type_handlers.get_type_handler(jax.Array)
  checkpointing.Checkpointer(Workdir.of(tmp_path)).close()
  assert ocp.type_handlers.get_type_handler(jax.Array) is before
  assert checkpointing.type_handlers().get(jax.Array) is not before


def test_checkpoint_written_by_standard_save_restores(tmp_path):
  # Workdirs written before the PyTree handler (StandardSave, global registry).
  mesh = sharding.make_mesh(8)
  state = _state(mesh)
  manager = ocp.CheckpointManager(Workdir.of(tmp_path).checkpoints)
  manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave({"epoch": 2})))
  manager.wait_until_finished()
  manager.close()

  ckpt = checkpointing.open_existing(Workdir.of(tmp_path))
  assert ckpt.latest_step() == 2
  restored, meta = ckpt.restore(checkpointing.abstract_like(state))
  ckpt.close()
  assert meta == {"epoch": 2}
  _assert_equal_trees(restored, state)
  assert jnp.asarray(restored["step"]).dtype == jnp.int32


class _Steps:
  """A stand-in Checkpointer holding `steps` (newest_readable only lists them)."""

  def __init__(self, steps):
    self.steps = steps

  def all_steps(self):
    return list(self.steps)


def test_newest_readable_skips_unreadable_steps_newest_first():
  tried, skipped = [], []

  def read(step):
    tried.append(step)
    if step in (30, 20):
      raise (ValueError if step == 30 else FileNotFoundError)(f"step {step} is truncated")
    return f"state {step}"

  found = checkpointing.newest_readable(_Steps([10, 20, 30]), read,
                                        lambda s, e: skipped.append((s, type(e).__name__)))
  assert found == (10, "state 10")
  assert tried == [30, 20, 10]
  assert skipped == [(30, "ValueError"), (20, "FileNotFoundError")]


def test_newest_readable_none_when_nothing_reads_and_verdicts_propagate():
  def broken(step):
    raise OSError(step)
  skipped = []
  assert checkpointing.newest_readable(_Steps([1, 2]), broken,
                                       lambda s, e: skipped.append(s)) is None
  assert skipped == [2, 1]
  assert checkpointing.newest_readable(_Steps([]), broken, skipped.append) is None

  def changed(step):
    raise errors.HfcError("settings changed")
  with pytest.raises(errors.HfcError, match="settings changed"):
    checkpointing.newest_readable(_Steps([1, 2]), changed, lambda s, e: None)
