r"""PGD adversarial training on the embedded data: minutes on a CPU, no download.

  python -m hfc_jax.main --config=configs/embedded_adv.py --workdir=workdirs/adv
  python -m hfc_jax.main --config=configs/embedded_adv.py --workdir=workdirs/adv \
      --config.mode=robust_eval

The default small CNN trained on PGD-5 examples (eps 8/255 = 0.031, step 2/255, random
start). The embedded set's class texture has a peak amplitude of 0.08, so an attack of
this size can wipe it out: adversarial training pushes the model towards the smooth
shapes and away from the HFC (the paper: adversarially trained models are invariant to
HFC at r = 12/16). Compare HFC accuracy with configs/default.py's run.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.num_train = 5000
  config.train.epochs = 6
  config.adv.enabled = True
  config.adv.name = "pgd"
  config.adv.eps = 8 / 255
  config.adv.step_size = 2 / 255
  config.adv.steps = 5
  config.adv.random_start = True
  config.eval.robust_subset = 500
  config.robust.num_images = 500
  return config
