"""Data parallelism over a device mesh: the jit-and-shardings replacement for pmap.

One mesh axis, `data`, spans every device of every process. The global batch is
sharded along it (`P('data')`: device k holds rows k*B/n ... (k+1)*B/n), and the
model and optimiser state are replicated (`P()`). A `jax.jit` step written for the
global batch then runs as pmap-style data parallelism: XLA inserts the gradient
all-reduce that `pmap` code spelled as `lax.pmean(grads, 'batch')`.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hfc_jax import errors

DATA_AXIS = "data"
RUNS_AXIS = "runs"   # a run-parallel group's runs (`make_group_mesh`, `hfc_jax.stacked`)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D `data` mesh over the first `num_devices` devices (default: all, all hosts)."""
  devices = jax.devices()[:mesh_size(num_devices)]
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimiser state, step)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split over the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def mesh_size(num_devices: int | None) -> int:
  """The devices `make_mesh(num_devices)` spans: all of them for None; HfcError naming
  `num_devices` unless it is an integer in [1, the devices JAX sees]."""
  n = jax.device_count()
  if num_devices is None:
    return n
  return int(errors.check_range("num_devices", num_devices, 1, n, integer=True))


def check_batch_size(field: str, batch_size: int, devices: int) -> int:
  """Raises HfcError unless a global TRAINING batch divides evenly over `devices` and
  the processes (evaluation batches are padded instead: `padded_batch_size`)."""
  batch_size = errors.check_range(field, batch_size, 1, None, integer=True)
  if batch_size % devices or batch_size % jax.process_count():
    raise errors.HfcError(
        f"{field}={batch_size} must be a positive multiple of the number of devices "
        f"({devices}); a training batch is split evenly over them.")
  return batch_size


def check_config(config) -> None:
  """One-line HfcErrors for `num_devices` and for a `train.batch_size` that the mesh of
  that many devices cannot split evenly (JAX is started by now)."""
  check_batch_size("train.batch_size", config.train.batch_size,
                   mesh_size(config.num_devices))


def padded_batch_size(field: str, batch_size: int, mesh: Mesh) -> int:
  """The physical size of an evaluation batch of `batch_size` real images on `mesh`.

  Evaluation batch sizes count real images, whatever the device count: each batch is
  laid out in ceil(B / m) * m rows, m = lcm(devices, processes), the rows past the
  real ones being masked padding. Raises HfcError naming `field` unless B is an
  integer >= 1.
  """
  batch_size = int(errors.check_range(field, batch_size, 1, None, integer=True))
  m = math.lcm(mesh.devices.size, jax.process_count())
  return math.ceil(batch_size / m) * m


def put_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Assembles per-process host arrays into global arrays sharded along the batch.

  Each process passes its own contiguous slice of the global batch (shape
  (B / process_count, ...)); on one host this is the whole batch.
  """
  sharding = batch_sharding(mesh)
  out = []
  for a in arrays:
    global_shape = (a.shape[0] * jax.process_count(),) + a.shape[1:]
    out.append(jax.make_array_from_process_local_data(sharding, a, global_shape))
  return tuple(out)


def put_replicated(tree, mesh: Mesh):
  """Places a pytree of host or device arrays on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def one_at_a_time_on_cpu(tree):
  """Waits for `tree`'s arrays when they span several CPU devices; returns `tree`.

  Call it on the outputs of each of a series of independent jitted programs (batches
  summed one by one, a heat map's frequency chunks) before dispatching the next. XLA:CPU
  may run two such programs at once, and when they hold collectives (an all-reduce of
  the batch statistics, a replicated sum) the simulated devices' threads can meet in
  different programs' rendezvous and wait for each other: after 40 s XLA aborts the
  process. Seen on 8 simulated devices with other work on the cores (a Fourier heat map
  aborted 4 times in 4 under load and passed alone). A GPU or TPU runs each device's
  programs in order, so there it returns at once and dispatch stays asynchronous.
  """
  devices = {d for leaf in jax.tree.leaves(tree) if isinstance(leaf, jax.Array)
             for d in leaf.sharding.device_set}
  if len(devices) > 1 and all(d.platform == "cpu" for d in devices):
    jax.block_until_ready(tree)
  return tree


# ---------------------------------------------------------------------------
# Run-parallel groups: a 2-D (runs, data) mesh
# ---------------------------------------------------------------------------
def make_group_mesh(run_devices: int, num_devices: int | None = None) -> Mesh:
  """A (runs, data) mesh over the first `num_devices` devices (default: all):
  `run_devices` along `runs`, the rest along `data`. A group's stacked state is split
  over `runs` (each device holds R / run_devices whole runs) and each run's batch over
  `data`, so run_devices=1 is the 1-D data mesh with every run on every device."""
  devices = jax.devices()[:mesh_size(num_devices)]
  if run_devices < 1 or len(devices) % run_devices:
    raise errors.HfcError(f"sweep.run_devices={run_devices} must divide the {len(devices)} "
                          "devices of the mesh.")
  return jax.make_mesh((run_devices, len(devices) // run_devices), (RUNS_AXIS, DATA_AXIS),
                       devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def runs_sharding(mesh: Mesh) -> NamedSharding:
  """A stacked (R, ...) array split along its run axis, replicated over `data`."""
  return NamedSharding(mesh, P(RUNS_AXIS))


def group_batch_sharding(mesh: Mesh) -> NamedSharding:
  """A stacked (R, B, ...) batch: runs over `runs`, each run's batch over `data`."""
  return NamedSharding(mesh, P(RUNS_AXIS, DATA_AXIS))


def put_group_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Stacked per-process host batches (R, B / process_count, ...) as global (R, B, ...)
  arrays in `group_batch_sharding` (each process passes its rows of every run's batch)."""
  sharding = group_batch_sharding(mesh)
  return tuple(jax.make_array_from_process_local_data(
      sharding, a, (a.shape[0], a.shape[1] * jax.process_count()) + a.shape[2:])
               for a in arrays)
