"""The architectures `--arch` names: which model of `hfc_jax.models` each becomes, its
name map, and the input standardisation its published weights expect by default.

  --arch                 PyTorch definition                         model.name
  preact_resnet18        RobustBench's PreActResNet18               preact_resnet18
  resnet18               kuangliu's / RobustBench's CIFAR ResNet18  resnet18_torch
  wrn-D-K                RobustBench's WideResNet(depth=D,          wide_resnet, model.depth D,
                         widen_factor=K): wrn-28-10, wrn-70-16 ...  model.width_factor K
  torchvision_resnet18   torchvision.models.resnet18                torchvision_resnet18
  torchvision_resnet50   torchvision.models.resnet50                torchvision_resnet50

torchvision's weights expect ImageNet-standardised inputs (its transforms normalise with
IMAGENET_MEAN / IMAGENET_STD), so those become the model's `input_mean` / `input_std`
unless the file or the command says otherwise; the CIFAR architectures take [0, 1]
images unless the file carries RobustBench's `mu` / `sigma` buffers.
"""

import dataclasses
import re
from collections.abc import Callable

from hfc_jax import errors
from hfc_jax.importing import names

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # torchvision's ImageNet transforms
IMAGENET_STD = (0.229, 0.224, 0.225)
_WRN = re.compile(r"wrn-(\d+)-(\d+)")
FIXED = ("preact_resnet18", "resnet18", "torchvision_resnet18", "torchvision_resnet50")
SPELLINGS = (*FIXED, "wrn-D-K (e.g. wrn-28-10, wrn-34-10, wrn-70-16)")


@dataclasses.dataclass(frozen=True)
class Arch:
  """One `--arch`: the model it builds and how the PyTorch names map onto it."""
  name: str                          # as --arch spells it: 'wrn-28-10'
  model: dict                        # model.* config fields: name, depth, width_factor
  name_map: Callable[[], names.NameMap]
  mean: tuple[float, ...] = ()       # the standardisation the weights expect when the
  std: tuple[float, ...] = ()        # file does not carry one (torchvision: ImageNet's)
  ignored: tuple[str, ...] = ()      # key prefixes of modules never called in forward

  @property
  def default_preprocessing(self) -> str:
    """How `mean` / `std` came about, in words (for the provenance record)."""
    return ("torchvision's ImageNet mean and std (the architecture's default)"
            if self.mean else "none: the weights take [0, 1] images")


def _torchvision(depth: int, stage_blocks: tuple[int, ...], bottleneck: bool) -> Arch:
  return Arch(f"torchvision_resnet{depth}", {"name": f"torchvision_resnet{depth}"},
              lambda: names.torchvision_resnet(stage_blocks, bottleneck),
              IMAGENET_MEAN, IMAGENET_STD)


def parse(arch: str) -> Arch:
  """The `Arch` of `--arch` (see the module docstring); HfcError naming --arch for an
  unknown one or a WRN depth that is not 6n + 4."""
  match = _WRN.fullmatch(arch or "")
  if match:
    depth, width = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 or width < 1:
      raise errors.HfcError(f"--arch={arch!r}: a WideResNet is wrn-D-K with depth D = 6n + "
                            "4 (10, 16, 22, 28, 34, ..., 70) and width factor K >= 1.")
    # RobustBench's WRNs built with sub_block1=True (TRADES' code) carry a copy of
    # stage 1 that forward() never calls; its weights are ignored.
    return Arch(arch, {"name": "wide_resnet", "depth": depth, "width_factor": width},
                lambda: names.wide_resnet(depth), ignored=("sub_block1.",))
  if arch == "preact_resnet18":
    return Arch(arch, {"name": "preact_resnet18"}, names.preact_resnet18)
  if arch == "resnet18":
    return Arch(arch, {"name": "resnet18_torch"}, names.cifar_resnet18)
  if arch == "torchvision_resnet18":
    return _torchvision(18, (2, 2, 2, 2), bottleneck=False)
  if arch == "torchvision_resnet50":
    return _torchvision(50, (3, 4, 6, 3), bottleneck=True)
  raise errors.HfcError(f"--arch={arch!r} is not known; choose one of: "
                        f"{', '.join(SPELLINGS)}.")


def model_fields(arch: Arch) -> dict:
  """The model.* config fields of `arch`: its own, plus 0 for depth and width factor
  where it has none (the defaults)."""
  return {"depth": 0, "width_factor": 0, **arch.model}

