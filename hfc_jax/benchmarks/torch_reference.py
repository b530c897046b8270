"""The `train` section's PyTorch side: the same CIFAR ResNet-18 train step in PyTorch
(an optional extra), timed in turns with the JAX step."""

import os
from collections.abc import Callable

import jax

from hfc_jax.benchmarks.common import Options, Timing, random_batch


def import_torch(opts: Options):
  """(torch or None, a sentence saying whether and why the comparison runs)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional)
  except ImportError:
    return None, "torch is not installed"
  if "resnet18" not in opts.models:
    return torch, "not run: resnet18 is not in --models"
  return torch, (f"torch {torch.__version__} on {_torch_device(torch)}, timed in turns "
                 "with the JAX resnet18 step")


def _torch_device(torch) -> str:
  """'cuda' when JAX runs on a GPU and torch sees one (compare like with like), else 'cpu'."""
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_resnet18(torch):
  """CIFAR ResNet-18 (hfc_jax.models.resnet's layout) in PyTorch, 10 classes."""
  nn = torch.nn

  def conv_bn(cin, cout, kernel, stride):
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                *conv_bn(cout, cout, 3, 1))
      self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                       if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.shortcut(x))

  layers, cin = [*conv_bn(3, 64, 3, 1), nn.ReLU()], 64
  for stage, width in enumerate((64, 128, 256, 512)):
    for i in range(2):
      layers.append(Block(cin, width, 2 if stage and not i else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
  return nn.Sequential(*layers)


def _torch_step(torch, layout: str, batch: int, device: str) -> Callable[[], None]:
  """One SGD (momentum 0.9, Nesterov, weight decay 5e-4) step on a fixed uint8 batch
  already on `device`; it returns once the device has finished."""
  fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
  model = _torch_resnet18(torch).to(device=device, memory_format=fmt).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  images, labels = random_batch(batch)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device).contiguous(memory_format=fmt)
  y = torch.from_numpy(labels).long().to(device)

  def step():
    loss = torch.nn.functional.cross_entropy(model(x.float() / 255), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()
  return step


def torch_timings(torch, batch: int, opts: Options) -> dict[str, Timing]:
  """PyTorch ResNet-18 train steps in channels_last and NCHW layouts, on the GPU when
  JAX uses one, else on every CPU core."""
  torch.set_num_threads(os.cpu_count())
  device = _torch_device(torch)
  return {f"torch_{layout}": Timing(_torch_step(torch, layout, batch, device), batch,
                                    opts.steps)
          for layout in ("channels_last", "nchw")}
