r"""First-layer kernel analysis of trained workdirs (the paper's section 6, eq. 3, table 2).

  python -m hfc_jax.main --config=configs/kernels.py --workdir=workdirs/vanilla \
      --config.kernels.compare="('workdirs/bn','workdirs/adv')"

Restores each workdir's latest checkpoint (written on any mesh; on a laptop CPU is
fine), draws and measures its first conv layer, and sweeps eq. 3's rho and a Fourier
low-pass of the kernels against FGSM and PGD-20 at eps 0.03, 0.06, 0.09 and 8/255
(hfc_jax/analysis/kernels.py). Data come from each checkpoint's own config. The whole
sweep on 1,000 test images of a small CNN takes minutes on two CPU cores;
`--config.kernels.num_images=200` for a quick look.
"""

from hfc_jax import defaults


def get_config():
  config = defaults.get_config()
  config.mode = "kernels"
  return config
