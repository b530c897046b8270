r"""Figure 3 of the paper: natural against shuffled labels ("rethinking generalisation").

  python -m hfc_jax.main --config=configs/fig3_shuffled_labels.py --workdir=workdirs/fig3
  python -m hfc_jax.report --workdirs=workdirs/fig3

Two runs on a small training set so that the shuffled one can be memorised: natural
labels, and training labels permuted once with a fixed seed (`data.shuffle_labels`;
the test labels stay true). The report plots the accuracy on the LFC and HFC of the
training images per epoch. Paper: the natural model gets ~40% of r = 4 LFC training
images right after one epoch, the shuffled one barely learns the LFC and needs far
more epochs to fit (it memorises through the HFC).
"""

from hfc_jax import presets


def get_config(dataset: str = "embedded"):
  config = presets.base(dataset)
  config.model.norm = "paper_bn"   # memorises in tens of epochs on a CPU
  if dataset == "embedded":
    config.data.num_train = 2000
    config.train.epochs = 40
  elif dataset == "fashion_mnist":
    config.data.train_limit = 2000
    config.train.epochs = 40
  else:
    config.train.epochs = 300
  config.checkpoint.keep = 2
  config.eval.train_subset = 1000
  return presets.set_sweep(config, "shuffled_labels", [
      ("natural", {}),
      ("shuffled", {"data": {"shuffle_labels": True}}),
  ])
