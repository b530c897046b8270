"""Tests for hfc_jax.defaults: the one home of every default, and `complete`."""

import ast
import json
import pathlib

import ml_collections
import pytest

from configs import default
from hfc_jax import defaults, main
from hfc_jax.analysis import common
from hfc_jax.reporting import report
from hfc_jax.run import resume


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


def fields_without_one_role(config: dict) -> list[str]:
  """The dotted fields of `config` that no `defaults.ROLES` key covers, or that two
  keys cover (a field and its section both listed)."""
  keys = set(defaults.ROLES)
  bad = []
  for field in defaults.dotted_fields(config):
    parts = field.split(".")
    covering = [".".join(parts[:n]) for n in range(1, len(parts) + 1)
                if ".".join(parts[:n]) in keys]
    if len(covering) != 1:
      bad.append(field)
  return bad


def test_every_field_has_exactly_one_role():
  assert fields_without_one_role(defaults.get_config().to_dict()) == []
  assert set(defaults.ROLES.values()) <= set(defaults.ROLE_MEANINGS)


def test_a_new_field_without_a_role_is_caught():
  """The check above can fail: a field added to a mixed section (train, data, the top
  level) has no role until one is written for it."""
  config = defaults.get_config().to_dict()
  config["train"]["new_knob"] = 1
  config["new_top"] = 2
  assert sorted(fields_without_one_role(config)) == ["new_top", "train.new_knob"]
  assert defaults.role("train.new_knob") is None
  assert defaults.role("model.new_knob") == defaults.RESULT   # a whole-section role


def test_every_roles_key_names_a_field_or_section():
  """A misspelt key would give its role to nothing and leave the real field unassigned."""
  fields = defaults.dotted_fields(defaults.get_config().to_dict())
  for key in defaults.ROLES:
    assert any(f == key or f.startswith(key + ".") for f in fields), key


ALL_FIELDS = list(defaults.dotted_fields(defaults.get_config().to_dict()))


@pytest.mark.parametrize("field", ALL_FIELDS)
def test_derived_lists_agree_with_the_registry(field):
  """resume's refusal, report's replicate key and the analyses' test-set comparison each
  treat every field as its role says."""
  role = defaults.role(field)
  assert resume.changes_result(field) == (role in (defaults.RESULT, defaults.TRAINING_DATA))
  base = defaults.get_config().to_dict()
  changed = json.loads(json.dumps(base))
  *parents, leaf = field.split(".")
  section = changed
  for name in parents:
    section = section[name]
  section[leaf] = ["a value no default has"]
  in_key = report.replicate_key(base) != report.replicate_key(changed)
  assert in_key == (role in (defaults.RESULT, defaults.TRAINING_DATA, defaults.RESUMABLE)
                    and field != "seed")
  if field.startswith("data."):
    assert (leaf in common.TRAINING_ONLY) == (role in (defaults.TRAINING_DATA,
                                                       defaults.MACHINE))


def test_allow_changed_config_help_lists_the_result_fields():
  """The flag's help is made from the registry: every section or field that refuses a
  resume is named, and the data directory is excepted."""
  text = main.FLAGS["allow_changed_config"].help
  for key in defaults.fields_with_role(defaults.RESULT, defaults.TRAINING_DATA):
    section = key.split(".")[0]
    assert key in text or f"{section}.*" in text, key
  assert "data.* except data.data_dir" in text


# ---------------------------------------------------------------- no literal copies

# Config fields whose defaults are distinctive enough that a function parameter or
# dataclass field of the same meaning holding the same value can only be a copy of
# them: {dotted field: the parameter names meaning it}. 'Owner.name' matches only in
# the function or class Owner (for names as common as `steps`).
COPIED_NAMES = {
    "data.num_train": ("num_train",),
    "data.num_test": ("num_test",),
    "data.image_size": ("image_size",),
    "data.hf_prob": ("hf_prob",),
    "data.hf_amplitude": ("hf_amplitude", "amplitude"),
    "data.aug_pad": ("aug_pad", "pad"),
    "data.aug_pad_mode": ("aug_pad_mode", "pad_mode"),
    "data.aug_flip": ("aug_flip", "flip"),
    "model.norm": ("norm",),
    "optim.learning_rate": ("learning_rate", "lr"),
    "train.prefetch": ("prefetch", "prefetch.size"),
    "checkpoint.keep": ("keep", "max_to_keep"),
    "eval.radii": ("radii",),
    "eval.robust_eps": ("robust_eps",),
    "adv.eps": ("eps",),
    "adv.step_size": ("step_size",),
    "adv.name": ("Adversary.name",),
    "adv.steps": ("Adversary.steps",),
    "adv.random_start": ("Adversary.random_start",),
    "adv.restarts": ("Adversary.restarts",),
    "adv.train_mode": ("Adversary.train_mode",),
}
_ARITHMETIC = (ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.List,
               ast.Load, ast.operator, ast.unaryop)


def _constant(node: ast.expr):
  """The value of a default written as a literal or literal arithmetic (8 / 255), as it
  reads back from JSON (tuples become lists); None for anything else."""
  tree = ast.Expression(node)
  if not all(isinstance(n, _ARITHMETIC) for n in ast.walk(tree)):
    return None
  try:
    value = eval(compile(tree, "<default>", "eval"),  # pylint: disable=eval-used
                 {"__builtins__": {}})
  except Exception:  # pylint: disable=broad-except  (1 / 0 and the like: no constant)
    return None
  return json.loads(json.dumps(value))


def _defaults_in(node: ast.AST, prefix: str = ""):
  """(qualified owner, owner, parameter name, value) of every keyword default of a
  function definition and every class-level annotated default (dataclass fields)
  under `node`; methods are owned by 'Class.method'."""
  for child in ast.iter_child_nodes(node):
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
      a = child.args
      positional = a.posonlyargs + a.args
      pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
      pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
      for arg, default_node in pairs:
        yield prefix + child.name, child.name, arg.arg, _constant(default_node)
    elif isinstance(child, ast.ClassDef):
      for item in child.body:
        if (isinstance(item, ast.AnnAssign) and item.value is not None
            and isinstance(item.target, ast.Name)):
          yield prefix + child.name, child.name, item.target.id, _constant(item.value)
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      yield from _defaults_in(child, f"{prefix}{child.name}.")
    else:
      yield from _defaults_in(child, prefix)


def _same(a, b) -> bool:
  """Equal values of the same kind (True is no copy of 1, nor 1.0 of True)."""
  return isinstance(a, bool) == isinstance(b, bool) and a == b


def copied_defaults(source: str, where: str = "<source>") -> list[str]:
  """'where: owner(name=value) copies field' for each default in `source` that
  `COPIED_NAMES` names and that equals that config field's default."""
  fields = defaults.dotted_fields(defaults.get_config().to_dict())
  found = []
  for qualified, owner, name, value in _defaults_in(ast.parse(source)):
    for field, names in COPIED_NAMES.items():
      if ((name in names or f"{owner}.{name}" in names) and value is not None
          and _same(value, fields[field])):
        found.append(f"{where}: {qualified}({name}={value!r}) copies {field}")
  return found


def test_copied_defaults_finds_literal_copies_and_only_them():
  source = '''
import dataclasses

def generate(*, seed, hf_amplitude: float = 0.04, hf_prob=0.5, pad=2 * 1):
  pass

def prefetch(iterator, size=2):
  pass

def unrelated(size=2, steps=10, flip=1, keep=3.5, radii=(4, 8, 12)):
  pass

class Checkpointer:
  def __init__(self, workdir, *, keep: int = 3, read_only=False):
    pass

@dataclasses.dataclass
class Adversary:
  eps: float = 0.03
  step_size: float = 3 / 1000
  steps: int = 10
  train_mode: bool = False
'''
  assert sorted(copied_defaults(source, "x.py")) == sorted([
      "x.py: generate(hf_amplitude=0.04) copies data.hf_amplitude",
      "x.py: generate(pad=2) copies data.aug_pad",
      "x.py: prefetch(size=2) copies train.prefetch",
      "x.py: Checkpointer.__init__(keep=3) copies checkpoint.keep",
      "x.py: Adversary(eps=0.03) copies adv.eps",
      "x.py: Adversary(step_size=0.003) copies adv.step_size",
      "x.py: Adversary(steps=10) copies adv.steps",
      "x.py: Adversary(train_mode=False) copies adv.train_mode"])


def test_no_library_function_copies_a_config_default():
  """Defaults live in `hfc_jax.defaults` only: a library function or dataclass that
  writes one of them again as its own default (`generate(hf_amplitude=0.04)`,
  `Checkpointer(keep=3)`, `prefetch(size=2)`, the adversary's step size 0.003) would
  silently keep the old value when the config's default changes, for every caller that
  leaves the argument out. Scans every module of hfc_jax with `ast` for the
  distinctive defaults of `COPIED_NAMES`; callers pass them from the config instead."""
  root = pathlib.Path(defaults.__file__).parent
  found = []
  for path in sorted(root.rglob("*.py")):
    found += copied_defaults(path.read_text(), str(path.relative_to(root.parent)))
  assert found == []
  assert len(list(root.rglob("*.py"))) > 50   # the scan saw the package
