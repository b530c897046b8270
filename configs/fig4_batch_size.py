r"""Figure 4 of the paper: smaller batches, higher accuracy and more HFC captured.

  python -m hfc_jax.main --config=configs/fig4_batch_size.py --workdir=workdirs/fig4
  python -m hfc_jax.report --workdirs=workdirs/fig4

The vanilla model of the preset (`:embedded` default, `:fashion_mnist`, `:cifar10`)
trained at global batch sizes 32, 64, 128 and 256 (multiples of 8, so that they
split over 8 devices), the learning rate unchanged, as in the paper.
"""

from hfc_jax import presets

BATCH_SIZES = (32, 64, 128, 256)


def get_config(dataset: str = "embedded"):
  config = presets.base(dataset)
  return presets.set_sweep(config, "batch_size", [
      (f"batch_{b}", {"train": {"batch_size": b}}) for b in BATCH_SIZES])
