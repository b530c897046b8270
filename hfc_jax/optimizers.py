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
                           epochs: int) -> optax.Schedule:
  """Linear warm-up over `warmup_epochs`, then constant, cosine decay to 0, or a step
  decay by `decay_factor` at each fraction of training listed in `decay_at`."""
  errors.check_choice("optim.schedule", cfg.schedule, SCHEDULES)
  base = errors.check_range("optim.learning_rate", cfg.learning_rate, 0.0, None)
  total = max(steps_per_epoch * epochs, 1)
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(base)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, max(total - warmup, 1))
  else:
    bounds = {int(f * total) - warmup: cfg.decay_factor
              for f in cfg.decay_at}
    main = optax.piecewise_constant_schedule(base, bounds)
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, base, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   epochs: int) -> optax.GradientTransformation:
  """The optax chain: optional clipping, coupled L2 weight decay, the optimiser."""
  errors.check_choice("optim.name", cfg.name, OPTIMIZERS)
  lr = learning_rate_schedule(cfg, steps_per_epoch, epochs)
  momentum = cfg.momentum
  if cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=momentum or None, nesterov=cfg.nesterov)
  elif cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
  elif cfg.name == "adagrad":
    opt = optax.adagrad(lr)
  elif cfg.name == "adadelta":
    opt = optax.adadelta(lr)
  else:
    opt = optax.rmsprop(lr, momentum=cfg.rmsprop_momentum)
  chain = []
  if cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  weight_decay = errors.check_range("optim.weight_decay", cfg.weight_decay, 0.0)
  if weight_decay and cfg.name != "adamw":
    chain.append(optax.add_decayed_weights(weight_decay))
  return optax.chain(*chain, opt)
