"""Step checkpoints, exact mid-epoch resume, and preemption (SIGTERM) stops.

Every interrupted run here is a real `python -m hfc_jax.main` process on 8 simulated
CPU devices: killed with SIGKILL or SIGTERM at a step read from its own log, then
restarted with the same command. Resumed runs must end bit for bit where an
uninterrupted run ends (the reference: `main.run` in this process, on the same 8 devices
and the config the same flags give).
"""

import json
import os
import re
import signal
import subprocess

import jax
import numpy as np
import pytest

from hfc_jax import main
from hfc_jax.analysis import common
from hfc_jax.run import preemption
from hfc_jax.workdir.layout import Workdir
from tests.conftest import ROOT, config_from_flags, main_command, run_main, xla_flags_env

pytestmark = pytest.mark.slow

EVERY = 3      # checkpoint.every_steps of these runs
# 3 epochs of 8 steps, a progress line per step, a step checkpoint every 3 steps. Each
# epoch ends with the clean evaluation alone, on 128 test and 128 training images: the
# state is compared bit for bit, and a process's cost is its start, not its steps.
FLAGS = ("--config.train.epochs=3", "--config.train.log_every_steps=1",
         f"--config.checkpoint.every_steps={EVERY}", "--config.checkpoint.keep=2",
         "--config.tensorboard=False", "--config.eval.evaluators=('clean',)",
         "--config.data.num_test=128", "--config.eval.train_subset=128")
TIMING = ("train_time_s", "epoch_time_s")
STEP_LINE = re.compile(r"\] step (\d+)/(\d+) ")


def _records(workdir) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _state_leaves(workdir):
  trained = common.restore(str(workdir))
  return trained.step, [np.asarray(x) for x in jax.tree.leaves(
      (trained.params, trained.model_state))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run, in this process: its records (without timings), final step
  and state."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  main.run(config_from_flags(*FLAGS), str(workdir))
  return _records(workdir), *_state_leaves(workdir)


def _run_until(workdir, min_step: int, sig: int, *extra, env=None):
  """Starts a run, sends `sig` once its log shows step >= min_step; returns
  (the last step seen in the log, exit status, full stderr)."""
  proc = subprocess.Popen(main_command(workdir, *FLAGS, *extra), cwd=ROOT,
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                          env=env)
  seen, lines = 0, []
  for line in proc.stderr:
    lines.append(line)
    match = STEP_LINE.search(line)
    if match:
      seen = int(match.group(1))
      if seen >= min_step:
        proc.send_signal(sig)
        break
  lines.extend(proc.stderr)
  return seen, proc.wait(timeout=120), "".join(lines)


def _resumed_step(stderr: str) -> int:
  match = re.search(r"resumed at step (\d+)", stderr)
  assert match, stderr[-2000:]
  return int(match.group(1))


def test_sigterm_then_sigkill_at_three_random_steps_resume_bit_for_bit(tmp_path, reference):
  """One workdir, five processes: a SIGTERM (a preemption) saves the current step and
  exits 143; three SIGKILLs at random later steps, each to a process that resumed the
  one before, lose at most `EVERY` steps; the last process runs to the end, where the
  uninterrupted run ends, bit for bit."""
  workdir = tmp_path / "stopped"
  seen, status, stderr = _run_until(workdir, 5, signal.SIGTERM)
  assert status == preemption.EXIT_PREEMPTED == 143, stderr[-3000:]
  message = [l for l in stderr.splitlines() if l.startswith("hfc_jax:")]
  assert len(message) == 1 and "stopped by SIGTERM (preemption) at step" in message[0]
  stopped = int(re.search(r"at step (\d+)", message[0]).group(1))
  assert stopped >= seen and stopped < 24
  assert str(stopped) in os.listdir(workdir / "checkpoints")
  assert "Traceback" not in stderr

  targets = sorted(np.random.default_rng(7).choice(np.arange(2, 23), 3, replace=False))
  assert targets[0] > stopped   # 14, 16 and 19
  resumed = [stopped]   # the step each later process starts at
  for target in targets:
    seen, status, stderr = _run_until(workdir, int(target), signal.SIGKILL)
    assert status == -signal.SIGKILL and seen >= target
    assert _resumed_step(stderr) == resumed[-1]
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    latest = steps[-1]
    # The latest checkpoint is at most every_steps behind the step the log showed.
    assert latest >= resumed[-1] and seen - latest <= EVERY, (seen, steps)
    resumed.append(latest)
    # metrics.jsonl only lists epochs whose checkpoint was written.
    if (workdir / "metrics.jsonl").exists():
      assert len(_records(workdir)) <= latest // 8
  result = run_main(workdir, *FLAGS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _resumed_step(result.stderr) == resumed[-1]
  records, step, leaves = reference
  assert _records(workdir) == records
  got_step, got_leaves = _state_leaves(workdir)
  assert got_step == step == 24
  for got, want in zip(got_leaves, leaves):
    np.testing.assert_array_equal(got, want)
  # Every start is on record, with the step it began at and the code that ran.
  starts = Workdir.of(workdir).read_starts()
  assert [s["step"] for s in starts] == [0, *resumed]
  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=False).stdout.strip() or None
  for start in starts:
    assert start["commit"] == head and start["versions"]["jax"] == jax.__version__
    assert start["command"].startswith("python -m hfc_jax.main --config=")
    assert f"--workdir={workdir}" in start["command"]


def test_two_distributed_processes_stop_at_the_same_step(tmp_path):
  """SIGTERM to one process of two joined by jax.distributed: JAX's preemption sync
  point makes both save the same step and exit 143."""
  env = xla_flags_env(4)
  port = 21000 + os.getpid() % 20000
  workdir = tmp_path / "multi"
  # SGD at 0.05: the train step main_test's two processes compile (one cache entry).
  extra = ("--config.data.num_train=1024", "--config.optim.name=sgd",
           "--config.optim.learning_rate=0.05", "--jax_distributed",
           f"--coordinator_address=localhost:{port}", "--num_processes=2")
  other = subprocess.Popen(main_command(workdir, *FLAGS, *extra, "--process_id=1"),
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  _, status0, stderr0 = _run_until(workdir, 3, signal.SIGTERM, *extra, "--process_id=0",
                                   env=env)
  stderr1 = other.communicate(timeout=180)[1]
  assert (status0, other.returncode) == (143, 143), stderr0[-2000:] + stderr1[-2000:]
  steps = [int(re.search(r"preemption\) at step (\d+)", s).group(1))
           for s in (stderr0, stderr1)]
  assert steps[0] == steps[1] < 48
  assert str(steps[0]) in os.listdir(workdir / "checkpoints")
