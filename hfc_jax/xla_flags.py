"""XLA flags the project sets by default on the CPU backend, before JAX starts.

jaxlib 0.10 hands every XLA:CPU convolution to YNNPACK (`__ynn_fusion`). For the
kernel gradient of a convolution that path is up to 4x slower than XLA's own convolution
thunk on the 2-core AVX-512 machine of docs/performance.md, and forward convolutions are
up to 2x slower at 32x32x64. With
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` convolutions take
XLA's own convolution thunk (dots, reductions and elementwise work are unchanged), and
on one CPU device the train step at batch 128 goes from 31 to 52 images/s for
ResNet-18, from 2.1k to 3.0k for small_cnn and from 178 to 272 for preact_resnet32. On 8
simulated CPU devices (the tests, the bench's default) the small models lose 10-17%
instead, so the flag is not added there. See "ResNet-18 on XLA:CPU: where the time goes"
in docs/performance.md.

Rules: a flag is added only when the backend will be the CPU with one device (JAX's
default; not when XLA_FLAGS or JAX_NUM_CPU_DEVICES asks for more), only when XLA_FLAGS
does not name that flag already (a user's setting always wins; e.g.
`--xla_cpu_experimental_ynn_fusion_type=+individual_convolution` restores YNNPACK
convolutions), and only for jaxlib versions whose XLA is known to accept it: XLA aborts
the process on an unknown flag, and the flag is experimental. XLA reads XLA_FLAGS when
JAX creates its first backend, so call `set_cpu_defaults` before any JAX computation.
"""

import importlib.metadata
import importlib.util
import os
from collections.abc import MutableMapping

# flag -> value. Measured on jaxlib 0.10.2 and 0.12.0.1 (Python 3.12/3.13 get 0.12: the
# flag is still accepted there and still helps, ResNet-18 CPU step 6.6 -> 12.5 img/s).
CPU_DEFAULTS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
# jaxlib major.minor versions that accept CPU_DEFAULTS. To add one: start JAX on it with
# XLA_FLAGS set to the flag (an unknown flag aborts the process), and time
# `python -m hfc_jax.bench --sections=train --models=resnet18` with and without it.
TESTED_JAXLIB = ("0.10", "0.12")
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin",
                       "libtpu")


def backend_will_be_cpu(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Guesses, without importing JAX, whether its default backend will be the CPU:
  JAX_PLATFORMS starts with 'cpu', or it is unset and no accelerator plugin is installed."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(p) for p in ACCELERATOR_PLUGINS)


def cpu_device_count(environ: MutableMapping[str, str] = os.environ) -> int:
  """The number of CPU devices JAX will make: XLA_FLAGS' --xla_force_host_platform_device_count,
  else JAX_NUM_CPU_DEVICES, else 1."""
  for token in environ.get("XLA_FLAGS", "").split():
    name, _, value = token.partition("=")
    if name == DEVICE_COUNT_FLAG and value.strip().isdigit():
      return int(value)
  value = environ.get("JAX_NUM_CPU_DEVICES", "").strip()
  return int(value) if value.isdigit() and int(value) > 0 else 1


def jaxlib_minor() -> str | None:
  """The installed jaxlib's 'major.minor' (e.g. '0.10'), or None when it is not installed."""
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None
  return ".".join(version.split(".")[:2])


def with_defaults(xla_flags: str, defaults: dict[str, str] = CPU_DEFAULTS) -> str:
  """`xla_flags` plus each `--flag=value` of `defaults` whose flag it does not name.

  A flag counts as named when it appears as `--flag=...` or as a bare `--flag`.
  """
  named = {token.split("=", 1)[0] for token in xla_flags.split()}
  extra = [f"{flag}={value}" for flag, value in defaults.items() if flag not in named]
  return " ".join([xla_flags.strip(), *extra]).strip()


def set_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> str:
  """Adds CPU_DEFAULTS to environ['XLA_FLAGS'] when the backend will be the CPU with one
  device and the installed jaxlib is in TESTED_JAXLIB; returns XLA_FLAGS as it now is
  ('' if unset)."""
  flags_now = environ.get("XLA_FLAGS", "")
  if (backend_will_be_cpu(environ) and cpu_device_count(environ) == 1
      and jaxlib_minor() in TESTED_JAXLIB):
    new = with_defaults(flags_now)
    if new != flags_now:
      environ["XLA_FLAGS"] = new
    return new
  return flags_now
