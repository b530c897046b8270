"""Tests for `python -m hfc_jax.main --help` (hfc_jax/config_help.py)."""

import os
import subprocess
import sys
import time

import ml_collections
import pytest

from hfc_jax import config_help, defaults, main
from tests.conftest import ROOT

SOURCE = '''
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0                    # Model init.
  config.num_devices = ml_collections.config_dict.placeholder(int)  # Mesh size.

  # Training: the loop and its
  # schedule.
  config.train = ml_collections.ConfigDict()
  config.train.epochs = 6
  config.train.weight = 0.0  # > 0: + weight * sum of squared differences of
                             # adjacent kernel values
                                     #   (smooth kernels).
  # A block comment at code indentation: not a continuation of `weight`.
  config.train.radii = (4,
                        8)           # Radii, frequency-index units.
  config.train.overrides = ml_collections.ConfigDict()  # Run name -> partial config.
  other = 3  # not a config field
  return config
'''


def _help(*args, cwd=ROOT):
  """Runs `python -m hfc_jax.main ARGS`; returns (CompletedProcess, seconds)."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "hfc_jax.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
  return result, time.perf_counter() - start


def _flatten(config, prefix=""):
  """Dotted names of the leaves of a ConfigDict (an empty ConfigDict is a leaf)."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      names += _flatten(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


def test_parser_maps_multi_line_comments_to_their_field():
  fields = {f.name: f for f in config_help.parse_fields(SOURCE)}
  assert list(fields) == ["seed", "num_devices", "train", "train.epochs", "train.weight",
                          "train.radii", "train.overrides"]
  assert fields["train.weight"].meaning == ("> 0: + weight * sum of squared differences of "
                                            "adjacent kernel values (smooth kernels).")
  assert (fields["train.weight"].default, fields["train.epochs"].meaning) == ("0.0", "")
  assert (fields["train.radii"].default, fields["train.radii"].meaning) == (
      "(4, 8)", "Radii, frequency-index units.")
  assert fields["train.radii"].leading == ("A block comment at code indentation: not a "
                                           "continuation of `weight`.")
  assert fields["num_devices"].default == "None (int)"
  assert fields["train"].section and not fields["train.overrides"].section
  assert fields["train"].leading == "Training: the loop and its schedule."
  assert (fields["train.overrides"].default, fields["train.overrides"].meaning) == (
      "{}", "Run name -> partial config.")
  assert config_help.field_lines(list(fields.values())) == [
      "  seed = 0   [result]   Model init.",
      "  num_devices = None (int)   [machine]   Mesh size.",
      "",
      "train:",
      "  # Training: the loop and its schedule.",
      "  train.epochs = 6   [resumable]",
      "  train.weight = 0.0   > 0: + weight * sum of squared differences of adjacent kernel "
      "values (smooth kernels).",
      "  train.radii = (4, 8)   Radii, frequency-index units.",
      "  train.overrides = {}   Run name -> partial config."]


def test_parser_lists_every_field_of_the_default_config():
  import configs.default  # pylint: disable=g-import-not-at-top
  path = config_help.default_config_path()
  assert path == os.path.join(ROOT, "hfc_jax", "defaults.py")
  with open(path, encoding="utf-8") as f:
    fields = [f for f in config_help.parse_fields(f.read()) if not f.section]
  assert sorted(f.name for f in fields) == sorted(_flatten(configs.default.get_config()))
  assert sum(1 for f in fields if f.meaning) > len(fields) // 2


@pytest.mark.parametrize("flag", ["--help", pytest.param("-h", marks=pytest.mark.slow),
                                  pytest.param("--helpfull", marks=pytest.mark.slow)])
def test_help_lists_flags_and_config_fields_and_exits_0(flag):
  result, seconds = _help(flag)
  assert result.returncode == 0, result.stderr[-2000:]
  assert seconds < 30, seconds
  lines = result.stdout.splitlines()
  assert lines[0] == ("usage: python -m hfc_jax.main --config=configs/<experiment>.py "
                      "--workdir=<dir> [--config.FIELD=VALUE ...]")
  for name in config_help.MAIN_FLAGS:
    assert any(line.startswith(f"  --{name}: {main.FLAGS[name].help}") for line in lines), name
  assert "  train.epochs = 6   [resumable]" in lines
  assert ("  checkpoint.every_steps = 500   [bookkeeping]   Mid-epoch checkpoint interval in steps (0: none)."
          in lines)
  assert "  eval.radii = (4, 8, 12, 16)   [resumable]   LFC/HFC radii, frequency-index units." in lines
  assert "  data.name = \"embedded\"   [result]   embedded | cifar10 | cifar100 | mnist | fashion_mnist " \
         "| npz | idx (MNIST-format files at data.path)" in lines
  assert lines.index("checkpoint:") < lines.index("eval:")
  assert "  data.data_dir = None (str)   [machine]   TFDS dir (None: default)." in lines
  legend = lines.index("field roles (the [tag] after each default):")
  assert [l.split(":")[0].strip() for l in lines[legend + 1:] if l.startswith("  ") and
          not l.startswith("      ")][:6] == list(defaults.ROLE_MEANINGS)
  assert result.stderr == ""


@pytest.mark.slow
def test_help_and_h_print_the_same_from_any_directory(tmp_path):
  long, _ = _help("--help")
  short, _ = _help("-h", "--workdir=x", cwd=tmp_path)  # configs/ found beside the package
  assert short.returncode == 0 and short.stdout == long.stdout


@pytest.mark.parametrize("argv,wanted", [
    (["main", "--help"], True), (["main", "--config=c.py", "-h"], True),
    (["main", "--helpfull"], True), (["main", "--config=c.py"], False),
    (["main", "--", "--help"], False), (["main", "--config.sweep.runs=--help"], False)])
def test_wants_help(argv, wanted):
  assert config_help.wants_help(argv) == wanted
