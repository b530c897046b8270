"""`Workdir`: the one place that knows a run directory's file names."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

from hfc_jax import errors
from hfc_jax.workdir.layout import Workdir

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hfc_jax"
FILE_NAMES = {Workdir.METRICS, Workdir.CONFIG, Workdir.CONFIG_HISTORY, Workdir.PROVENANCE,
              Workdir.LOCK, Workdir.CHECKPOINTS, Workdir.UNREADABLE, Workdir.TENSORBOARD,
              Workdir.CURVES, Workdir.SWEEP, Workdir.REPORT}
# String literals equal to a workdir file name that name something else.
OTHER_MEANINGS = {
    ("analysis/kernels.py", "sweep.json"),   # the kernels study's own output file
    ("defaults.py", "tensorboard"),          # the config field `tensorboard`
    ("stacked.py", "tensorboard"),           # the config field, a per-run setting
}


def test_of_normalises_local_paths_and_keeps_remote_ones(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  local = Workdir.of("runs/a/")
  assert local.path == str(tmp_path / "runs" / "a") and str(local) == local.path
  assert os.fspath(local) == local.path and local.name == "a"
  assert Workdir.of(local) is local
  remote = Workdir("gs://bucket/sweep")
  assert remote.metrics == "gs://bucket/sweep/metrics.jsonl"
  assert remote.run("vanilla").checkpoints == "gs://bucket/sweep/vanilla/checkpoints"
  assert remote.run("vanilla").name == "vanilla"
  with pytest.raises(errors.HfcError, match=r"^workdir='ftp://x/y': the scheme ftp://"):
    Workdir.of("ftp://x/y")
  with pytest.raises(errors.HfcError, match=r"^--workdirs='ftp://x/y'"):
    Workdir.of("ftp://x/y", "--workdirs")


def test_every_file_has_its_documented_name(tmp_path):
  w = Workdir.of(tmp_path)
  assert {os.path.relpath(getattr(w, attr), tmp_path) for attr in (
      "metrics", "config", "config_history", "provenance", "lock", "checkpoints",
      "unreadable_checkpoints", "tensorboard", "curves", "sweep", "report")} == FILE_NAMES
  assert w.study("kernels") == str(tmp_path / "kernels")
  doc = pathlib.Path(PACKAGE / "workdir" / "layout.py").read_text().split('"""')[1]
  assert all(name in doc for name in FILE_NAMES)


def test_small_files_round_trip(tmp_path):
  w = Workdir.of(tmp_path / "run")
  assert not w.exists() and not w.is_run() and not w.is_sweep()
  w.create()
  assert w.exists() and not w.is_run()
  w.write_config({"seed": 3, "model": {"name": "small_cnn"}})
  assert w.is_run() and w.read_json(Workdir.CONFIG) == {"seed": 3, "model": {"name": "small_cnn"}}
  history = [{"epoch": 1, "test/clean": 0.5}, {"epoch": 2, "test/clean": float("nan")}]
  w.write_metrics(history)
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
  assert w.read_starts() == [] and w.read_config_history() == []
  w.append_start({"step": 0})
  w.append_start({"step": 40})
  w.append_config_change({"step": 40, "changes": {"train.epochs": [2, 4]}})
  assert [s["step"] for s in w.read_starts()] == [0, 40]
  assert w.read_config_history() == [{"step": 40, "changes": {"train.epochs": [2, 4]}}]
  w.write_sweep({"runs": []})
  assert w.is_sweep() and not w.has_checkpoints()
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
      [Workdir.CONFIG, Workdir.METRICS, Workdir.PROVENANCE, Workdir.CONFIG_HISTORY,
       Workdir.SWEEP])   # no temporary file left behind by the atomic writes


def _string_literals(tree: ast.AST):
  """String constants of a module that are not docstrings."""
  docstrings = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        docstrings.add(id(body[0].value))
  for node in ast.walk(tree):
    if (isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings):
      yield node


def test_only_the_layout_module_names_workdir_files():
  """Issue: the file names were known in five modules. Now `layout` holds them; any
  other module that spells one (outside docstrings) fails here."""
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    relative = path.relative_to(PACKAGE).as_posix()
    if relative == "workdir/layout.py":
      continue
    for node in _string_literals(ast.parse(path.read_text())):
      if node.value in FILE_NAMES and (relative, node.value) not in OTHER_MEANINGS:
        found.append(f"{relative}:{node.lineno} {node.value!r}")
  assert found == []


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch where it is installed (the `torch` extra, as in CI), only
  to accept torch tensors: 2.7 s of every run's start. The writer is made without it,
  writes its events, and torch stays importable afterwards."""
  code = ("import sys, importlib.util\n"
          "from hfc_jax.workdir import records\n"
          f"writer = records.tensorboard_writer({str(tmp_path)!r})\n"
          "writer.add_scalar('test/clean', 0.5, 1)\n"
          "writer.close()\n"
          "assert 'torch' not in sys.modules\n"
          "if importlib.util.find_spec('torch') is not None:\n"
          "  import torch\n"
          "  print('torch', torch.ones(2).sum().item())\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  if "torch" in result.stdout:
    assert "torch 2.0" in result.stdout
