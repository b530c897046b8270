"""Every config field, its default and its meaning: the one place defaults live.

`configs/default.py` (the default experiment) returns this config as it is; every other
config under `configs/` starts from it and overrides what differs. Package code reads
fields without defaults of its own: `complete()` fills the fields a config lacks (a
checkpoint written before a field existed, a hand-written config) from here, so a
default is written once. `python -m hfc_jax.main --help` lists the fields with the
comments below.
"""

import json
from typing import Any

import ml_collections


# The role of every config field: what a change of it means for a resumed run, for
# the replicate key that `python -m hfc_jax.report` averages seeds by, and for the
# analyses that compare trained models. Each field has exactly one role; `ROLES` gives it
# by dotted field name or, where a whole section shares one, by section
# (tests/defaults_test.py fails on a field with none or two). Everything that sorts
# fields (resume, report, analysis.common, `--help`, `--allow_changed_config`) derives
# from it.
RESULT = "result"
TRAINING_DATA = "training_data"
RESUMABLE = "resumable"
BOOKKEEPING = "bookkeeping"
MACHINE = "machine"
ANALYSIS = "analysis"

ROLE_MEANINGS = {
    RESULT: "changes what a run computes: refused when resuming (unless "
            "--allow_changed_config); part of the replicate key",
    TRAINING_DATA: "changes only the training images (augmentation, subsets, label "
                   "shuffling): as 'result', but models that differ in it still share "
                   "a test set",
    RESUMABLE: "changes what a run reports, but may change when it resumes (more "
               "epochs, more scoring), recorded in config_history.jsonl; part of the "
               "replicate key",
    BOOKKEEPING: "changes no number a run records (where and how often it writes): "
                      "may change when resuming; not part of the replicate key",
    MACHINE: "where the run reads its data and how many devices share the batch: "
             "may change when resuming; not part of the replicate key",
    ANALYSIS: "a setting of an analysis mode, never read by training: may change "
              "when resuming; not part of the replicate key",
}

ROLES = {
    "mode": RESUMABLE, "seed": RESULT, "num_devices": MACHINE, "tensorboard": BOOKKEEPING,
    # data: what the test set is, what the training set is, and where both are read from.
    "data.name": RESULT, "data.data_dir": MACHINE, "data.path": RESULT,
    "data.num_classes": RESULT, "data.seed": RESULT, "data.num_train": TRAINING_DATA,
    "data.num_test": RESULT, "data.image_size": RESULT, "data.hf_prob": RESULT,
    "data.hf_amplitude": RESULT, "data.augment": TRAINING_DATA, "data.aug_pad": TRAINING_DATA,
    "data.aug_pad_mode": TRAINING_DATA, "data.aug_flip": TRAINING_DATA,
    "data.rescale": TRAINING_DATA, "data.train_limit": TRAINING_DATA,
    "data.test_limit": RESULT, "data.subset_seed": RESULT,
    "data.shuffle_labels": TRAINING_DATA, "data.label_seed": TRAINING_DATA,
    "model": RESULT, "optim": RESULT, "adv": RESULT,
    "train.epochs": RESUMABLE, "train.batch_size": RESULT,
    "train.log_every_steps": BOOKKEEPING, "train.prefetch": BOOKKEEPING,
    "train.input_component": RESULT, "train.input_radius": RESULT,
    "train.mixup_alpha": RESULT, "train.smooth_kernel_weight": RESULT,
    "train.divergence_loss": BOOKKEEPING, "train.divergence_log_points": BOOKKEEPING,
    "checkpoint": BOOKKEEPING, "eval": RESUMABLE, "sweep": RESUMABLE,
    "robust_eval": ANALYSIS, "figure2": ANALYSIS, "kernels": ANALYSIS,
    "perturbation_spectrum": ANALYSIS, "bands": ANALYSIS, "fourier_heatmap": ANALYSIS,
}


def role(field: str) -> str | None:
  """The role of dotted `field` ('train.epochs'): its own entry in `ROLES`, else its
  nearest section's; None for a field hfc_jax does not know."""
  parts = field.split(".")
  for n in range(len(parts), 0, -1):
    found = ROLES.get(".".join(parts[:n]))
    if found is not None:
      return found
  return None


def fields_with_role(*roles: str) -> tuple[str, ...]:
  """The `ROLES` keys (fields or whole sections) of any of `roles`, in registry order."""
  return tuple(k for k, r in ROLES.items() if r in roles)


def summary(*roles: str) -> str:
  """The fields of `roles` in words, for help texts: 'seed, model.*, data.* except
  data.data_dir, train.batch_size, ...' (a section is named whole when most of its
  fields have one of `roles`)."""
  fields = list(dotted_fields(get_config().to_dict()))
  sections: dict[str, list[str]] = {}
  for field in fields:
    sections.setdefault(field.split(".")[0] if "." in field else field, []).append(field)
  parts = []
  for section, members in sections.items():
    inside = [f for f in members if role(f) in roles]
    if members == [section]:
      parts += inside
    elif len(inside) == len(members):
      parts.append(f"{section}.*")
    elif len(inside) > len(members) / 2:
      parts.append(f"{section}.* except " + ", ".join(f for f in members if f not in inside))
    else:
      parts += inside
  return ", ".join(parts)


# Fields that change no number a training run records (up to float rounding): runs whose
# configs differ only in these and the seed are replicates of one experiment.
REPLICATE_IGNORED = fields_with_role(BOOKKEEPING, MACHINE, ANALYSIS)
# Fields a resumed run must keep (`resume.check`).
FIXED_ON_RESUME = fields_with_role(RESULT, TRAINING_DATA)


def get_config() -> ml_collections.ConfigDict:
  """The default config: the embedded data set, the small CNN with batch-statistic BN."""
  config = ml_collections.ConfigDict()
  config.mode = "train"              # What main runs: train | robust_eval | figure2 | kernels
                                     # | fourier_heatmap | perturbation_spectrum | bands.
  config.seed = 0                    # Model init, data order, dropout.
  config.num_devices = ml_collections.config_dict.placeholder(int)  # Mesh size (None: all).
  config.tensorboard = True          # Write TensorBoard event files.

  config.data = ml_collections.ConfigDict()
  config.data.name = "embedded"      # embedded | cifar10 | cifar100 | mnist | fashion_mnist | npz
                                     # | idx (MNIST-format files at data.path)
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir (None: default).
  config.data.path = ml_collections.config_dict.placeholder(str)  # npz: file; idx: dir.
  config.data.num_classes = 0  # Classes of an npz/idx set (0: from the data's metadata or inferred).
  config.data.seed = 0               # Seed of the embedded data set.
  config.data.num_train = 10000      # Embedded set: training images.
  config.data.num_test = 2000        # Embedded set: test images.
  config.data.image_size = 32        # Embedded set: image side in pixels.
  config.data.hf_prob = 0.9          # Embedded set: share of images carrying their class's texture.
  config.data.hf_amplitude = 0.04    # Embedded set: amplitude of each texture cosine ([0, 1] units).
  config.data.augment = False        # Pad-crop + horizontal flip of training images.
  config.data.aug_pad = 2            # Pixels padded on each side before the random crop.
  config.data.aug_pad_mode = "zero"  # zero | reflect
  config.data.aug_flip = True        # Random horizontal flip when augmenting.
  config.data.rescale = "none"       # Training images: none | per_image_max (the original code).
  config.data.train_limit = 0        # Keep a fixed subset of the training set (0: all).
  config.data.test_limit = 0         # Keep a fixed subset of the test set (0: all).
  config.data.subset_seed = 0        # Seed of the permutation picking those subsets.
  config.data.shuffle_labels = False  # Permute training labels once (figure 3).
  config.data.label_seed = 0         # Seed of that label permutation.

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"    # small_cnn | plain_cnn | resnet18 | preact_resnet32
                                     # | plain_cnn_early_pool | plain_cnn_gap (ablations);
                                     # for PyTorch weights (hfc_jax.import_weights):
                                     # wide_resnet | preact_resnet18 | resnet18_torch
                                     # | torchvision_resnet18 | torchvision_resnet50.
  config.model.norm = "paper_bn"     # none | paper_bn | batchnorm. paper_bn: the paper's BN,
                                     # normalised with the current batch's statistics in
                                     # training and evaluation, no running averages, gamma 1,
                                     # beta 0; batchnorm: standard BN with running averages.
                                     # paper_bn was 'batch_stats', but Flax's 'batch_stats'
                                     # are the running averages batchnorm keeps; the old
                                     # name is still accepted.
  config.model.dropout = 0.0         # Dropout rate before the classifier.
  config.model.input_filter = "none"  # none | lowpass | highpass input layer.
  config.model.filter_radius = 0.0   # Radius of that input layer.
  config.model.dtype = "float32"     # Compute dtype: float32 | bfloat16 (params stay float32).
  config.model.widths = ()           # Channel widths replacing the model's defaults, e.g.
                                     # plain_cnn (32, 32, 64, 128): 3 convs + dense; (): default.
  config.model.depth = 0             # wide_resnet's depth, 6n + 4 (0: 28; 0 for other models).
  config.model.width_factor = 0      # wide_resnet's width factor k (0: 10; 0 for others).
  config.model.input_mean = ()       # Per-channel (x - mean) / std of the [0, 1] input inside
  config.model.input_std = ()        # the model, after the input filter, for weights trained
                                     # on standardised images (e.g. torchvision's); (): none.

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"         # sgd | adam | adamw | adagrad | adadelta | rmsprop
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "constant"  # constant | cosine | step
  config.optim.warmup_epochs = 0.0
  config.optim.momentum = 0.9        # SGD momentum.
  config.optim.nesterov = False
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 0.0  # 0: no clipping.
  config.optim.b1 = 0.9              # Adam's beta1.
  config.optim.b2 = 0.999            # Adam's beta2.
  config.optim.rmsprop_momentum = 0.0  # RMSProp momentum.
  config.optim.decay_at = (0.5, 0.75)  # Schedule 'step': fractions of training where the
  config.optim.decay_factor = 0.1    # learning rate is multiplied by decay_factor.

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 6
  config.train.batch_size = 128      # Global batch, split over all devices.
  config.train.log_every_steps = 25
  config.train.prefetch = 2          # Batches placed on devices ahead of the step.
  config.train.input_component = "original"  # Train on: original | lfc | hfc (table 1).
  config.train.input_radius = 8.0    # Radius of that LFC/HFC split (eval.inclusive boundary).
  config.train.mixup_alpha = 0.0     # > 0: mix-up, one lambda ~ Beta(a, a) per batch.
  config.train.smooth_kernel_weight = 0.0  # > 0: + weight * sum of squared differences of
                                     # adjacent first-conv kernel values (smooth kernels).
  config.train.divergence_loss = 0.0  # > 0: stop (exit 3) once the mean training loss of
  config.train.divergence_log_points = 3  # this many consecutive log intervals is above it.

  # Orbax checkpoints in <workdir>/checkpoints/<step>: at each epoch end, every
  # `every_steps` steps, and at the step where a preemption (SIGTERM) stops the run.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500  # Mid-epoch checkpoint interval in steps (0: none).
  config.checkpoint.keep = 3         # Checkpoints kept (the newest ones).

  config.eval = ml_collections.ConfigDict()
  config.eval.radii = (4, 8, 12, 16)  # LFC/HFC radii, frequency-index units.
  config.eval.bands = ()             # (r1, r2) annuli also scored each epoch as band_R1_R2
                                     # (r1 <= dist < r2), e.g. ((0, 4), (4, 8)); (): none.
  config.eval.inclusive = False      # Disc boundary: dist < r (code) or <= r (paper).
  config.eval.rescale = "none"       # LFC/HFC images: none | per_image_max (original code).
  config.eval.batch_size = 500
  config.eval.train_subset = 2000    # Training images scored per epoch (0: all).
  config.eval.test_subset = 0        # Test images scored per epoch (0: all).
  config.eval.robust_subset = 0      # Test images attacked per epoch (0: only with adv).
  config.eval.robust_steps = 10      # PGD steps of that per-epoch check (step eps/4).
  config.eval.robust_eps = 8 / 255   # Its L-inf eps.
  config.eval.evaluators = ("lfc_hfc", "attack", "smoothness")  # Per-epoch metrics (evaluators.py).

  # PGD adversarial training (Madry): each step trains on attacked images only.
  config.adv = ml_collections.ConfigDict()
  config.adv.enabled = False
  config.adv.name = "pgd"            # fgsm | pgd (L-inf) | pgd_l2
  config.adv.eps = 0.03              # L-inf radius, [0, 1] pixel units.
  config.adv.step_size = 0.003
  config.adv.steps = 10
  config.adv.random_start = False
  config.adv.restarts = 1
  config.adv.train_mode = False      # Attack the model in training mode (default: eval mode).

  # A sweep runs several variants of this config, each in <workdir>/<run name>
  # (hfc_jax/run/sweep.py); `runs` empty: one run in the workdir itself.
  config.sweep = ml_collections.ConfigDict()
  config.sweep.kind = "generic"      # generic | heuristics | batch_size | optimizers |
                                     # train_component | shuffled_labels | bn_lfc
  config.sweep.runs = ()             # Run names, in order.
  config.sweep.overrides = ml_collections.ConfigDict()  # Run name -> partial config.
  config.sweep.group_size = ml_collections.FieldReference(1, field_type=object)  # Runs
                                     # trained together in one vmapped step (run-parallel):
                                     # 1: one after another; k: groups of k consecutive runs,
                                     # which may differ only in seed and scalar settings
                                     # (hfc_jax/stacked.py); 'auto': every such set of runs,
                                     # as many at a time as fit in a device's memory.
  config.sweep.run_devices = 1       # Devices along the (runs, data) mesh's runs axis of a
                                     # group; divides each group's run count (1: every run's
                                     # batch split over all devices).

  # `--config.mode=robust_eval` on a trained workdir (hfc_jax/analysis/robustness.py).
  config.robust_eval = ml_collections.ConfigDict()
  config.robust_eval.eps = (0.03, 0.06, 0.09, 8 / 255)  # L-inf radii of the fixed-eps attacks.
  config.robust_eval.attacks = ("fgsm", "pgd")  # fgsm | pgd | apgd_ce | apgd_t | fab_t | square
                                          # | autoattack (the ensemble), all L-inf.
  config.robust_eval.autoattack_version = "standard"  # standard (Croce & Hein) | fast (a screen).
  config.robust_eval.apgd_iters = 0       # APGD-CE/APGD-T iterations (0: the version's, 100/25).
  config.robust_eval.square_queries = 0   # Square queries (0: the version's, 5000/1000).
  config.robust_eval.masking_eps = 0.5    # L-inf eps where the probe must reach ~0 accuracy.
  config.robust_eval.masking_images = 200  # Images of the large-eps / more-iterations checks
                                          # (the first ones; 0: skip those two checks).
  config.robust_eval.pgd_steps = 20       # PGD-20, step size eps/4, random start.
  config.robust_eval.restarts = 1
  config.robust_eval.num_images = 1000    # Test images evaluated (0: all).
  config.robust_eval.batch_size = 250
  config.robust_eval.min_eps_max = 0.1    # Minimal-eps bisection range [0, min_eps_max].
  config.robust_eval.min_eps_search_steps = 8
  config.robust_eval.min_eps_pgd_steps = 10
  config.robust_eval.defence_radii = (4, 8, 12, 16)  # Input low-pass defence radii.
  config.robust_eval.seed = 0

  # `--config.mode=figure2` on a trained workdir (hfc_jax/analysis/figure2.py): images whose HFC
  # keeps the prediction while the LFC changes it. Data and split come from the checkpoint.
  config.figure2 = ml_collections.ConfigDict()
  config.figure2.radii = (4, 8, 12, 16)  # LFC/HFC radii, frequency-index units.
  config.figure2.num_images = 0      # First test images analysed (0: the whole test set).
  config.figure2.batch_size = 500    # Global batch (0: the checkpoint's eval.batch_size).
  config.figure2.grid_examples = 8   # Examples per radius in figure2.png and the JSON.

  # `--config.mode=kernels` on trained workdirs (hfc_jax/analysis/kernels.py): first-layer
  # kernel grids, smoothness measures, and the paper's table 2 as a sweep over eq. 3's
  # rho (and a Fourier low-pass of the kernels), attacks run through the smoothed model.
  config.kernels = ml_collections.ConfigDict()
  config.kernels.compare = ()        # Other workdirs (same data set) studied beside this one.
  config.kernels.rhos = (0.0, 0.1, 0.25, 0.5, 1.0)  # Eq. 3 strengths; 0: as trained.
  config.kernels.cutoffs = (1.0, 1.2)  # Kernel low-pass cut-offs, DFT-index units (< 1: DC only).
  config.kernels.variants = ("eq3", "eq3_renorm", "scaled", "lowpass")  # Kernels swept: eq3
                                     # (as written), eq3_renorm (eq. 3 / (1 + 8 rho)), scaled
                                     # (kernel x (1 + 8 rho)) at each rho; lowpass at each cut-off.
  config.kernels.show_rho = 1.0      # Rho of the smoothed kernels drawn in kernels_rgb.png.
  config.kernels.eps = (0.03, 0.06, 0.09, 8 / 255)  # L-inf radii of the attacks.
  config.kernels.attacks = ("fgsm", "pgd")  # As robust_eval.attacks.
  config.kernels.autoattack_version = "standard"  # standard | fast
  config.kernels.apgd_iters = 0      # APGD-CE/APGD-T iterations (0: the version's, 100/25).
  config.kernels.square_queries = 0  # Square queries (0: the version's, 5000/1000).
  config.kernels.masking_eps = 0.5   # L-inf eps where the probe must reach ~0 accuracy.
  config.kernels.masking_images = 200  # Images of the large-eps / more-iterations checks (0: skip).
  config.kernels.pgd_steps = 20      # PGD-20, step size eps/4, random start.
  config.kernels.num_images = 1000   # First test images evaluated (0: all).
  config.kernels.batch_size = 250
  config.kernels.seed = 0            # Attack randomness.

  # `--config.mode=perturbation_spectrum` on a trained workdir
  # (hfc_jax/analysis/perturbation_spectrum.py): the power spectrum of FGSM/PGD
  # perturbations x_adv - x (robust_eval's attacks) beside that of the clean images.
  config.perturbation_spectrum = ml_collections.ConfigDict()
  config.perturbation_spectrum.attacks = ("fgsm", "pgd")
  config.perturbation_spectrum.eps = 8 / 255  # L-inf radius, [0, 1] pixel units (> 0).
  config.perturbation_spectrum.pgd_steps = 10  # PGD steps of eps/4, random start.
  config.perturbation_spectrum.num_images = 1000  # First test images attacked (0: all).
  config.perturbation_spectrum.batch_size = 250  # Real images per batch.
  config.perturbation_spectrum.seed = 0  # Attack randomness.

  # `--config.mode=bands` on trained workdirs (hfc_jax/analysis/bands.py): accuracy on
  # band-pass test images and LFC/HFC accuracy at every integer radius up to the corner.
  config.bands = ml_collections.ConfigDict()
  config.bands.bands = ((0, 4), (4, 8), (8, 12), (12, 16), (16, 23))  # (r1, r2) annuli
                                     # r1 <= dist < r2, frequency-index units.
  config.bands.compare = ()          # Other workdirs (same test set) scored beside this one.
  config.bands.num_images = 0        # First test images scored (0: all).
  config.bands.batch_size = 0        # Real images per batch (0: the checkpoint's
                                     # eval.batch_size, per model).

  # `--config.mode=fourier_heatmap` on trained workdirs (hfc_jax/analysis/fourier_heatmap.py):
  # Yin et al. (NeurIPS 2019): test error under clip(x + eps * s * U_ij, 0, 1) for every
  # Fourier basis image U_ij (unit L2 norm), s = +-1 per image and channel.
  config.fourier_heatmap = ml_collections.ConfigDict()
  config.fourier_heatmap.eps = ml_collections.config_dict.placeholder(float)  # L2 norm per
                                     # channel, [0, 1] units (None: 4 * H / 32, 4 at 32x32).
  config.fourier_heatmap.num_images = 1000  # First test images perturbed (0: all).
  config.fourier_heatmap.batch_size = 500  # Real images per batch (0: the run's eval.batch_size).
  config.fourier_heatmap.frequencies_per_call = 64  # Frequencies scored per jitted call.
  config.fourier_heatmap.max_radius = 0.0  # Only frequencies with |k| <= this (0: all).
  config.fourier_heatmap.seed = 0    # Signs: fold_in(fold_in(key(seed), frequency), image).
  config.fourier_heatmap.compare = ()  # Other workdirs (same test set) drawn beside this one.
  return config


# Values renamed since checkpoints were written, {dotted field: {old: new}}: `complete`
# maps the old names, so stored configs and command lines that use them still work.
RENAMED_VALUES = {"model.norm": {"batch_stats": "paper_bn"}}


def complete(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """`config` with every field it lacks taken from `get_config()`, and old names of
  values (`RENAMED_VALUES`) replaced by the current ones.

  The config's own values win, and fields the defaults do not know are kept (a later
  check names them if they are wrong). Used on every config `main` runs and on the config
  stored in a checkpoint, which lacks the fields added after it was written.
  """
  own = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return ml_collections.ConfigDict(_merged(get_config().to_dict(), current_names(own)))


def current_names(tree: dict, prefix: str = "") -> dict:
  """A copy of the config dict `tree` with old value names (`RENAMED_VALUES`) made
  current, nested sections included: the one place they are mapped, for `complete`,
  resume's comparison and report's replicate key."""
  return {k: current_names(v, f"{prefix}{k}.") if isinstance(v, dict)
          else renamed_value(f"{prefix}{k}", v) for k, v in tree.items()}


def renamed_value(field: str, value: Any) -> Any:
  """`value` of dotted `field`, or its current name if it is a renamed one."""
  names = RENAMED_VALUES.get(field, {})
  return names.get(value, value) if isinstance(value, str) else value


def _merged(base: dict, own: dict) -> dict:
  """`base` updated by `own`, nested dicts merged key by key."""
  out = dict(base)
  for key, value in own.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
      out[key] = _merged(out[key], value)
    else:
      out[key] = value
  return out


def dotted_fields(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': (1, 2)}} -> {'a.b': [1, 2]}: a config dict's fields by dotted name, each
  value as it reads back from JSON (tuples, nested too, become lists), so that a config
  compares equal to the copy stored in a checkpoint's metadata."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(dotted_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
  return out
