r"""Times every hot path of hfc_jax in one command; see docs/performance.md.

  python -m hfc_jax.bench                       # everything, a few minutes on a CPU
  python -m hfc_jax.bench --sections=train,pgd --models=resnet18 --json=/tmp/bench.json
  python -m hfc_jax.bench --tiny                # a smoke run of every section, under a minute

Sections (`--sections`, default all): train (the jitted train step of each model, its
FLOP rate against a measured matmul peak, and PyTorch's ResNet-18 when torch imports),
pgd (PGD-7/10 adversarial steps against the plain step), eval (clean + 8 LFC/HFC
variants against clean only), split (jitted split_many against NumPy), input (the host
pipeline against the small_cnn step), scaling (1, 2, 4, 8 devices), checkpoint (Orbax
save/restore of a ResNet-18 + Adam state), heatmap (the Fourier heat map's perturbed
images/s against plain evaluation) and autoattack (an APGD iteration against a PGD step,
a Square query against a forward pass, the whole AutoAttack on `--autoattack_images`
test images), groups (run-parallel groups of 1, 2, 4, 8 small_cnn runs in one vmapped
step against the same runs one after another, runs x images/s). The pgd, eval and
heatmap sections use small_cnn
unless `--models` is given. Output: a fixed-width table on stdout and, with `--json`,
every number in a nested dict {'meta': ..., '<section>': ...}. The sections live in
the `hfc_jax.benchmarks` package; this module is the driver (flags, table, JSON), and
`hfc_jax/bench.py` only hands `python -m hfc_jax.bench` over to it.

On a CPU the bench sets XLA_FLAGS=--xla_force_host_platform_device_count=8 (unless that
flag is already in XLA_FLAGS) before JAX starts, so the mesh and scaling paths run on 8
simulated devices; they share the machine's cores, so the scaling section measures
overhead, not speed-up. Set JAX_PLATFORMS or XLA_FLAGS yourself to change this.
"""

import os

from hfc_jax import xla_flags


def simulate_cpu_devices(count: int = 8) -> None:
  """Adds `--xla_force_host_platform_device_count=count` to XLA_FLAGS on a CPU backend
  unless it is there already; it must run before JAX initialises its backends."""
  flags_now = os.environ.get("XLA_FLAGS", "")
  if xla_flags.backend_will_be_cpu() and xla_flags.DEVICE_COUNT_FLAG not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} {xla_flags.DEVICE_COUNT_FLAG}={count}".strip()


simulate_cpu_devices()
xla_flags.set_cpu_defaults()   # the project's CPU defaults, on one CPU device only

# pylint: disable=g-import-not-at-top,wrong-import-position  (after XLA_FLAGS is set)
import datetime
import json
import math
import platform
import resource
import sys
import time
from collections.abc import Sequence

import jax
from absl import app, flags, logging

from hfc_jax import errors, library_logs
from hfc_jax.benchmarks import autoattack, frequency_passes, groups, heatmap, host_io
from hfc_jax.benchmarks import train_steps
from hfc_jax.benchmarks.common import RECIPES, Options, Row

SECTIONS = {"train": train_steps.train_section, "pgd": train_steps.pgd_section,
            "eval": frequency_passes.eval_section, "split": frequency_passes.split_section,
            "input": host_io.input_section, "scaling": train_steps.scaling_section,
            "checkpoint": host_io.checkpoint_section, "heatmap": heatmap.heatmap_section,
            "autoattack": autoattack.autoattack_section, "groups": groups.groups_section}
SECTION_NAMES = tuple(SECTIONS)
MODEL_NAMES = tuple(RECIPES)

FLAGS = flags.FLAGS
flags.DEFINE_list("sections", list(SECTION_NAMES), f"Sections to run: {SECTION_NAMES}.")
flags.DEFINE_list("models", list(Options.models),
                  "Models of the train section; given, also of the pgd, eval and heatmap sections.")
flags.DEFINE_integer("batch_size", 0, "Global train batch; 0: each model's training "
                     "config (128 for all three).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model compute dtype.")
flags.DEFINE_integer("steps", None, "Timed calls per repeat (default 5; 2 with --tiny).")
flags.DEFINE_integer("repeats", None, "Timed repeats; median and min/max over them "
                     "(default 3; 2 with --tiny).")
flags.DEFINE_string("json", None, "Write every number to this JSON file.")
flags.DEFINE_bool("tiny", False, "Shrink everything for a smoke run: batch 16, 2 steps, "
                  "PGD and groups on the full mesh only.")
flags.DEFINE_string("tfds_data_dir", None, "Where tfds CIFAR-10 may be prepared (input section).")
flags.DEFINE_integer("autoattack_images", None, "Test images of the whole AutoAttack "
                     "(autoattack section; default 1000, 16 with --tiny).")


def make_options(*, models: Sequence[str] = Options.models,
                 pgd_eval_models: Sequence[str] | None = None, batch_size: int = 0,
                 dtype: str = "float32", steps: int | None = None, repeats: int | None = None,
                 tiny: bool = False, tfds_data_dir: str | None = None,
                 autoattack_images: int | None = None) -> Options:
  """Checks the values (HfcError) and fills in the defaults of `--tiny`."""
  for name in list(models) + list(pgd_eval_models or ()):
    errors.check_choice("--models", name, MODEL_NAMES)
  errors.check_choice("--dtype", dtype, ("float32", "bfloat16"))
  errors.check_range("--batch_size", batch_size, 0, integer=True)
  steps = errors.check_range("--steps", (2 if tiny else 5) if steps is None else steps, 1,
                             integer=True)
  repeats = errors.check_range("--repeats", (2 if tiny else 3) if repeats is None else repeats,
                               1, integer=True)
  autoattack_images = errors.check_range(
      "--autoattack_images", (16 if tiny else 1000) if autoattack_images is None
      else autoattack_images, 1, integer=True)
  return Options(models=tuple(models),
                 pgd_eval_models=tuple(pgd_eval_models or ("small_cnn",)),
                 batch_size=batch_size, dtype=dtype, steps=steps, repeats=repeats,
                 tiny=tiny, tfds_data_dir=tfds_data_dir,
                 autoattack_images=int(autoattack_images))


def _cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor()
  except OSError:
    return platform.processor()


def peak_memory_mb() -> float:
  """Peak resident memory of this process so far (ru_maxrss, KiB on Linux), MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def _load_average() -> str:
  """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def meta(opts: Options) -> dict:
  """The machine, the software and the options of this run."""
  device = jax.devices()[0]
  return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "jax_version": jax.__version__, "backend": jax.default_backend(),
          "device_kind": device.device_kind, "device_count": jax.device_count(),
          "process_count": jax.process_count(), "cpu_count": os.cpu_count(),
          "cpu_model": _cpu_model(), "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average_start": _load_average(),
          "options": {k: list(v) if isinstance(v, tuple) else v
                      for k, v in vars(opts).items()},
          "sizes": opts.sizes._asdict()}


def _fmt(value) -> str:
  """A number in 4 significant figures without exponent for everyday magnitudes."""
  if not isinstance(value, (int, float)):
    return str(value)
  if value == 0 or 1e-3 <= abs(value) < 1e9:
    return f"{value:,.{max(0, 3 - int(math.floor(math.log10(abs(value) or 1))))}f}"
  return f"{value:.3e}"


def format_table(rows: Sequence[Row]) -> str:
  """Fixed-width columns: section, item, median (or value), min-max, unit, target."""
  lines = [("section", "item", "value", "min - max", "unit", "target")]
  for r in rows:
    if isinstance(r.value, dict):
      value, spread = _fmt(r.value["median"]), f"{_fmt(r.value['min'])} - {_fmt(r.value['max'])}"
    else:
      value, spread = _fmt(r.value), ""
    lines.append((r.section, r.item, value, spread, r.unit, r.target))
  widths = [max(len(line[i]) for line in lines) for i in range(6)]
  out = [" ".join(c.ljust(w) if i in (0, 1, 4, 5) else c.rjust(w)
                  for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
  out.insert(1, "-" * len(out[0]))
  return "\n".join(out)


def run(sections: Sequence[str] = SECTION_NAMES, *, json_path: str | None = None,
        print_table: bool = True, **options) -> dict:
  """Runs `sections` and returns {'meta': ..., section: results}; see make_options for
  `options`. Prints the table unless `print_table` is False; writes `json_path` if given."""
  for s in sections:
    errors.check_choice("--sections", s, SECTION_NAMES)
  opts = make_options(**options)
  results, rows, cache, t0 = {"meta": meta(opts)}, [], {}, time.perf_counter()
  for name in sections:
    t1 = time.perf_counter()
    logging.info("bench: section %s ...", name)
    results[name], section_rows = SECTIONS[name](opts, cache)
    results[name]["section_s"] = time.perf_counter() - t1
    results[name]["load_average_after"] = _load_average()
    logging.info("bench: section %s took %.1f s", name, results[name]["section_s"])
    rows += section_rows
  rows.append(Row("meta", "peak host memory (ru_maxrss)", peak_memory_mb(), "MB"))
  results["meta"].update(total_s=time.perf_counter() - t0, peak_host_memory_mb=peak_memory_mb(),
                         load_average_end=_load_average())
  if print_table:
    m = results["meta"]
    print(f"hfc_jax.bench: jax {m['jax_version']}, {m['backend']} ({m['device_kind']}, "
          f"{m['cpu_model']}), {m['device_count']} devices, {m['cpu_count']} CPUs, "
          f"load {m['load_average_start']} -> {m['load_average_end']}")
    print(format_table(rows))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(results, f, indent=1)
  return results


def main(argv):
  """`python -m hfc_jax.bench` (absl's app.run calls it)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  library_logs.divert()
  try:
    run(FLAGS.sections, json_path=FLAGS.json, models=FLAGS.models,
        pgd_eval_models=FLAGS.models if FLAGS["models"].present else None,
        batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, steps=FLAGS.steps,
        repeats=FLAGS.repeats, tiny=FLAGS.tiny, tfds_data_dir=FLAGS.tfds_data_dir,
        autoattack_images=FLAGS.autoattack_images)
  except errors.HfcError as e:
    print(f"hfc_jax.bench: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
