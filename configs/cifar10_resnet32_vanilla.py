r"""The paper's vanilla CIFAR-10 setup (Wang et al., CVPR 2020; the original code's settings), as the original code ran it.

  python -m hfc_jax.main --config=configs/cifar10_resnet32_vanilla.py --workdir=DIR

Pre-activation ResNet-32 without BatchNorm, Adam at 1e-4, 100 epochs, no
augmentation, seed 100; LFC/HFC at r in {4, 8, 12, 16} on the test set and on
the training set every epoch. Pixels in [0, 1]; the original code also divides
training and LFC/HFC images by their own maximum (`per_image_max`), kept here.
Needs CIFAR-10 prepared with tensorflow-datasets (see docs/data.md).

One deviation: the original code's batch is 100; here it is 128, so that the batch
splits evenly over 1, 2, 4, 8 or 16 devices (a training batch must). On up to 4
devices `--config.train.batch_size=100` restores the original.
"""

from hfc_jax import presets


def get_config():
  return presets.cifar10_resnet32_vanilla()
