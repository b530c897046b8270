r"""CIFAR-10 ResNet-18 (the blog post's model) with standard BatchNorm and SGD.

  python -m hfc_jax.main --config=configs/cifar10_resnet18.py --workdir=DIR

A strong conventional baseline: SGD momentum 0.9 with Nesterov, lr 0.1 on batch 128
with cosine decay, weight decay 5e-4, pad-4 crop + flip, 100 epochs.
"""

from hfc_jax import presets


def get_config():
  return presets.cifar10_resnet18()
