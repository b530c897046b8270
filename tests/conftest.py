"""Test set-up: simulate 8 CPU devices so every sharding path runs in CI."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One pytest-xdist worker per core (`-n auto` on up to 4 cores): each worker, and every
# process it starts, runs on its own core. XLA:CPU sizes its thread pool to the cores a
# process may use, and two workers whose pools span both cores spend more CPU on the
# same tests in threads that wait and switch rather than compute: on 2 cores the full
# suite took 9:02-9:06 and 1,069-1,071 CPU-s pinned, 9:32-9:39 and 1,116-1,122 not.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
_cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
if _worker.startswith("gw") and len(_cores) == int(
    os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
  try:
    os.sched_setaffinity(0, {_cores[int(_worker[2:]) % len(_cores)]})
  except OSError:   # a sandbox that refuses it: the workers share the cores
    pass

import ast  # noqa: E402
import atexit  # noqa: E402
import contextlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache for the session, shared with every subprocess the tests
# start (they inherit the environment): the many runs of the same small programs (a tiny
# default run, restarted after SIGKILL, ...) compile each once. A fresh directory per session
# keeps the measured suite time honest; set JAX_COMPILATION_CACHE_DIR to keep one between
# sessions. Executables are keyed by their HLO, options and JAX version, so no result changes.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="hfc_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
# Programs that compile in under 0.1 s (most of them: single ops, small helpers) are not
# worth an entry; the rest hold over 80% of the compile time (measured on train_test and
# attacks_test: 85 of 330 programs). Few entries matter because of the lock below.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# A size limit turns on JAX's file lock around every read and write of the cache: pytest-xdist
# workers and their subprocesses compile the same programs at once, and without the lock
# one can read an entry another is still writing (a worker aborted so, once in four runs).
# With the limit JAX also scans every entry on each write (to evict), which cost 56 ms of
# CPU per write at 1,000 entries and grows with them: the threshold above keeps it small.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2 ** 30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# Tests marked `compile_bound` (most of their time is XLA compiling programs they run a few
# times) compile with JAX's `jax_disable_most_optimizations`, as the flax examples' tests do;
# the others compile as users' runs do (`unoptimised_compiles` below; what it saves, and why
# not every test, is measured in docs/performance.md, "The test suite"). Set
# JAX_DISABLE_MOST_OPTIMIZATIONS (0 or 1) before the session to compile every test that way.
COMPILE_MODE_FIXED = "JAX_DISABLE_MOST_OPTIMIZATIONS" in os.environ

import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hfc_jax import defaults  # noqa: E402  (no JAX import)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A default.py run small enough for a subprocess test: 8 steps per epoch, and each epoch
# scores the clean images and their LFC and HFC at 2 radii (the default's 4 cost a second
# more per 2-epoch run, on the same code path).
TINY_RADII = (4, 8)
TINY_FLAGS = ("--config.data.num_train=512", "--config.data.num_test=256",
              "--config.train.epochs=2", "--config.train.batch_size=64",
              "--config.train.log_every_steps=4", "--config.eval.batch_size=128",
              "--config.eval.train_subset=128",
              f"--config.eval.radii=({','.join(map(str, TINY_RADII))})")


def main_command(workdir, *extra, config="configs/default.py", tiny=True) -> list[str]:
  """The `python -m hfc_jax.main` command line of a test run."""
  return [sys.executable, "-m", "hfc_jax.main", f"--config={os.path.join(ROOT, config)}",
          f"--workdir={workdir}", *(TINY_FLAGS if tiny else ()), *extra]


def xla_flags_env(devices: int) -> dict:
  """os.environ with `devices` simulated CPU devices and the session's other XLA flags."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
      [*flags, f"--xla_force_host_platform_device_count={devices}"]))


def run_main(workdir, *extra, timeout=300, env=None, cwd=ROOT, **kwargs):
  """Runs main to its end; returns the CompletedProcess (text stdout/stderr)."""
  return subprocess.run(main_command(workdir, *extra, **kwargs), cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ) if env is None else env)


def tiny_config(**overrides):
  """The defaults with TINY_FLAGS applied and no TensorBoard: 8 steps per epoch;
  `overrides` maps dotted fields to values, {"train.epochs": 1}. The ConfigDict of
  `defaults.get_config()` itself, so its field types hold (`config_from_flags` gives
  the same values)."""
  config = defaults.get_config()
  for key, value in (*_config_flags(TINY_FLAGS), ("tensorboard", False),
                     *overrides.items()):
    _set_dotted(config, key, value)
  return config


def _config_flags(flags):
  """Yields (dotted field, value) of each `--config.X=V` flag: V read as a Python
  literal, else as a string, as main's flags read it."""
  for flag in flags:
    key, _, text = flag.removeprefix("--config.").partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    yield key, value


def _set_dotted(tree, key: str, value) -> None:
  """tree[a][b] = value for key "a.b" (a ConfigDict or a nested dict)."""
  *path, last = key.split(".")
  for part in path:
    tree = tree[part]
  tree[last] = value


def assert_refused(workdir, message: str, *flags, **run_kwargs) -> None:
  """Runs main on `workdir` with `flags`: exit status 2, one "hfc_jax: error:" line that
  contains `message`, and nothing in the workdir added or removed."""
  before = sorted(os.listdir(workdir))
  result = run_main(workdir, *flags, **run_kwargs)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("hfc_jax: error:")]
  assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
  assert sorted(os.listdir(workdir)) == before


def config_from_flags(*flags, config="configs/default.py", tiny=True):
  """The config `main_command(workdir, *flags, config=config, tiny=tiny)` would run:
  the config file's `get_config()` with TINY_FLAGS (when `tiny`) and `--config.X=V`
  `flags` applied (V read as a Python literal, else as a string)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hfc_jax import main  # pylint: disable=g-import-not-at-top
  tree = main.load_config_source("test_config", os.path.join(ROOT, config)).get_config()
  tree = tree.to_dict()
  for key, value in _config_flags((*(TINY_FLAGS if tiny else ()), *flags)):
    _set_dotted(tree, key, value)
  return ml_collections.ConfigDict(tree)


def assert_refused_in_process(workdir, message: str, *flags, **config_kwargs) -> None:
  """`assert_refused` without a second process: `main.run` on the config of
  `config_from_flags(*flags, **config_kwargs)` raises one HfcError line containing
  `message` (main prints it after "hfc_jax: error: " and exits 2: `main_test` runs that
  once), and nothing in the workdir is added or removed."""
  from hfc_jax import errors, main  # pylint: disable=g-import-not-at-top
  before = sorted(os.listdir(workdir))
  with pytest.raises(errors.HfcError) as raised:
    main.run(config_from_flags(*flags, **config_kwargs), str(workdir))
  text = str(raised.value)
  assert message in text and "\n" not in text, text
  assert sorted(os.listdir(workdir)) == before


@contextlib.contextmanager
def unoptimised_compiles():
  """JAX's `jax_disable_most_optimizations` on for what this process and the processes it
  starts compile meanwhile (XLA backend optimisation level 0), then off again.

  JAX's in-memory program caches are not keyed by this option, and the two ways round
  some floats differently in the last bit (e.g. initial weights, attack steps), so a
  program compiled one way and reused the other would break the tests that compare two
  programs bit for bit: the caches are emptied at both ends (`jax.clear_caches`; the
  persistent cache is keyed by the option and keeps both)."""
  import jax  # pylint: disable=g-import-not-at-top
  if COMPILE_MODE_FIXED:
    yield
    return
  jax.clear_caches()
  jax.config.update("jax_disable_most_optimizations", True)
  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  try:
    yield
  finally:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    os.environ.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)


def _marks_whole_module(module: pytest.Module) -> bool:
  """Whether `module`'s `pytestmark` includes `compile_bound`."""
  return any(mark.name == "compile_bound" for mark in module.own_markers)


@pytest.fixture(autouse=True, scope="module")
def _compile_bound_module(request):
  """A module marked `compile_bound` as a whole (`pytestmark`) compiles unoptimised from
  its first module fixture on (autouse fixtures start first in their scope)."""
  if _marks_whole_module(request.node):
    with unoptimised_compiles():
      yield
  else:
    yield


@pytest.fixture(autouse=True)
def _compile_bound_test(request):
  """A test marked `compile_bound`, in a module not marked as a whole, compiles
  unoptimised."""
  if (request.node.get_closest_marker("compile_bound")
      and not _marks_whole_module(request.node.getparent(pytest.Module))):
    with unoptimised_compiles():
      yield
  else:
    yield


@pytest.fixture(scope="session")
def tiny_trained_workdir(tmp_path_factory) -> str:
  """A workdir trained once per session: `tiny_config` for 1 epoch (8 steps) on 8
  simulated devices. The studies that restore it write only their own
  `<workdir>/<mode>/`, so test modules share it."""
  from hfc_jax import sharding, train  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tiny_trained") / "run")
  train.train_and_evaluate(tiny_config(**{"train.epochs": 1}), path,
                           mesh=sharding.make_mesh(8))
  return path


def random_batch(n=32, seed=0):
  """n random uint8 32x32x3 images and int32 labels in [0, 10), from `seed`."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=(n,)).astype(np.int32)
  return images, labels


def numpy_weights(make_model, seed=0):
  """The nnx model `make_model()` makes, its weights drawn by NumPy from `seed`:
  He-normal kernels, zero biases and means, unit scales and variances. `models.create`
  draws them with jax.random, which compiles programs of its own (about 0.9 CPU-s for
  small_cnn in a new process); for tests whose property holds for any weights."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(nnx.eval_shape(make_model))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    if name == "kernel":
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    else:
      value = np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0)
    return jax.numpy.asarray(value, leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


class LogCollector(logging.Handler):
  """Keeps the messages of every log record it sees (e.g. JAX's compile log)."""

  def __init__(self):
    super().__init__(level=logging.DEBUG)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def numpy_split(images, radius, inclusive=False):
  """The paper's LFC/HFC split (section 2, eq. 1-2), written out as the original code
  does it, channel by channel in float64: the reference the JAX split is tested against."""
  n, h, w, c = images.shape
  mask = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      d = np.sqrt((i - h // 2) ** 2 + (j - w // 2) ** 2)
      mask[i, j] = 1.0 if (d <= radius if inclusive else d < radius) else 0.0
  lfc = np.zeros_like(images, dtype=np.float64)
  hfc = np.zeros_like(images, dtype=np.float64)
  for k in range(n):
    for ch in range(c):
      f = np.fft.fftshift(np.fft.fft2(images[k, :, :, ch]))
      lfc[k, :, :, ch] = np.real(np.fft.ifft2(np.fft.ifftshift(f * mask)))
      hfc[k, :, :, ch] = np.real(np.fft.ifft2(np.fft.ifftshift(f * (1 - mask))))
  return lfc, hfc


def pytest_collection_modifyitems(config, items):
  """Tests marked `torch` compare with PyTorch: without it installed (the torch extra)
  they are skipped with a reason that says how to run them; `.ci/run` installs it."""
  del config
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("torch") is not None:
    return
  skip = pytest.mark.skip(reason='needs PyTorch: pip install -e ".[test,torch]"')
  for item in items:
    if "torch" in item.keywords:
      item.add_marker(skip)


def pytest_collection_finish(session):
  """Python's garbage collector, tuned for a test process: JAX tracing allocates many
  short-lived objects, and at the default thresholds (700, 10, 10) the collector ran
  about 2,200 times in 70 CPU-s of tests (2.4 s). Collections start after 20,000 net
  allocations instead, and what the imports and collection made is frozen out of every
  later collection (`gc.freeze`): 53 collections, 0.6 s, and about 2.5% less CPU for
  those tests (analysis_test and train_test on one core). Objects are still freed when
  their last reference goes; only cycles wait longer."""
  del session
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()
  gc.freeze()
  gc.set_threshold(20_000, 20, 100)
