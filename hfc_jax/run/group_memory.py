"""How many runs of a group fit on a device: the compiled group step's memory against
the device's, checked before the first step so that a group too large is one line
(naming sweep.group_size and how many runs fit) instead of an out-of-memory abort, and
`sweep.group_size='auto'` can train the runs in consecutive groups that fit."""

import os

import jax

from hfc_jax import errors

# Of a device's memory, the share a group's step may take; the rest is left to the
# evaluation, the prefetched batches and the runtime's own buffers.
MEMORY_SHARE = 0.9


class GroupTooLarge(errors.HfcError):
  """A group whose step needs more memory than a device has; `fit` runs would fit."""

  def __init__(self, message: str, fit: int):
    super().__init__(message)
    self.fit = fit


def device_memory_bytes(device: jax.Device) -> int:
  """Bytes one device can hold: an accelerator's allocator limit (`memory_stats()`'s
  'bytes_limit'), or on the CPU the host's physical memory, shared by its devices."""
  try:
    stats = device.memory_stats() or {}
  except (AttributeError, NotImplementedError, RuntimeError):
    stats = {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return host // max(1, len(jax.local_devices(backend=device.platform)))


def runs_that_fit(step_bytes: int, runs_per_device: int, device_bytes: int,
                  run_devices: int) -> int:
  """The most runs a group may have: each device holds its runs' share of the step,
  `step_bytes / runs_per_device` per run (the compiled step's bytes per device, for
  `runs_per_device` runs), within MEMORY_SHARE of `device_bytes`; times the
  `run_devices` devices along `runs`. 0 where not even one run per device fits."""
  per_run = step_bytes / max(1, runs_per_device)
  return int(MEMORY_SHARE * device_bytes // per_run) * run_devices


def check_memory(step_bytes: int, runs: int, run_devices: int, device_bytes: int) -> None:
  """Raises GroupTooLarge (one line naming sweep.group_size) when a group of `runs`
  runs, its step taking `step_bytes` on each device, needs more than MEMORY_SHARE of
  the device's `device_bytes`."""
  if step_bytes <= MEMORY_SHARE * device_bytes:
    return
  fit = runs_that_fit(step_bytes, runs // run_devices, device_bytes, run_devices)
  gib = lambda b: f"{b / 2 ** 30:.2f} GiB"
  advice = (f"at most {fit} runs fit: set sweep.group_size={fit} or 'auto'" if fit
            else "not even one run per device fits: set sweep.group_size=1")
  raise GroupTooLarge(
      f"sweep.group_size: a group of {runs} runs needs {gib(step_bytes)} on each device "
      f"for its train step, more than {MEMORY_SHARE:.0%} of the device's "
      f"{gib(device_bytes)}; {advice}.", fit)
