r"""PGD adversarial training on the embedded data: minutes on a CPU, no download.

  python -m hfc_jax.main --config=configs/embedded_adv.py --workdir=workdirs/adv
  python -m hfc_jax.main --config=configs/embedded_adv.py --workdir=workdirs/adv \
      --config.mode=robust_eval

The default small CNN, with standard BatchNorm, trained on PGD-5 examples (eps 4/255,
step 1/255, random start), about 6x the cost of a plain epoch. The embedded set's class
texture has a peak amplitude of 0.08 and lies at |k| = 12.5-15.5, so an attack of this size
can move it a long way: adversarial training pushes the model towards the smooth shapes
and away from the HFC (the paper: adversarially trained models are invariant to HFC at
r = 12/16). Compare HFC and PGD accuracy with the same config and --config.adv.enabled=False.
"""

from hfc_jax import defaults, presets


def get_config():
  config = defaults.get_config()
  config.data.num_train = 5000
  config.train.epochs = 8
  config.model.norm = "batchnorm"
  config.update(presets.pgd_training(4 / 255, 1 / 255, 5, random_start=True,
                                     robust_subset=500))
  config.robust_eval.num_images = 500
  config.robust_eval.eps = (2 / 255, 4 / 255, 8 / 255, 0.03)
  config.robust_eval.min_eps_max = 0.05
  return config
