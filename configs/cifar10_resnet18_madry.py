r"""Madry et al.'s CIFAR-10 PGD adversarial training, on the CIFAR ResNet-18.

  python -m hfc_jax.main --config=configs/cifar10_resnet18_madry.py --workdir=DIR
  python -m hfc_jax.main --config=configs/cifar10_resnet18_madry.py --workdir=DIR \
      --config.mode=robust_eval

eps 8/255, 7 steps of 2/255 with random start, adversarial examples only; evaluated
with PGD-20. Reference (Madry et al., ICLR 2018): 87.3% clean, 45.8% PGD-20 for Madry's
wide ResNet. About 8x the cost of a plain epoch.
"""

from hfc_jax import presets


def get_config():
  config = presets.cifar10_resnet18()
  config.update(presets.pgd_training(8 / 255, 2 / 255, 7, random_start=True,
                                     robust_subset=1000))
  config.data.aug_pad = 4
  config.robust_eval.eps = (8 / 255, 0.03, 0.06, 0.09)
  return config
