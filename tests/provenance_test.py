"""Tests for hfc_jax.workdir.provenance: the command line, the one-line summary, the files."""

import json
import os

import hfc_jax
from hfc_jax.workdir import provenance
from hfc_jax.workdir.layout import Workdir


def test_command_line_of_a_module_run_reads_as_typed():
  main_py = os.path.join(os.path.dirname(hfc_jax.__file__), "main.py")
  argv = [main_py, "--config=configs/default.py", "--config.sweep.runs=('a', 'b')"]
  assert provenance.command_line(argv) == (
      "python -m hfc_jax.main --config=configs/default.py "
      "'--config.sweep.runs=('\"'\"'a'\"'\"', '\"'\"'b'\"'\"')'")
  analysis = os.path.join(os.path.dirname(hfc_jax.__file__), "analysis", "bands.py")
  assert provenance.command_line([analysis]) == "python -m hfc_jax.analysis.bands"
  assert provenance.command_line(["/elsewhere/script.py", "x"]) == "/elsewhere/script.py x"


def test_short_names_the_commit_or_the_version():
  record = {"commit": "0123456789abcdef", "dirty": False, "hfc_jax": "0.1.0",
            "versions": {"jax": "0.10.2"}}
  assert provenance.short(record) == "commit 0123456, jax 0.10.2"
  assert provenance.short({**record, "dirty": True}) == (
      "commit 0123456 (with uncommitted changes), jax 0.10.2")
  assert provenance.short({**record, "commit": None, "versions": {}}) == "hfc_jax 0.1.0"


def test_record_start_appends_and_read_returns_every_start(tmp_path):
  for step in (0, 40):
    provenance.record_start(Workdir.of(tmp_path), step)
  starts = Workdir.of(tmp_path).read_starts()
  assert [s["step"] for s in starts] == [0, 40]
  lines = (tmp_path / Workdir.PROVENANCE).read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [0, 40]
  assert set(starts[0]) == {"step", "time", "hfc_jax", "commit", "dirty", "versions",
                            "python", "command"}
  assert set(starts[0]["versions"]) == set(provenance.PACKAGES)
  assert Workdir.of(tmp_path / "elsewhere").read_starts() == []
