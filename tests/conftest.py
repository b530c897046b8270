"""Test set-up: simulate 8 CPU devices so every sharding path runs in CI."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A default.py run small enough for a subprocess test: 8 steps per epoch.
TINY_FLAGS = ("--config.data.num_train=512", "--config.data.num_test=256",
              "--config.train.epochs=2", "--config.train.batch_size=64",
              "--config.train.log_every_steps=4", "--config.eval.batch_size=128",
              "--config.eval.train_subset=256")


def main_command(workdir, *extra, config="configs/default.py", tiny=True) -> list[str]:
  """The `python -m hfc_jax.main` command line of a test run."""
  return [sys.executable, "-m", "hfc_jax.main", f"--config={os.path.join(ROOT, config)}",
          f"--workdir={workdir}", *(TINY_FLAGS if tiny else ()), *extra]


def run_main(workdir, *extra, timeout=300, env=None, cwd=ROOT, **kwargs):
  """Runs main to its end; returns the CompletedProcess (text stdout/stderr)."""
  return subprocess.run(main_command(workdir, *extra, **kwargs), cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ) if env is None else env)
