r"""Table 1 of the paper: train on LFC-only or HFC-only images, test on the originals.

  python -m hfc_jax.main --config=configs/table1_lfc_hfc.py --workdir=workdirs/table1
  python -m hfc_jax.report --workdirs=workdirs/table1

Eight runs: the training images replaced by their LFC (lfc_4 ... lfc_16) or their
HFC (hfc_4 ... hfc_16) at r = 4, 8, 12, 16, split on the device in each step
(`train.input_component`); test accuracy is measured on the original test images
(`test/clean`) and, per radius, on the test LFC/HFC. Paper (CIFAR-10): LFC-trained
models reach ~0.62 (r = 4) to ~0.77 (r = 16) on the originals; HFC-trained models
fit the training set and test near chance.
"""

from hfc_jax import presets

RADII = (4, 8, 12, 16)


def get_config(dataset: str = "embedded"):
  config = presets.base(dataset)
  runs = [(f"{c}_{r}", {"train": {"input_component": c, "input_radius": float(r)}})
          for c in ("lfc", "hfc") for r in RADII]
  return presets.set_sweep(config, "train_component", runs)
