"""Tests for hfc_jax.defaults: the one home of every default, and `complete`."""

import ml_collections

from configs import default
from hfc_jax import defaults


def test_default_experiment_is_the_defaults():
  assert default.get_config().to_dict() == defaults.get_config().to_dict()


def test_complete_fills_missing_fields_and_keeps_own_values():
  old = {"seed": 3, "model": {"name": "plain_cnn", "norm": "none"},   # no model.widths
         "optim": {"name": "sgd"}, "custom": {"note": "kept"}}
  config = defaults.complete(old)
  assert config.seed == 3 and config.model.name == "plain_cnn" and config.optim.name == "sgd"
  assert config.model.widths == () and config.model.dtype == "float32"   # from the defaults
  assert config.optim.learning_rate == defaults.get_config().optim.learning_rate
  assert config.custom.note == "kept"
  assert isinstance(config, ml_collections.ConfigDict)
  # Nothing is lost from a complete config, and the input is not changed.
  full = defaults.get_config()
  full.train.epochs = 99
  assert defaults.complete(full).to_dict() == full.to_dict()
  assert "widths" not in old["model"]


def test_every_bookkeeping_field_exists():
  """report.replicate_key drops these paths; a misspelt one would silently keep a
  field and split replicates apart."""
  config = defaults.get_config().to_dict()
  for path in defaults.BOOKKEEPING:
    section = config
    for name in path.split("."):
      assert isinstance(section, dict) and name in section, path
      section = section[name]
