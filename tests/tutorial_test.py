"""docs/tutorial.py, executed end to end as a notebook so that it cannot rot.

The jupytext "percent" source is converted to a notebook and run by nbclient in a
Python kernel whose working directory is a temporary one, so the notebook trains the
default run there (2 epochs) and reuses nothing. The kernel, and the training run it
starts, inherit conftest's 8 simulated CPU devices. The checks read the results the
notebook's last cell writes, `<workdir>/tutorial/results.json`.
"""

import json
import os

import jupytext   # the test extra installs both
import nbclient
import pytest

from tests.conftest import ROOT, TINY_FLAGS

TUTORIAL = os.path.join(ROOT, "docs", "tutorial.py")


@pytest.mark.slow
def test_tutorial_runs_end_to_end(tmp_path):
  notebook = jupytext.read(TUTORIAL)
  # The settings cell, as a parameterised notebook's: the other tests' tiny default run
  # (2 epochs, as the notebook says, in batches of 64) on 1,024 training images, so the
  # cells after it have less to wait for and its programs (their shapes set by the
  # batch sizes, not the image counts) are the session's cached ones.
  settings = notebook.cells[2]
  assert 'TRAIN_FLAGS = ["--config.train.epochs=2"]' in settings.source
  assert "--config.train.epochs=2" in TINY_FLAGS
  flags = [f for f in TINY_FLAGS if not f.startswith("--config.data.num_train=")]
  flags.append("--config.data.num_train=1024")
  settings.source = settings.source.replace(
      'TRAIN_FLAGS = ["--config.train.epochs=2"]', f"TRAIN_FLAGS = {flags!r}")
  assert notebook.cells[0].cell_type == "markdown"
  code = [c for c in notebook.cells if c.cell_type == "code"]
  # each code cell has a markdown cell before it that says what and why
  assert all(notebook.cells[i - 1].cell_type == "markdown"
             for i, c in enumerate(notebook.cells) if c.cell_type == "code")
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()   # CellExecutionError, with the cell's traceback, if a cell fails

  out = tmp_path / "workdirs" / "default" / "tutorial"
  results = json.loads((out / "results.json").read_text())
  # 2: the training cell ran (no checkpoint in a fresh directory) with 2 epochs.
  assert results["epochs"] == 2
  assert results["step"] == results["history_step"] == 2 * 1024 // 64
  assert results["kernel_shape"][:3] == [3, 3, 3]
  # 4: LFC + HFC is the image.
  assert results["split_max_error"] < 1e-5
  accuracy = results["accuracy"]
  assert set(accuracy) == {"clean", "lfc_4", "lfc_8", "lfc_12", "hfc_4", "hfc_8", "hfc_12"}
  assert all(0.0 <= a <= 1.0 for a in accuracy.values())
  assert accuracy["clean"] > 0.5      # well above chance (0.1) after 2 epochs
  # 5: error rates over the frequencies with |k| <= 8, one per conjugate pair.
  assert results["heatmap_frequencies"] > 50
  assert 0.0 <= results["heatmap_min"] <= results["heatmap_max"] <= 1.0
  assert 0.0 <= results["clean_error"] <= 1.0
  # the figures, saved and drawn inline (one PNG output each)
  for name in ("kernels", "lfc_hfc", "heatmap"):
    assert (out / f"{name}.png").stat().st_size > 1000
  images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 3
  # the last cell shows the results it wrote
  assert "heatmap_max" in code[-1].outputs[-1]["data"]["text/plain"]
