r"""Figure 6 of the paper: BatchNorm or not, trained on LFC images only.

  python -m hfc_jax.main --config=configs/fig6_bn_lfc.py --workdir=workdirs/fig6
  python -m hfc_jax.report --workdirs=workdirs/fig6

Two runs trained on the LFC of the training images at r = 12 (`train.input_component`):
without BatchNorm, and with the paper's batch-statistic BatchNorm. Both are tested on
the original test images and their LFC/HFC. The paper gives no number for this
figure; it asks whether BatchNorm still helps once the HFC is gone from training.
"""

from hfc_jax import presets

RADIUS = 12.0


def get_config(dataset: str = "embedded"):
  config = presets.base(dataset)
  config.train.input_component = "lfc"
  config.train.input_radius = RADIUS
  return presets.set_sweep(config, "bn_lfc", [
      ("no_bn", {"model": {"norm": "none"}}),
      ("bn", {"model": {"norm": "paper_bn"}}),
  ])
