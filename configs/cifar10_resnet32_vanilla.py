r"""The paper's vanilla CIFAR-10 setup (Wang et al., CVPR 2020; the original code's settings), as the original code ran it.

  python -m hfc_jax.main --config=configs/cifar10_resnet32_vanilla.py --workdir=DIR

Pre-activation ResNet-32 without BatchNorm, Adam at 1e-4, 100 epochs, no
augmentation, seed 100; LFC/HFC at r in {4, 8, 12, 16} on the test set and on
the training set every epoch. Pixels in [0, 1]; the original code also divides
training and LFC/HFC images by their own maximum (`per_image_max`), kept here.
Needs CIFAR-10 prepared with tensorflow-datasets (see README, "Data").

One deviation: the original code's batch is 100; here it is 128, so that the batch
splits evenly over 1, 2, 4, 8 or 16 devices (a training batch must). On up to 4
devices `--config.train.batch_size=100` restores the original.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.seed = 100
  config.data.name = "cifar10"
  config.data.rescale = "per_image_max"
  config.model.name = "preact_resnet32"
  config.model.norm = "none"
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-4
  config.train.epochs = 100
  config.train.batch_size = 128       # the original code: 100 (see the docstring)
  config.train.log_every_steps = 100
  config.eval.rescale = "per_image_max"
  config.eval.batch_size = 1000
  config.eval.train_subset = 10000
  return config
