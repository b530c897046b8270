"""Performance properties that must hold: no recompilation, bfloat16 compute."""

import logging

import jax
import jax.numpy as jnp
import pytest
from absl import logging as absl_logging
from flax import nnx

from hfc_jax import models, sharding, train
from hfc_jax.models.functional import Functional
from tests.conftest import LogCollector, tiny_config


@pytest.mark.slow
def test_two_epochs_compile_train_and_eval_steps_once(tmp_path):
  handler = LogCollector()
  root = logging.getLogger()
  root.addHandler(handler)
  old_level = logging.getLogger("jax").level
  logging.getLogger("jax").setLevel(logging.WARNING)
  old_verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)   # so that "epoch 1/2 ..." is logged
  try:
    with jax.log_compiles(True):
      # PGD-2 for the per-epoch attack: XLA:CPU unrolls the steps, and 2 compile in a
      # fraction of the default 10's time; one step or ten, it must compile once.
      train.train_and_evaluate(
          tiny_config(**{"eval.robust_subset": 64, "eval.robust_steps": 2}), str(tmp_path),
          mesh=sharding.make_mesh(8))
  finally:
    root.removeHandler(handler)
    logging.getLogger("jax").setLevel(old_level)
    absl_logging.set_verbosity(old_verbosity)
  compiles = [m for m in handler.messages if m.startswith("Finished XLA compilation of")]
  named = lambda name: sum(f"jit({name})" in m for m in compiles)
  assert named("train_step") == 1
  assert named("eval_step") == 1
  assert named("attack_eval_step") == 1
  # Nothing at all is compiled once the first epoch has been recorded.
  first_epoch = next(i for i, m in enumerate(handler.messages) if m.startswith("epoch 1/"))
  later = [m for m in handler.messages[first_epoch:]
           if m.startswith("Finished XLA compilation of")]
  assert later == []


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  """Read from the traced program: a model's dtypes are fixed when it is traced, so the
  models are built abstractly (nnx.eval_shape) and nothing is compiled or run."""
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  for name in ("small_cnn", "preact_resnet32"):
    model = nnx.eval_shape(lambda: models.create(name, num_classes=10, in_channels=3,
                                                 norm="batchnorm", dtype="bfloat16"))
    functional, params, model_state = Functional.split(model)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    jaxpr = jax.make_jaxpr(functional.logits)(params, model_state, x)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert convs and dots
    for eqn in convs + dots:
      assert all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars), eqn
    assert jaxpr.out_avals[0].dtype == jnp.float32
    # And the float32 model really computes in float32.
    f32, p32, s32 = Functional.split(nnx.eval_shape(
        lambda: models.create(name, num_classes=10, in_channels=3)))
    eqns = jax.make_jaxpr(f32.logits)(p32, s32, x).eqns
    convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
    assert convs and all(v.aval.dtype == jnp.float32 for e in convs for v in e.invars)
