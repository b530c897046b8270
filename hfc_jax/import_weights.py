r"""Imports published PyTorch CNN weights into a workdir that every analysis mode reads.

  python -m hfc_jax.import_weights --arch=wrn-28-10 --weights=Carmon2019Unlabeled.pt \
      --workdir=workdirs/carmon2019 --data.name=cifar10
  python -m hfc_jax.main --config=configs/default.py --workdir=workdirs/carmon2019 \
      --config.mode=robust_eval

--arch: preact_resnet18, resnet18 (the common PyTorch CIFAR ResNet-18), wrn-D-K
(RobustBench's WideResNet, e.g. wrn-28-10, wrn-34-10, wrn-70-16), torchvision_resnet18,
torchvision_resnet50. --weights: a state dict, `.pt` / `.pth` (read with
torch.load(weights_only=True); needs the torch extra) or `.safetensors`. --data.*: the
data set the model was trained for, as the config's data section (--data.name=cifar10,
required; the analyses score its test set). --input_mean / --input_std: the per-channel
standardisation the weights expect, when the file does not carry it (RobustBench's
`mu` / `sigma` buffers are read from the file; torchvision's ImageNet mean and std are
the default of its architectures; give both empty for none). The guide is
docs/importing.md.

Exit status: 0 imported; 2 bad input (an unknown or missing key, a shape that does not
fit, an architecture the file is not, an unreadable file, a workdir that is not new), with
one line on stderr and nothing written; 4 the workdir could not be written.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from hfc_jax import defaults, errors, xla_flags

FLAGS = flags.FLAGS
REQUIRED = ("arch", "weights", "workdir")


def define_flags() -> None:
  """Defines the command's flags (when it runs, not on import, so that tests can import
  this module beside `hfc_jax.main`, whose --workdir is another flag of the same name).
  ml_collections applies the --data.* overrides of sys.argv as it defines --data, so a
  bad one (--data.nam=cifar10) fails here: one line, exit status 2."""
  flags.DEFINE_string("arch", None, "Architecture of the weights: preact_resnet18, "
                      "resnet18, wrn-D-K (wrn-28-10, ...), torchvision_resnet18, "
                      "torchvision_resnet50.")
  flags.DEFINE_string("weights", None, "The state dict: .pt/.pth (PyTorch) or "
                      ".safetensors.")
  flags.DEFINE_string("workdir", None, "The new workdir to write (local or gs://).")
  flags.DEFINE_list("input_mean", None, "Per-channel mean the weights expect their inputs "
                    "standardised with (e.g. 0.4914,0.4822,0.4465), with --input_std; "
                    "empty for none. Default: the file's mu/sigma buffers, else the "
                    "architecture's (torchvision: ImageNet's; others: none).")
  flags.DEFINE_list("input_std", None, "Per-channel std, with --input_mean.")
  try:
    config_flags.DEFINE_config_dict(
        "data", defaults.get_config().data,
        "The data set the model was trained for: the config's data section (--data.name, "
        "--data.data_dir, --data.path, ...), stored in the workdir for the analyses.")
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    bad_flag(e)


def bad_flag(error: Exception) -> None:
  """Prints a flag error as one line and exits with status 2. ml_collections wraps an
  unknown --data.* field as AttributeError(KeyError("'nam'\nDid you mean ...")): the
  innermost message, on one line, says it."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"hfc_jax: error: bad flag: {text or type(error).__name__}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad or missing flag reported as one line, exit status 2.
  --data.name is required: its default, the embedded set, is never what a published
  model was trained on."""
  given = list(argv)
  try:
    argv = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    bad_flag(e)
  missing = [f"--{name}" for name in REQUIRED if not FLAGS[name].value]
  if not any(arg.startswith("--data.name") for arg in given):   # no silent 'embedded'
    missing.append("--data.name")
  if missing:
    print(f"hfc_jax: error: {' and '.join(missing)} must be given, e.g. --arch=wrn-28-10 "
          "--weights=model.pt --workdir=workdirs/wrn --data.name=cifar10.", file=sys.stderr)
    sys.exit(2)
  return argv


def floats(flag: str, values: list[str] | None) -> tuple[float, ...] | None:
  """The numbers of a list flag (None when not given); HfcError naming it otherwise."""
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise errors.HfcError(f"--{flag}={','.join(values)!r} must be numbers separated by "
                          "commas.") from None


def main(argv):
  if len(argv) > 1:
    print(f"hfc_jax: error: unexpected arguments {argv[1:]}; every setting is a flag.",
          file=sys.stderr)
    sys.exit(2)
  xla_flags.set_cpu_defaults()   # before JAX starts, as in main
  from hfc_jax import importing, library_logs  # pylint: disable=g-import-not-at-top
  library_logs.divert(verbose=FLAGS.verbosity >= 1)
  try:
    record = importing.import_weights(
        arch=FLAGS.arch, weights=FLAGS.weights, workdir=FLAGS.workdir, data=FLAGS.data,
        input_mean=floats("input_mean", FLAGS.input_mean),
        input_std=floats("input_std", FLAGS.input_std))
  except errors.HfcError as e:
    print(f"hfc_jax: error: {e}", file=sys.stderr)
    sys.exit(2)
  except errors.RunFailed as e:
    print(f"hfc_jax: error: {e}{library_logs.suffix()}", file=sys.stderr)
    sys.exit(e.exit_status)
  pre = record["preprocessing"]
  print(f"hfc_jax: imported {record['source']['path']} (sha256 "
        f"{record['source']['sha256'][:12]}) as --arch={record['arch']} "
        f"(model.name={record['model']['name']}, {record['parameters']:,} parameters, "
        f"{record['num_classes']} classes; input standardisation: {pre['from']}) into "
        f"{record['workdir']}; analyse it with python -m hfc_jax.main "
        f"--config=configs/default.py --workdir={record['workdir']} --config.mode=...",
        flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
