r"""CIFAR-10 ResNet-18 (the blog post's model) with standard BatchNorm and SGD.

  python -m hfc_jax.main --config=configs/cifar10_resnet18.py --workdir=DIR

A strong conventional baseline: SGD momentum 0.9 with Nesterov, lr 0.1 on batch 128
with cosine decay, weight decay 5e-4, pad-4 crop + flip, 100 epochs.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.augment = True
  config.model.name = "resnet18"
  config.model.norm = "batchnorm"
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.nesterov = True
  config.optim.schedule = "cosine"
  config.optim.weight_decay = 5e-4
  config.train.epochs = 100
  config.train.batch_size = 128
  config.train.log_every_steps = 100
  config.eval.batch_size = 1000
  config.eval.train_subset = 10000
  return config
