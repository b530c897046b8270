"""optax optimisers and learning-rate schedules, chosen by name from `config.optim`.

The paper compares SGD, Adam, AdaGrad, AdaDelta and RMSprop; its vanilla setup is
Adam at 1e-4 with a constant rate and no weight decay.
"""

import ml_collections
import optax

from hfc_jax import errors

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "adadelta", "rmsprop")
SCHEDULES = ("constant", "cosine", "step")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                           epochs: int, *, base=None) -> optax.Schedule:
  """Linear warm-up over `warmup_epochs`, then constant, cosine decay to 0, or a step
  decay by `decay_factor` at each fraction of training listed in `decay_at`.

  `base`: the peak learning rate instead of `cfg.learning_rate`; a float or a traced
  float32 scalar (one run's rate in a run-parallel group, `hfc_jax.stacked`).
  """
  base = cfg.learning_rate if base is None else base
  total = max(steps_per_epoch * epochs, 1)
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(base)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, max(total - warmup, 1))
  else:
    bounds = {}
    for f in cfg.decay_at:   # fractions on one step (equal, or a short run) decay once each
      step = int(f * total) - warmup
      bounds[step] = bounds.get(step, 1.0) * cfg.decay_factor
    main = optax.piecewise_constant_schedule(base, bounds)
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, base, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   epochs: int, *, learning_rate=None,
                   weight_decay=None) -> optax.GradientTransformation:
  """The optax chain: optional clipping, coupled L2 weight decay, the optimiser.
  Raises a one-line HfcError for a bad `cfg` field (`check_section`).

  `learning_rate`, `weight_decay`: values replacing `cfg`'s, floats or traced scalars
  (a run-parallel group's per-run settings, `hfc_jax.stacked`). Whether weight decay is
  applied at all still follows `cfg.weight_decay`, so the optimiser state has the
  structure of the run trained alone and its checkpoints stay interchangeable.
  """
  check_section(cfg, epochs)
  lr = learning_rate_schedule(cfg, steps_per_epoch, epochs, base=learning_rate)
  momentum = cfg.momentum
  if cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=momentum or None, nesterov=cfg.nesterov)
  elif cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, weight_decay=cfg.weight_decay if weight_decay is None
                      else weight_decay)
  elif cfg.name == "adagrad":
    opt = optax.adagrad(lr)
  elif cfg.name == "adadelta":
    opt = optax.adadelta(lr)
  else:
    opt = optax.rmsprop(lr, momentum=cfg.rmsprop_momentum)
  chain = []
  if cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.weight_decay and cfg.name != "adamw":
    chain.append(optax.add_decayed_weights(
        cfg.weight_decay if weight_decay is None else weight_decay))
  return optax.chain(*chain, opt)


def check_config(config: ml_collections.ConfigDict) -> None:
  """One-line HfcErrors for every optim.* field of `config` (`check_section`)."""
  check_section(config.optim, config.train.epochs)


def check_section(cfg: ml_collections.ConfigDict, epochs: int) -> None:
  """Raises a one-line HfcError naming the first bad field of the optim section `cfg`
  of a run of `epochs` epochs (meanings: hfc_jax/defaults.py). Every field is checked,
  also those the chosen optimiser or schedule ignores, so that a typo never waits for
  the run that uses it."""
  errors.check_choice("optim.name", cfg.name, OPTIMIZERS)
  errors.check_range("optim.learning_rate", cfg.learning_rate, 0.0, None, open_low=True)
  errors.check_choice("optim.schedule", cfg.schedule, SCHEDULES)
  errors.check_range("optim.warmup_epochs", cfg.warmup_epochs, 0.0, epochs, open_high=True)
  for field in ("momentum", "b1", "b2", "rmsprop_momentum"):   # decay rates of averages
    errors.check_range(f"optim.{field}", cfg[field], 0.0, 1.0, open_high=True)
  errors.check_choice("optim.nesterov", cfg.nesterov, (False, True))
  errors.check_range("optim.weight_decay", cfg.weight_decay, 0.0, None)
  errors.check_range("optim.grad_clip_norm", cfg.grad_clip_norm, 0.0, None)
  errors.check_range("optim.decay_factor", cfg.decay_factor, 0.0, 1.0, open_low=True)
  _check_decay_at(cfg, epochs)


def _check_decay_at(cfg: ml_collections.ConfigDict, epochs: int) -> None:
  """optim.decay_at: a non-decreasing tuple of fractions of training in (0, 1); with
  the 'step' schedule each must also fall after the warm-up, which ends at
  warmup_epochs / epochs (a decay inside it would apply from the warm-up's end)."""
  fractions = cfg.decay_at
  if isinstance(fractions, (tuple, list)):
    for f in fractions:
      errors.check_range("optim.decay_at", f, 0.0, 1.0, open_low=True, open_high=True)
  if not isinstance(fractions, (tuple, list)) or list(fractions) != sorted(fractions):
    raise errors.HfcError(f"optim.decay_at={fractions!r} must be a non-decreasing tuple "
                          "of fractions of training in (0, 1), e.g. (0.5, 0.75).")
  warmup = cfg.warmup_epochs / epochs
  if cfg.schedule == "step" and fractions and fractions[0] <= warmup:
    raise errors.HfcError(
        f"optim.decay_at={fractions[0]!r} falls inside the warm-up (optim.warmup_epochs="
        f"{cfg.warmup_epochs!r} of train.epochs={epochs!r}); allowed: ({warmup:g}, 1).")
