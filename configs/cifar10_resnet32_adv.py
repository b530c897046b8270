r"""The paper's adversarial training on CIFAR-10 (Wang et al., CVPR 2020, section 6, as the code ran it).

  python -m hfc_jax.main --config=configs/cifar10_resnet32_adv.py --workdir=DIR
  python -m hfc_jax.main --config=configs/cifar10_resnet32_adv.py --workdir=DIR \
      --config.mode=robust_eval

The vanilla pre-activation ResNet-32 (no BN, Adam 1e-4, batch 128, 100 epochs) trained
on L-inf PGD examples only: eps 0.03, 10 steps of eps/10, no random start, with
pad-2 crop + flip augmentation (used in this mode only).
"""

from hfc_jax import presets


def get_config():
  config = presets.base("cifar10")
  config.update(presets.adversarial("cifar10"))
  return config
