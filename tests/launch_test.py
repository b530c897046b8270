"""launch/: --dry-run output, flag errors, and runs against a stand-in gcloud and python.

No test calls the real gcloud: every one puts a stand-in first on PATH that records its
arguments (calls.jsonl) and answers `describe` and the run probe from queues of canned
states (a file per queue, one state per line, the last one repeated).
"""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"

TPU = ["--project", "my-proj", "--zone", "us-central2-b", "--name", "hfc-v4",
       "--accelerator-type", "v4-32"]
RUN = ["--bucket", "my-bucket", "--config", "configs/cifar10_resnet18.py",
       "--data-dir", "gs://my-bucket/tfds", "--config.eval.radii=(4,8)"]
WHERE = "--zone=us-central2-b --project=my-proj"
VM = "gcloud compute tpus tpu-vm"
QR = "gcloud compute tpus queued-resources"
DESCRIBE_VM = f"{VM} describe hfc-v4 {WHERE} '--format=value(state)'"
DESCRIBE_QR = f"{QR} describe hfc-v4 {WHERE} '--format=value(state.state)'"
SSH_ALL = f"{VM} ssh hfc-v4 {WHERE} --worker=all --command "
RUNNING = r"""[ -f ~/hfc_run/pid ] && kill -0 "$(cat ~/hfc_run/pid)" 2>/dev/null"""
SETUP = (
    SSH_ALL + r"""'set -e; python3 -m pip --version >/dev/null 2>&1 || { sudo apt-get update -qq"""
    r""" && sudo apt-get install -y -qq python3-pip; }; python3 -m pip install --user --quiet"""
    r""" --upgrade uv; rm -rf ~/hfc_jax && mkdir ~/hfc_jax && tar -xzf ~/hfc_jax.tar.gz -C"""
    r""" ~/hfc_jax; cd ~/hfc_jax; [ -x ~/hfc_venv/bin/python ] || python3 -m uv venv --python"""
    r""" 3.11 ~/hfc_venv; python3 -m uv pip install --quiet --python ~/hfc_venv/bin/python -e"""
    r""" '\''.[tpu,gcs]'\''; mkdir -p ~/hfc_run; touch ~/hfc_run/setup_done'""")
START = (
    SSH_ALL + f"""'set -e; cd ~/hfc_jax; mkdir -p ~/hfc_run; if {RUNNING}; then echo "a run is"""
    """ going on $(hostname) already" >&2; exit 1; fi; rm -f ~/hfc_run/status"""
    """ ~/hfc_run/stopped; setsid nohup bash launch/keep_running.sh --max-failures 2"""
    """ --status-file ~/hfc_run/status -- ~/hfc_venv/bin/python -m hfc_jax.main"""
    """ --jax_distributed --config=configs/cifar10_resnet18.py"""
    """ --workdir=gs://my-bucket/runs/hfc-v4 --config.data.data_dir=gs://my-bucket/tfds"""
    r""" '\''--config.eval.radii=(4,8)'\'' >> ~/hfc_run/run.log 2>&1 < /dev/null &"""
    """ echo $! > ~/hfc_run/pid'""")
PROBE = (
    f"{VM} ssh hfc-v4 {WHERE} --worker=0 --command 'if [ ! -f ~/hfc_run/setup_done ]; then"
    " echo new; elif [ -f ~/hfc_run/status ] && [ -f ~/hfc_run/stopped ]; then echo stopped;"
    f" elif [ -f ~/hfc_run/status ]; then cat ~/hfc_run/status; elif {RUNNING}; then echo"
    " running; else echo idle; fi'")


def setup_lines(tmp):
  tarball = f"{tmp}/hfc_jax_hfc-v4.tar.gz"
  return [f"git -C {ROOT} archive --format=tar.gz --output={tarball} HEAD",
          f"{VM} scp {tarball} hfc-v4:hfc_jax.tar.gz --worker=all {WHERE}",
          SETUP]


TPU_DRY_RUN = {
    "create": lambda tmp: [
        f"{VM} create hfc-v4 {WHERE} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base",
        DESCRIBE_VM],
    "setup": setup_lines,
    "run": lambda tmp: [START],
    "status": lambda tmp: [DESCRIBE_VM, PROBE],
    "logs": lambda tmp: [f"{VM} ssh hfc-v4 {WHERE} --worker=0 --command"
                         " 'tail -n 100 -F ~/hfc_run/run.log'"],
    "stop": lambda tmp: [
        SSH_ALL + f"""'if {RUNNING}; then touch ~/hfc_run/stopped; kill -TERM -- "-$(cat"""
        """ ~/hfc_run/pid)"; echo "stopping the run on $(hostname)"; fi'"""],
    "fetch": lambda tmp: [
        "mkdir -p workdirs/hfc-v4",
        "gcloud storage rsync --recursive gs://my-bucket/runs/hfc-v4 workdirs/hfc-v4"],
    "delete": lambda tmp: [f"{VM} delete hfc-v4 {WHERE} --quiet", DESCRIBE_VM],
    "watch": lambda tmp: [
        DESCRIBE_VM, PROBE, "# when hfc-v4 is preempted or missing:",
        f"{VM} delete hfc-v4 {WHERE} --quiet", DESCRIBE_VM,
        f"{VM} create hfc-v4 {WHERE} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base",
        DESCRIBE_VM, *setup_lines(tmp), START],
}


@pytest.fixture
def bin_dir(tmp_path):
  """tmp_path/bin, holding the stand-in gcloud (and python, where a test adds it)."""
  path = tmp_path / "bin"
  path.mkdir()
  write_script(path / "gcloud", GCLOUD)
  return path


@pytest.fixture
def env(tmp_path, bin_dir):
  e = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
  e.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
  e.pop("SLURM_JOB_ID", None)
  return e


GCLOUD = '''
"""Stand-in gcloud: records argv; answers describe and the run probe from queue files."""
import json, pathlib, sys
here = pathlib.Path(__file__).parent
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as f:
  f.write(json.dumps(args) + "\\n")

def pop(name, default):
  path = here / name
  lines = path.read_text().split() if path.exists() else []
  if len(lines) > 1:
    path.write_text("\\n".join(lines[1:]))
  return lines[0] if lines else default

if "describe" in args:
  state = pop("qr_states" if "queued-resources" in args else "vm_states", "READY")
  if state == "NOT_FOUND":
    sys.exit(f"ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: {args[4]} was not found")
  print(state)
elif "ssh" in args and "echo running" in args[-1]:
  print(pop("probes", "running"))
'''

# Stand-in for `python -m hfc_jax.main`: records argv and exits with the next code of `codes`.
FAKE_MAIN = '''
import json, os, pathlib, sys
here = pathlib.Path(__file__).parent
with open(here / "main_calls.jsonl", "a") as f:
  f.write(json.dumps([sys.argv[1:], os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")]) + "\\n")
codes = (here / "codes").read_text().split()
(here / "codes").write_text(" ".join(codes[1:] or codes))
sys.exit(int(codes[0]))
'''

# Stand-in for a run that SIGTERM stops with exit status 143 after its "checkpoint".
SLEEPER = '''
import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
with open(pathlib.Path(__file__).parent / "starts", "a") as f:
  f.write(f"{os.getpid()}\\n")
time.sleep(30)
'''


def write_script(path, body):
  path.write_text(f"#!{sys.executable}\n{body}")
  path.chmod(0o755)


def sh(script, *args, env=None):
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True,
                        text=True, env=env, timeout=60)


def calls(bin_dir):
  path = bin_dir / "calls.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(args):
  """One gcloud call in short: 'vm create', 'qr describe', 'ssh probe', 'scp', ..."""
  if args[0] == "storage":
    return f"storage {args[1]}"
  if args[3] == "ssh":
    command = args[-1]
    kind = ("probe" if "echo running" in command else "setup" if "uv venv" in command
            else "run" if "keep_running.sh" in command else "other")
    return f"ssh {kind}"
  if args[3] == "scp":
    return "scp"
  return f"{'vm' if args[2] == 'tpu-vm' else 'qr'} {args[3]}"


def queue(bin_dir, name, *states):
  (bin_dir / name).write_text("\n".join(states))


# ---- --dry-run prints exactly the commands, and runs none of them


@pytest.mark.parametrize("command", sorted(TPU_DRY_RUN))
def test_tpu_dry_run(command, tmp_path, bin_dir, env):
  result = sh("tpu_vm.sh", command, *TPU, *RUN, "--dry-run", env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == TPU_DRY_RUN[command](tmp_path)
  assert not calls(bin_dir)


def test_tpu_dry_run_spot_and_repo(tmp_path, env):
  spot = [*TPU, "--spot", "--dry-run"]
  assert sh("tpu_vm.sh", "create", *spot, "--version=v2-alpha-tpuv4", env=env).stdout == "\n".join([
      f"{QR} create hfc-v4 {WHERE} --node-id=hfc-v4 --accelerator-type=v4-32"
      " --runtime-version=v2-alpha-tpuv4 --spot", DESCRIBE_QR, DESCRIBE_VM, ""])
  assert sh("tpu_vm.sh", "delete", *spot, env=env).stdout == "\n".join([
      f"{QR} delete hfc-v4 {WHERE} --force --quiet", DESCRIBE_QR, ""])
  v5e = sh("tpu_vm.sh", "create", *TPU, "--accelerator-type=v5litepod-16", "--dry-run", env=env)
  assert "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite\n" in v5e.stdout
  repo = sh("tpu_vm.sh", "setup", *TPU, "--repo", "https://example.com/me/hfc jax.git",
            "--ref=v1", "--dry-run", env=env)
  assert repo.stdout.splitlines() == [SETUP.replace(
      "rm -rf ~/hfc_jax && mkdir ~/hfc_jax && tar -xzf ~/hfc_jax.tar.gz -C ~/hfc_jax",
      r"rm -rf ~/hfc_jax && git clone '\''https://example.com/me/hfc jax.git'\'' ~/hfc_jax"
      " && git -C ~/hfc_jax checkout v1")]


def test_tpu_overrides_survive_two_shells(env):
  """The printed ssh line, read by a shell, gives gcloud a --command that a second shell
  (the worker's) reads back into main's exact arguments."""
  odd = ["--config.eval.radii=(4,8)", "--config.note=it's a $HOME `x` \"y\"", "--config.e="]
  result = sh("tpu_vm.sh", "run", *TPU, *RUN[:4], *odd, "--workdir=gs://b/runs/a b",
              "--dry-run", env=env)
  gcloud_argv = shlex.split(result.stdout)
  worker_argv = shlex.split(gcloud_argv[gcloud_argv.index("--command") + 1])
  main = worker_argv[worker_argv.index("hfc_jax.main") + 1:worker_argv.index(">>")]
  assert main == ["--jax_distributed", "--config=configs/cifar10_resnet18.py",
                  "--workdir=gs://b/runs/a b", *odd]


def test_quote_round_trips_through_bash():
  words = ["plain-1.0/x:y=z,w@v%+", "", "a b", "it's", "$HOME", "`x`", '"q"', "(4,8)", "~/x",
           "*", "new\nline", "'", "\\"]
  quoted = subprocess.run(["bash", "-c", f"source {LAUNCH}/common.sh; quote \"$@\"", "_", *words],
                          capture_output=True, text=True, check=True).stdout
  back = subprocess.run(["bash", "-c", f"printf '%s\\0' {quoted}"], capture_output=True,
                        text=True, check=True).stdout
  assert back.split("\0")[:-1] == words


GPU_DRY_RUN = {
    "one host": ([], {}, [
        f"python -m pip install -e '{ROOT}[cuda]'",
        f"env XLA_PYTHON_CLIENT_PREALLOCATE=false bash {LAUNCH}/keep_running.sh --max-failures 2"
        " -- python -m hfc_jax.main --config=configs/default.py --workdir=/runs/r"
        " '--config.eval.radii=(4,8)'"]),
    "slurm": (["--slurm", "--max-failures=0"],
              {"SLURM_JOB_ID": "7", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}, [
        f"python -m pip install -e '{ROOT}[cuda]'",
        f"env XLA_PYTHON_CLIENT_PREALLOCATE=true srun --ntasks-per-node=1 bash"
        f" {LAUNCH}/keep_running.sh --max-failures 0 -- python -m hfc_jax.main --jax_distributed"
        " --config=configs/default.py --workdir=/runs/r '--config.eval.radii=(4,8)'"]),
    "by hand": (["--coordinator", "host0:1234", "--num-processes", "2", "--process-id=1",
                 "--python", "/opt/py 3/bin/python", "--data-dir", "/data/tfds"], {}, [
        f"'/opt/py 3/bin/python' -m pip install -e '{ROOT}[cuda]'",
        f"env XLA_PYTHON_CLIENT_PREALLOCATE=false bash {LAUNCH}/keep_running.sh --max-failures 2"
        " -- '/opt/py 3/bin/python' -m hfc_jax.main --jax_distributed"
        " --coordinator_address=host0:1234 --num_processes=2 --process_id=1"
        " --config=configs/default.py --workdir=/runs/r --config.data.data_dir=/data/tfds"
        " '--config.eval.radii=(4,8)'"]),
}


@pytest.mark.parametrize("case", sorted(GPU_DRY_RUN))
def test_gpu_dry_run(case, env):
  flags, extra_env, expected = GPU_DRY_RUN[case]
  result = sh("gpu_host.sh", "--config=configs/default.py", "--workdir", "/runs/r", "--install",
              *flags, "--config.eval.radii=(4,8)", "--dry-run", env={**env, **extra_env})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == expected


# ---- Bad flags: one line, exit status 2; --help: exit status 0


BAD = [
    ("tpu_vm.sh", [], "a command is needed"),
    ("tpu_vm.sh", ["launch", *TPU], "unknown command 'launch'"),
    ("tpu_vm.sh", ["create", "--project=p", "--name=n", "--accelerator-type=v4-8"], "--zone"),
    ("tpu_vm.sh", ["create", *TPU[:6]], "--accelerator-type"),
    ("tpu_vm.sh", ["run", *TPU, "--bucket=b"], "--config"),
    ("tpu_vm.sh", ["run", *TPU, "--config=c.py"], "--bucket or --workdir"),
    ("tpu_vm.sh", ["watch", *TPU[:6], *RUN], "--accelerator-type"),
    ("tpu_vm.sh", ["status", *TPU, "--zones=x"], "unknown flag '--zones'"),
    ("tpu_vm.sh", ["status", *TPU, "--poll", "soon"], "--poll needs a whole number"),
    ("tpu_vm.sh", ["status", *TPU, "--zone"], "--zone needs a value"),
    ("gpu_host.sh", ["--workdir=/r"], "--config"),
    ("gpu_host.sh", ["--config=c.py"], "--workdir"),
    ("gpu_host.sh", ["--config=c.py", "--workdir=/r", "--gpus=8"], "unknown flag '--gpus'"),
    ("gpu_host.sh", ["--config=c.py", "--workdir=/r", "--coordinator=h:1"], "--num-processes"),
    ("gpu_host.sh", ["--config=c.py", "--workdir=/r", "--slurm"], "SLURM_JOB_ID"),
    ("keep_running.sh", ["--delay=1"], "no command"),
    ("keep_running.sh", ["--tries=1", "--", "true"], "unknown flag '--tries'"),
]


@pytest.mark.parametrize("script,args,message", BAD, ids=[f"{s}:{m}" for s, _, m in BAD])
def test_bad_flags(script, args, message, bin_dir, env):
  result = sh(script, *args, env=env)
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{script}: error: ")
  assert message in result.stderr
  assert not calls(bin_dir)


@pytest.mark.parametrize("script,args", [("tpu_vm.sh", ["--help"]), ("tpu_vm.sh", ["run", "-h"]),
                                         ("gpu_host.sh", ["-h"]), ("keep_running.sh", ["--help"])])
def test_help(script, args, env):
  result = sh(script, *args, env=env)
  assert result.returncode == 0 and result.stderr == ""
  assert f"\nUsage: launch/{script} " in result.stdout
  assert not any(line.startswith("#") for line in result.stdout.splitlines()[:3])


# ---- keep_running.sh: which exit statuses run the command again


@pytest.mark.parametrize("codes,runs,status", [
    ("143 143 0", 3, 0),     # two SIGTERMs, resumed twice, then finished
    ("2", 1, 2),             # bad input: never again
    ("130", 1, 130),         # Ctrl-C
    ("1 143 0", 3, 0),       # one failure retried
    ("1 137 1 0", 3, 1),     # --max-failures 2: the third failure ends it
])
def test_keep_running_exit_statuses(codes, runs, status, tmp_path):
  write_script(tmp_path / "main", FAKE_MAIN)
  (tmp_path / "codes").write_text(codes)
  result = sh("keep_running.sh", "--delay=0", "--status-file", str(tmp_path / "status"), "--",
              str(tmp_path / "main"), "--config.x=a b")
  assert result.returncode == status, result.stderr
  lines = (tmp_path / "main_calls.jsonl").read_text().splitlines()
  assert [json.loads(line)[0] for line in lines] == [["--config.x=a b"]] * runs
  assert (tmp_path / "status").read_text() == f"{status}\n"


def wait_for_starts(path, n):
  deadline = time.time() + 20
  while time.time() < deadline:
    if path.exists() and len(path.read_text().split()) >= n:
      return [int(pid) for pid in path.read_text().split()]
    time.sleep(0.05)
  raise AssertionError(f"{n} starts expected")


def test_keep_running_sigterm_to_the_run_resumes_to_the_group_stops(tmp_path):
  write_script(tmp_path / "sleeper", SLEEPER)
  loop = subprocess.Popen(
      ["bash", str(LAUNCH / "keep_running.sh"), "--", str(tmp_path / "sleeper")],
      start_new_session=True, stderr=subprocess.PIPE, text=True)
  try:
    os.kill(wait_for_starts(tmp_path / "starts", 1)[0], signal.SIGTERM)  # the run alone
    wait_for_starts(tmp_path / "starts", 2)                              # ... resumes
    os.killpg(loop.pid, signal.SIGTERM)                                  # the whole group
    assert loop.wait(timeout=20) == 143
  finally:
    if loop.poll() is None:
      os.killpg(loop.pid, signal.SIGKILL)
  assert len((tmp_path / "starts").read_text().split()) == 2
  assert "this loop got SIGTERM too: stopping" in loop.stderr.read()


def test_gpu_host_resumes_after_143(tmp_path, env):
  write_script(tmp_path / "main", FAKE_MAIN)
  (tmp_path / "codes").write_text("143 0")
  result = sh("gpu_host.sh", "--python", str(tmp_path / "main"), "--config=configs/default.py",
              "--workdir", str(tmp_path / "run"), env=env)
  assert result.returncode == 0, result.stderr
  expected = [["-m", "hfc_jax.main", "--config=configs/default.py", f"--workdir={tmp_path}/run"],
              "false"]
  lines = (tmp_path / "main_calls.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [expected, expected]


# ---- tpu_vm.sh against the stand-in gcloud


def test_tpu_create_waits_until_ready(bin_dir, env):
  queue(bin_dir, "vm_states", "CREATING", "CREATING", "READY")
  result = sh("tpu_vm.sh", "create", *TPU, "--poll=0", env=env)
  assert result.returncode == 0, result.stderr
  assert [summary(c) for c in calls(bin_dir)] == ["vm create"] + ["vm describe"] * 3
  assert calls(bin_dir)[0] == ["compute", "tpus", "tpu-vm", "create", "hfc-v4",
                               "--zone=us-central2-b", "--project=my-proj",
                               "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]


def test_tpu_run_passes_overrides_intact(bin_dir, env):
  result = sh("tpu_vm.sh", "run", *TPU, *RUN, "--", "--config.seed=3", env=env)
  assert result.returncode == 0, result.stderr
  [args] = calls(bin_dir)
  assert args[:8] == ["compute", "tpus", "tpu-vm", "ssh", "hfc-v4", "--zone=us-central2-b",
                      "--project=my-proj", "--worker=all"]
  worker_argv = shlex.split(args[-1])
  assert worker_argv[worker_argv.index("--jax_distributed"):worker_argv.index(">>")] == [
      "--jax_distributed", "--config=configs/cifar10_resnet18.py",
      "--workdir=gs://my-bucket/runs/hfc-v4", "--config.data.data_dir=gs://my-bucket/tfds",
      "--config.eval.radii=(4,8)", "--config.seed=3"]


WATCH_RECOVERY = ["delete", "describe", "create", "describe"]


@pytest.mark.parametrize("spot", [False, True], ids=["preempted_vm", "suspended_spot"])
def test_tpu_watch_recreates_a_preempted_tpu(spot, bin_dir, env):
  """Preempted once: delete, create, set up and start the same run; ends when it ends."""
  if spot:
    queue(bin_dir, "qr_states", "ACTIVE", "SUSPENDED", "NOT_FOUND", "ACTIVE")
    poll = ["qr describe", "vm describe"]
    recovery = ["qr delete", "qr describe", "qr create", "qr describe", "vm describe"]
  else:
    queue(bin_dir, "vm_states", "READY", "PREEMPTED", "NOT_FOUND", "READY")
    poll = ["vm describe"]
    recovery = ["vm delete", "vm describe", "vm create", "vm describe"]
  queue(bin_dir, "probes", "running", "0")
  result = sh("tpu_vm.sh", "watch", *TPU, *RUN, "--poll=0", *(["--spot"] if spot else []), env=env)
  assert result.returncode == 0, result.stderr
  assert [summary(c) for c in calls(bin_dir)] == [
      *poll, "ssh probe",                  # READY, the run is going
      poll[0], *recovery,                  # preempted: re-created
      "scp", "ssh setup", "ssh run",       # set up, the same run started again
      *poll, "ssh probe"]                  # it finished: watch ends
  assert "re-creating it (restart 1 of 10)" in result.stderr
  assert "the run finished" in result.stderr
  runs = [c for c in calls(bin_dir) if summary(c) == "ssh run"]
  assert "--workdir=gs://my-bucket/runs/hfc-v4" in shlex.split(runs[0][-1])


def test_tpu_watch_starts_a_new_tpu_and_gives_up(bin_dir, env):
  queue(bin_dir, "vm_states", "NOT_FOUND", "PREEMPTED")
  result = sh("tpu_vm.sh", "watch", *TPU, *RUN, "--poll=0", "--max-restarts=1", env=env)
  assert result.returncode == 1
  assert [summary(c) for c in calls(bin_dir)] == [
      "vm describe", "vm create", "vm describe",   # missing: created, but it never got READY
      "vm describe"]                               # preempted again: no restarts left
  assert "gave up after 1 restarts (--max-restarts)" in result.stderr


def test_tpu_watch_ends_with_the_run_failure(bin_dir, env):
  queue(bin_dir, "probes", "new", "running", "2")
  result = sh("tpu_vm.sh", "watch", *TPU, *RUN, "--poll=0", env=env)
  assert result.returncode == 1
  assert [summary(c) for c in calls(bin_dir)] == [
      "vm describe", "ssh probe", "scp", "ssh setup", "ssh run",
      "vm describe", "ssh probe", "vm describe", "ssh probe"]
  assert "the run ended with exit status 2" in result.stderr


def test_tpu_status_delete_fetch(tmp_path, bin_dir, env):
  queue(bin_dir, "probes", "143")
  status = sh("tpu_vm.sh", "status", *TPU, env=env)
  assert status.stdout == "hfc-v4: READY; run on worker 0: 143\n"
  queue(bin_dir, "qr_states", "SUSPENDING", "NOT_FOUND")
  assert sh("tpu_vm.sh", "delete", *TPU, "--spot", "--poll=0", env=env).returncode == 0
  fetched = sh("tpu_vm.sh", "fetch", "--workdir", "gs://b/runs/x/", "--dest",
               str(tmp_path / "copy"), env=env)
  assert fetched.returncode == 0 and (tmp_path / "copy").is_dir()
  assert [summary(c) for c in calls(bin_dir)] == [
      "vm describe", "ssh probe", "qr delete", "qr describe", "qr describe", "storage rsync"]
  assert calls(bin_dir)[-1] == ["storage", "rsync", "--recursive", "gs://b/runs/x",
                                str(tmp_path / "copy")]


def test_tpu_worker_commands_run_probe_stop(tmp_path, env):
  """The commands that run, status and stop send over ssh, run here with HOME in tmp_path:
  the run detaches, the probe follows it, and stop ends it with 143 and no restart."""
  home = tmp_path / "home"
  (home / "hfc_venv" / "bin").mkdir(parents=True)
  (home / "hfc_jax").symlink_to(ROOT)
  write_script(home / "hfc_venv" / "bin" / "python", SLEEPER)

  def remote(command, *flags):
    printed = sh("tpu_vm.sh", command, *TPU, *RUN, *flags, "--dry-run", env=env).stdout
    gcloud_argv = shlex.split(printed.splitlines()[-1])
    return subprocess.run(["bash", "-c", gcloud_argv[-1]], capture_output=True, text=True,
                          env={**env, "HOME": str(home)}, timeout=20)

  def probe():
    return remote("status").stdout.strip()

  assert probe() == "new"
  (home / "hfc_run").mkdir()
  (home / "hfc_run" / "setup_done").touch()
  assert probe() == "idle"
  assert remote("run").returncode == 0
  wait_for_starts(home / "hfc_venv" / "bin" / "starts", 1)
  assert probe() == "running"
  again = remote("run")
  assert again.returncode == 1 and "a run is going on" in again.stderr
  assert "stopping the run" in remote("stop").stdout
  deadline = time.time() + 20
  while not (home / "hfc_run" / "status").exists() and time.time() < deadline:
    time.sleep(0.05)
  assert (home / "hfc_run" / "status").read_text() == "143\n"
  assert probe() == "stopped"
  assert len((home / "hfc_venv" / "bin" / "starts").read_text().split()) == 1
  log = (home / "hfc_run" / "run.log").read_text()
  assert "--config.eval.radii=(4,8)" in log and "this loop got SIGTERM too" in log
