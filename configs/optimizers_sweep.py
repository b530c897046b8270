r"""The paper's optimiser comparison: SGD, Adam, AdaGrad, AdaDelta, RMSprop.

  python -m hfc_jax.main --config=configs/optimizers_sweep.py --workdir=workdirs/optim
  python -m hfc_jax.report --workdirs=workdirs/optim

The vanilla model of the preset trained with each optimiser at a common learning
rate for it (SGD 0.01 with momentum 0.9, Adam and RMSprop at the preset's rate,
AdaGrad 0.01, AdaDelta 1.0). Paper: only SGD captures more HFC.
"""

from hfc_jax import presets


def get_config(dataset: str = "embedded"):
  config = presets.base(dataset)
  lr = config.optim.learning_rate
  return presets.set_sweep(config, "optimizers", [
      ("sgd", {"optim": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}}),
      ("adam", {"optim": {"name": "adam", "learning_rate": lr}}),
      ("adagrad", {"optim": {"name": "adagrad", "learning_rate": 0.01}}),
      ("adadelta", {"optim": {"name": "adadelta", "learning_rate": 1.0}}),
      ("rmsprop", {"optim": {"name": "rmsprop", "learning_rate": lr}}),
  ])
