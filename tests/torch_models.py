"""PyTorch references for the import tests: the published architectures, written out with
their module names and forward passes, so that `state_dict()` has the keys of the real
checkpoints and eval-mode logits are what the published code computes.

- `WideResNet`: RobustBench's (robustbench/model_zoo/architectures/wide_resnet.py, from
  TRADES): pre-activation blocks whose shortcut, where the channels change, is a 1x1 conv
  of the activated input; optional unused `sub_block1`.
- `PreActResNet18`: RobustBench's `PreActResNet(PreActBlock, [2, 2, 2, 2])`.
- `CifarResNet18`: kuangliu/pytorch-cifar's and RobustBench's `ResNet18`.
- `TorchvisionResNet`: torchvision.models.resnet's layout (ImageNet stem, BasicBlock or
  v1.5 Bottleneck, `downsample`), with the stage widths as an argument so tests can
  shrink it.
- `Standardized`: RobustBench's `mu` / `sigma` buffers around any of them.

Only the torch-marked tests import this module (it imports torch).
"""

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


# ------------------------------------------------------------------ RobustBench's WRN
class WideBasicBlock(nn.Module):
  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
    self.conv1 = conv3x3(c_in, c_out, stride)
    self.bn2, self.relu2 = nn.BatchNorm2d(c_out), nn.ReLU()
    self.conv2 = conv3x3(c_out, c_out)
    self.equal_in_out = c_in == c_out
    self.convShortcut = None if self.equal_in_out else conv1x1(c_in, c_out, stride)

  def forward(self, x):
    a = self.relu1(self.bn1(x))
    y = self.conv2(self.relu2(self.bn2(self.conv1(a))))
    return y + (x if self.equal_in_out else self.convShortcut(a))


class NetworkBlock(nn.Module):
  def __init__(self, count: int, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.layer = nn.Sequential(*[WideBasicBlock(c_in if i == 0 else c_out, c_out,
                                                stride if i == 0 else 1)
                                 for i in range(count)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
               sub_block1: bool = False):
    super().__init__()
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    self.conv1 = conv3x3(3, widths[0])
    self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
    if sub_block1:
      self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1)
    self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
    self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
    self.bn1, self.relu = nn.BatchNorm2d(widths[3]), nn.ReLU()
    self.fc = nn.Linear(widths[3], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    x = self.relu(self.bn1(x))
    return self.fc(F.avg_pool2d(x, 8).flatten(1))


# ---------------------------------------------------- RobustBench's PreActResNet-18
class PreActBlock(nn.Module):
  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
    self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
    if stride != 1 or c_in != c_out:
      self.shortcut = nn.Sequential(conv1x1(c_in, c_out, stride))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return out + shortcut


def _stages(block, widths, counts):
  """One nn.Sequential of `block`s per stage, stride 2 at the start of stages 2-4."""
  c_in, stages = widths[0], []
  for stage, (width, count) in enumerate(zip(widths, counts)):
    blocks = []
    for i in range(count):
      blocks.append(block(c_in, width, 2 if stage and i == 0 else 1))
      c_in = width * getattr(block, "expansion", 1)
    stages.append(nn.Sequential(*blocks))
  return stages


class PreActResNet18(nn.Module):
  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.conv1 = conv3x3(3, 64)
    self.layer1, self.layer2, self.layer3, self.layer4 = _stages(
        PreActBlock, (64, 128, 256, 512), (2, 2, 2, 2))
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
    return self.linear(F.avg_pool2d(x, 4).flatten(1))


# --------------------------------------------------- kuangliu's CIFAR ResNet-18
class CifarBasicBlock(nn.Module):
  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
    self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
    self.shortcut = nn.Sequential()
    if stride != 1 or c_in != c_out:
      self.shortcut = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.conv1, self.bn1 = conv3x3(3, 64), nn.BatchNorm2d(64)
    self.layer1, self.layer2, self.layer3, self.layer4 = _stages(
        CifarBasicBlock, (64, 128, 256, 512), (2, 2, 2, 2))
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.linear(F.avg_pool2d(x, 4).flatten(1))


# ------------------------------------------------------------- torchvision's ResNet
class TvBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, c_in: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = conv3x3(c_in, planes, stride), nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or c_in != planes:
      self.downsample = nn.Sequential(conv1x1(c_in, planes, stride), nn.BatchNorm2d(planes))

  def forward(self, x):
    out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TvBottleneck(nn.Module):
  expansion = 4

  def __init__(self, c_in: int, planes: int, stride: int):
    super().__init__()
    out = planes * self.expansion
    self.conv1, self.bn1 = conv1x1(c_in, planes), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
    self.conv3, self.bn3 = conv1x1(planes, out), nn.BatchNorm2d(out)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or c_in != out:
      self.downsample = nn.Sequential(conv1x1(c_in, out, stride), nn.BatchNorm2d(out))

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
  def __init__(self, bottleneck: bool, counts, num_classes: int = 1000,
               widths=(64, 128, 256, 512)):
    super().__init__()
    block = TvBottleneck if bottleneck else TvBasicBlock
    self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
    self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.layer1, self.layer2, self.layer3, self.layer4 = _stages(block, widths, counts)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x).flatten(1))


def torchvision_resnet18(**kwargs):
  return TorchvisionResNet(False, (2, 2, 2, 2), **kwargs)


def torchvision_resnet50(**kwargs):
  return TorchvisionResNet(True, (3, 4, 6, 3), **kwargs)


# ------------------------------------------------------------------ around them
class Standardized(nn.Module):
  """RobustBench's models that standardise inside: `mu` / `sigma` buffers, (x - mu) /
  sigma, then the network's own forward (its modules keep their names)."""

  def __init__(self, net: nn.Module, mu, sigma):
    super().__init__()
    self.register_buffer("mu", torch.tensor(mu).view(1, 3, 1, 1))
    self.register_buffer("sigma", torch.tensor(sigma).view(1, 3, 1, 1))
    self.net = net

  def forward(self, x):
    return self.net((x - self.mu) / self.sigma)

  def state_dict(self, *args, **kwargs):   # the wrapped net's names, as a subclass has
    out = {"mu": self.mu, "sigma": self.sigma}
    out.update(self.net.state_dict(*args, **kwargs))
    return out


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and random BatchNorm scale, shift and running statistics (so that
  a wrong mapping of any of them shows in the logits); returns the model in eval mode.
  Conv weights are rescaled to keep activations of order 1 through deep stacks."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=generator))
        module.bias.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        module.num_batches_tracked.fill_(1000)
      elif isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                            * (1.0 / fan_in) ** 0.5)
        if module.bias is not None:
          module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
  return model.eval()


def logits(model: nn.Module, images_nhwc) -> "numpy.ndarray":  # noqa: F821
  """Eval-mode float32 logits of NHWC [0, 1] numpy images."""
  with torch.no_grad():
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
    return model(x).numpy()
