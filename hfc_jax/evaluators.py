"""The per-epoch evaluators: named plug-ins that the trainer runs after every epoch,
as big_vision's `config.evals`.

`config.eval.evaluators` lists them by name; `build_scorer` (called by
`train.make_scorer`) builds each one once per run and, after every epoch, merges their
{metric name: value} dicts into the epoch's record in list order (the order of the keys
in metrics.jsonl). Registered:

  * `lfc_hfc`: clean, LFC and HFC accuracy at each of `eval.radii`, band-pass accuracy
    for each of `eval.bands`, and the clean loss, on every eval set (`test/clean`,
    `test/lfc_4`, ..., `test/loss`, `train_eval/clean`, ...): one pass
    (`evaluate.make_eval_fn`) that scores the clean images as its variant 0.
  * `clean`: clean accuracy and loss alone (`test/clean`, `test/loss`, ...), a pass
    without the frequency split, for runs that need no LFC/HFC numbers. `lfc_hfc`
    already records these, so the two are never listed together.
  * `attack`: PGD accuracy on the test set (`test/pgd`, `adversarial.robust_evaluator`),
    when adversarially training or `eval.robust_subset` asks for it; nothing otherwise.
  * `smoothness`: the first conv's roughness (`first_conv_smoothness`,
    `smoothness.first_conv_penalty`).

The default, ('lfc_hfc', 'attack', 'smoothness'), records what the trainer always has.

Adding an evaluator is one registered function of the run's `Context` that returns the
epoch-end scorer, `score(state) -> {metric name: float}` (`state.params`,
`state.model_state`: the replicated variables), or None when the run asks for no
metric from it. Build jitted functions outside `score`, so that they compile once, and
register it:

  @register("mean_logit")
  def mean_logit(ctx: Context):
    fn = jax.jit(ctx.functional.logits)
    x, _ = ctx.eval_sets["test"]
    return lambda state: {"test/mean_logit": float(fn(state.params, state.model_state,
                                                        x[:100] / 255.0).mean())}

in this module (or in any module imported before training starts); then run with
`--config.eval.evaluators="('lfc_hfc', 'mean_logit')"`. Sum over batches on
device with `evaluate.accumulate` and `evaluate.eval_batches`, as the evaluators here do.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from hfc_jax import adversarial, errors, evaluate, smoothness
from hfc_jax.models.functional import Functional

Scorer = Callable[[Any], dict[str, float]]          # state -> {metric name: value}


@dataclasses.dataclass(frozen=True)
class Context:
  """What an evaluator may use, built once per run.

  config: the run's config (`config.eval` holds the evaluation fields).
  functional: the model as pure functions (`Functional.logits` in evaluation mode).
  mesh: the data mesh; eval_sets: {prefix: (x uint8 (N, H, W, C), y int (N,))}, e.g.
  'test' and 'train_eval'; adversary: the training attack, None without `config.adv`.
  """
  config: ml_collections.ConfigDict
  functional: Functional
  mesh: Any
  eval_sets: dict[str, tuple[np.ndarray, np.ndarray]]
  adversary: adversarial.Adversary | None = None


REGISTRY: dict[str, Callable[[Context], Scorer | None]] = {}


def register(name: str):
  """Decorator: adds `make(ctx) -> score or None` to `REGISTRY` under `name`."""
  def add(make):
    REGISTRY[name] = make
    return make
  return add


def check_config(config: ml_collections.ConfigDict) -> None:
  """The `eval.evaluators` list of `config` (`check_evaluators`), for `validation`."""
  check_evaluators(config.eval)


def check_evaluators(eval_config: ml_collections.ConfigDict) -> None:
  """One-line HfcErrors for `eval.evaluators`: registered names, each once, and not both
  'clean' and 'lfc_hfc' (whose pass already scores the clean images)."""
  names = eval_config.evaluators
  allowed = ", ".join(repr(n) for n in REGISTRY)
  if isinstance(names, str) or not names:
    raise errors.HfcError(f"eval.evaluators={names!r} must be a non-empty tuple of "
                          f"evaluator names; choose from: {allowed}.")
  for name in names:
    if name not in REGISTRY:
      raise errors.HfcError(f"eval.evaluators={tuple(names)!r}: {name!r} is not an "
                            f"evaluator; choose from: {allowed}.")
  if len(set(names)) < len(names) or {"clean", "lfc_hfc"} <= set(names):
    raise errors.HfcError(f"eval.evaluators={tuple(names)!r} records a metric twice: "
                          "list each evaluator once, and 'lfc_hfc' (which includes the "
                          "clean accuracy and loss) without 'clean'.")


def build_scorer(ctx: Context) -> Scorer:
  """The epoch-end evaluation of `ctx.config.eval.evaluators`: `score(state) -> record`,
  the evaluators' metrics merged in list order. Checks the list first."""
  check_evaluators(ctx.config.eval)
  built = [(name, REGISTRY[name](ctx)) for name in ctx.config.eval.evaluators]
  scorers = [(name, score) for name, score in built if score is not None]

  def score(state) -> dict[str, float]:
    record = {}
    for name, one in scorers:
      metrics = one(state)
      if clash := sorted(set(metrics) & set(record)):
        raise errors.HfcError(f"eval.evaluators: {name!r} records {clash} again; list "
                              "evaluators whose metrics differ.")
      record.update(metrics)
    return record
  return score


# ---------------------------------------------------------------------------
# The evaluators
# ---------------------------------------------------------------------------
def variant_scorer(ctx: Context, radii: tuple[float, ...],
                   bands: tuple[tuple[float, float], ...]) -> Scorer:
  """Accuracy of the clean images and of the `radii`/`bands` variants, and the clean
  loss, on each eval set: {'<prefix>/clean', '<prefix>/lfc_4', ..., '<prefix>/loss'}."""
  ec = ctx.config.eval
  eval_fn = evaluate.make_eval_fn(ctx.functional.logits, ctx.mesh, radii=radii,
                                  bands=bands, inclusive=ec.inclusive, rescale=ec.rescale)

  def score(state) -> dict[str, float]:
    record = {}
    for prefix, (x, y) in ctx.eval_sets.items():
      scores = evaluate.variant_accuracies(eval_fn, state.params, state.model_state, x, y,
                                           mesh=ctx.mesh, batch_size=ec.batch_size,
                                           radii=radii, bands=bands)
      record.update({f"{prefix}/{k}": v for k, v in scores.items()})
    return record
  return score


@register("lfc_hfc")
def lfc_hfc(ctx: Context) -> Scorer:
  """Clean, LFC/HFC (`eval.radii`) and band (`eval.bands`) accuracy and clean loss."""
  ec = ctx.config.eval
  return variant_scorer(ctx, tuple(float(r) for r in ec.radii), evaluate.bands_of(ec))


@register("clean")
def clean(ctx: Context) -> Scorer:
  """Clean accuracy and loss on each eval set, without the frequency split."""
  return variant_scorer(ctx, (), ())


@register("attack")
def attack(ctx: Context) -> Scorer | None:
  """`test/pgd`: the per-epoch PGD accuracy (`adversarial.robust_evaluator`), or None
  when neither adversarial training nor `eval.robust_subset` asks for it."""
  test_x, test_y = ctx.eval_sets["test"]
  robust = adversarial.robust_evaluator(ctx.config, ctx.adversary, ctx.functional,
                                        ctx.mesh, test_x, test_y)
  if robust is None:
    return None
  return lambda state: {"test/pgd": robust(state.params, state.model_state)}


@register("smoothness")
def first_conv_smoothness(ctx: Context) -> Scorer:
  """`first_conv_smoothness`: `smoothness.first_conv_penalty` of the parameters."""
  del ctx
  return lambda state: {
      "first_conv_smoothness": float(smoothness.first_conv_penalty(state.params))}
