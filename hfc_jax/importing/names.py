"""Name maps: which PyTorch module of a published architecture is which Flax module here.

One function per architecture returns [(PyTorch module name, Flax module path)], e.g.
('block1.layer.0.bn1', ('blocks', 0, 'norm1')): the module names of the PyTorch
definition (RobustBench's, kuangliu's, torchvision's; their `state_dict` keys are these
names plus '.weight', '.running_mean', ...) against the attribute paths of the models in
`hfc_jax.models` (`nnx.List` entries are integer keys). Blocks are numbered per stage in
PyTorch ('layer2.1') and across stages here (`blocks[3]`).

A map may name modules that a given configuration does not have (a WRN block whose
input and output widths agree has no `convShortcut`): `convert.targets` keeps the
entries whose Flax module exists, so the maps need not repeat the models' shortcut rules,
and checks that every Flax parameter and statistic is mapped exactly once.
"""

from collections.abc import Iterator, Sequence

Path = tuple   # a Flax module path: ('blocks', 3, 'conv1')
NameMap = list[tuple[str, Path]]


def _blocks(stage_blocks: Sequence[int], stage_base: int = 1
            ) -> Iterator[tuple[int, int, int]]:
  """(stage number from `stage_base`, block index in the stage, index over all stages)."""
  flat = 0
  for stage, count in enumerate(stage_blocks, start=stage_base):
    for i in range(count):
      yield stage, i, flat
      flat += 1


def wide_resnet(depth: int) -> NameMap:
  """RobustBench's `WideResNet` (conv1, block{1,2,3}.layer.{i}.{bn1, conv1, bn2, conv2,
  convShortcut}, bn1, fc) -> `models.wide_resnet.WideResNet`."""
  n = (depth - 4) // 6
  out = [("conv1", ("first_conv",))]
  for stage, i, flat in _blocks((n, n, n)):
    torch, flax = f"block{stage}.layer.{i}", ("blocks", flat)
    out += [(f"{torch}.bn1", (*flax, "norm1")), (f"{torch}.conv1", (*flax, "conv1")),
            (f"{torch}.bn2", (*flax, "norm2")), (f"{torch}.conv2", (*flax, "conv2")),
            (f"{torch}.convShortcut", (*flax, "shortcut"))]
  return out + [("bn1", ("final_norm",)), ("fc", ("head",))]


def preact_resnet18() -> NameMap:
  """RobustBench's `PreActResNet18` (conv1, layer{1-4}.{i}.{bn1, conv1, bn2, conv2,
  shortcut.0}, linear) -> `models.preact_resnet18.PreActResNet18`."""
  out = [("conv1", ("first_conv",))]
  for stage, i, flat in _blocks((2, 2, 2, 2)):
    torch, flax = f"layer{stage}.{i}", ("blocks", flat)
    out += [(f"{torch}.bn1", (*flax, "norm1")), (f"{torch}.conv1", (*flax, "conv1")),
            (f"{torch}.bn2", (*flax, "norm2")), (f"{torch}.conv2", (*flax, "conv2")),
            (f"{torch}.shortcut.0", (*flax, "shortcut"))]
  return out + [("linear", ("head",))]


def cifar_resnet18() -> NameMap:
  """The common PyTorch CIFAR ResNet-18 (kuangliu/pytorch-cifar, RobustBench's
  `ResNet18`: conv1, bn1, layer{1-4}.{i}.{conv1, bn1, conv2, bn2, shortcut.0,
  shortcut.1}, linear) -> `models.resnet.ResNet18` (padding='torch')."""
  out = [("conv1", ("first_conv",)), ("bn1", ("first_norm",))]
  for stage, i, flat in _blocks((2, 2, 2, 2)):
    out += _post_activation_block(f"layer{stage}.{i}", ("blocks", flat), convs=2,
                                  shortcut=("shortcut.0", "shortcut.1"))
  return out + [("linear", ("head",))]


def torchvision_resnet(stage_blocks: Sequence[int], bottleneck: bool) -> NameMap:
  """torchvision's `ResNet` (conv1, bn1, layer{1-4}.{i}.{conv1, bn1, ..., downsample.0,
  downsample.1}, fc) -> `models.torchvision_resnet.TorchvisionResNet`."""
  out = [("conv1", ("first_conv",)), ("bn1", ("first_norm",))]
  for stage, i, flat in _blocks(stage_blocks):
    out += _post_activation_block(f"layer{stage}.{i}", ("blocks", flat),
                                  convs=3 if bottleneck else 2,
                                  shortcut=("downsample.0", "downsample.1"))
  return out + [("fc", ("head",))]


def _post_activation_block(torch: str, flax: Path, *, convs: int,
                           shortcut: tuple[str, str]) -> NameMap:
  """conv{k}/bn{k} -> conv{k}/norm{k} for k = 1..convs, and the projection shortcut's
  conv and BN -> shortcut_conv, shortcut_norm (`resnet.BasicBlock`, `Bottleneck`)."""
  out = []
  for k in range(1, convs + 1):
    out += [(f"{torch}.conv{k}", (*flax, f"conv{k}")), (f"{torch}.bn{k}", (*flax, f"norm{k}"))]
  return out + [(f"{torch}.{shortcut[0]}", (*flax, "shortcut_conv")),
                (f"{torch}.{shortcut[1]}", (*flax, "shortcut_norm"))]
