r"""Figure 5 of the paper: how each training heuristic uses the LFC and the HFC.

  python -m hfc_jax.main --config=configs/fig5_heuristics.py --workdir=workdirs/fig5
  python -m hfc_jax.main --config=configs/fig5_heuristics.py:fashion_mnist --workdir=...
  python -m hfc_jax.main --config=configs/fig5_heuristics.py:cifar10 --workdir=...
  python -m hfc_jax.report --workdirs=workdirs/fig5

One sweep, seven runs in sub-workdirs: vanilla (no BatchNorm), dropout 0.5 before the
classifier, mix-up with the paper's alpha = 0.5 and with the original code's
Beta(1, 1), the paper's batch-statistic BatchNorm, standard BatchNorm with running
averages, and PGD adversarial training. The report draws one panel per run: test
accuracy on the LFC (solid) and HFC (dashed) at r = 4, 8, 12, 16 against the epoch.
Paper: dropout ~ vanilla; mix-up and BatchNorm use more HFC; adversarial training
is invariant to HFC at r = 12/16. Pick runs with --config.sweep.runs="('vanilla','bn_paper')".
"""

from hfc_jax import presets


def get_config(dataset: str = "embedded"):
  config = presets.base(dataset)
  return presets.set_sweep(config, "heuristics", [
      ("vanilla", {}),
      ("dropout", {"model": {"dropout": 0.5}}),
      ("mixup_paper", {"train": {"mixup_alpha": 0.5}}),
      ("mixup_code", {"train": {"mixup_alpha": 1.0}}),
      ("bn_paper", {"model": {"norm": "paper_bn"}}),
      ("bn_standard", {"model": {"norm": "batchnorm"}}),
      ("adversarial", presets.adversarial(dataset)),
  ])
