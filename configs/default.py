r"""Default experiment: the embedded data set, a small CNN, a minute or two on a CPU.

  python -m hfc_jax.main --config=configs/default.py --workdir=/tmp/hfc_default

The embedded set (hfc_jax/data/synthetic.py) needs no download: 32x32x3 images whose
class shows both in smooth low-frequency shapes and in a faint high-frequency
texture (at spectrum radius 12.5-15.5). The small CNN uses the paper's batch-statistic
BatchNorm. Expect, after 6 epochs (under a minute on 2 idle CPU cores, about 2 when
shared): clean test accuracy about 0.95, HFC accuracy about 0.9 at r = 4, 8, 12
(images that look black) and chance at r = 16, LFC accuracy about 0.8 at r <= 12
recovering to the clean level at r = 16. With --config.model.norm=none the HFC
accuracy stays near 0.2: the paper's "BatchNorm models exploit more HFC".
Every other config starts from these defaults (through hfc_jax.defaults or
hfc_jax.presets, never through another config file, so each loads from any working
directory) and overrides what differs; each field's default and meaning is in
hfc_jax/defaults.py (and in `python -m hfc_jax.main --help`).
"""

import ml_collections

from hfc_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  return defaults.get_config()
