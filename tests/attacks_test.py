"""Attacks: closed-form optima on linear models, exact constraints, keys, loops, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hfc_jax import attacks, errors, models
from hfc_jax.models.functional import Functional
from tests.conftest import numpy_weights

SHAPE = (4, 4, 3)  # linear-model images
DIM = int(np.prod(SHAPE))


def _linear(w, b):
  """logits = x.reshape(N, -1) @ w + b, as a logits_fn (full float32 also on GPUs)."""
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  return lambda x: jnp.matmul(x.reshape(x.shape[0], -1), w, precision="highest") + b


def _linear_problem(n, classes, low, high, seed=0):
  """Random images uniform in [low, high], weights, zero bias and random labels."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(low, high, (n,) + SHAPE).astype(np.float32)
  w = rng.normal(size=(DIM, classes)).astype(np.float32)
  y = rng.integers(0, classes, n).astype(np.int32)
  return x, w, np.zeros(classes, np.float32), y


def _two_class_optimum(x, w, y, eps):
  """argmax of the other-minus-true margin over the eps-ball and the box: a corner."""
  direction = w[:, 1 - y] - w[:, y]  # (D, N): d(margin)/dx
  step = eps * np.sign(direction.T).reshape(x.shape)
  return np.clip(x + step, 0, 1).astype(np.float32)


def _assert_linf_feasible(adv, x, eps):
  adv, x = np.asarray(adv), np.asarray(x)
  assert adv.dtype == np.float32
  assert (adv >= 0).all() and (adv <= 1).all()
  assert (np.abs(adv - x) <= np.float32(eps)).all(), np.abs(adv - x).max() - np.float32(eps)


# ---------------------------------------------------------------------------
# (1) Closed-form optima of linear classifiers
# ---------------------------------------------------------------------------
@jax.jit
def _fgsm_and_pgd(w, b, x, y, eps):
  """FGSM and 8 steps of eps/4 of PGD on the linear model (w, b), eps traced: one
  program for every eps and image set of one shape."""
  fn = _linear(w, b)
  return (attacks.fgsm(fn, x, y, eps=eps),
          attacks.pgd_linf(fn, x, y, eps=eps, step_size=eps / 4, steps=8))


@pytest.mark.parametrize("low,high,eps", [(0.3, 0.7, 0.05), (0.0, 1.0, 0.2)])
def test_fgsm_and_pgd_reach_the_two_class_linear_optimum(low, high, eps):
  x, w, b, y = _linear_problem(32, 2, low, high)
  if low == 0.0:  # the box binds: put exact bounds and near-bound values in
    x.reshape(-1)[:40] = np.tile([0.0, 1.0, 0.05, 0.97], 10)
  expected = _two_class_optimum(x, w, y, eps)
  for adv in _fgsm_and_pgd(w, b, x, y, np.float32(eps)):
    _assert_linf_feasible(adv, x, eps)
    np.testing.assert_allclose(adv, expected, atol=1e-6)


def test_fgsm_takes_the_sign_of_the_multiclass_cross_entropy_gradient():
  x, w, b, y = _linear_problem(16, 5, 0.2, 0.8, seed=1)
  logits = x.reshape(16, -1) @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad = (p - np.eye(5)[y]) @ w.T  # d CE / dx, (N, D)
  expected = x + 0.05 * np.sign(grad).reshape(x.shape)
  adv = jax.jit(lambda x, y: attacks.fgsm(_linear(w, b), x, y, eps=0.05))(x, y)
  _assert_linf_feasible(adv, x, 0.05)
  np.testing.assert_allclose(adv, expected, atol=1e-6)


def test_pgd_l2_reaches_the_two_class_linear_optimum():
  x, w, b, y = _linear_problem(16, 2, 0.3, 0.7, seed=2)
  direction = (w[:, 1 - y] - w[:, y]).T
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  expected = x + 0.5 * direction.reshape(x.shape)
  adv = jax.jit(lambda x, y: attacks.pgd_l2(_linear(w, b), x, y, eps=0.5, step_size=0.2,
                                            steps=6))(x, y)
  np.testing.assert_allclose(adv, expected, atol=1e-5)


# ---------------------------------------------------------------------------
# (2) Exact constraints on small conv nets
# ---------------------------------------------------------------------------
def test_project_linf_is_exact_in_float32_where_plain_clipping_is_not():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)
  eps = rng.uniform(0, 0.2, 64).astype(np.float32)
  adv = x + rng.choice([-1.0, 1.0], x.shape).astype(np.float32)
  out = np.asarray(jax.jit(attacks.project_linf)(adv, x, eps))
  _assert_linf_feasible(out, x, 1)  # box only
  e = eps[:, None, None, None]
  assert (np.abs(out - x) <= e).all()
  naive = np.clip(adv, np.maximum(x - e, 0), np.minimum(x + e, 1))
  assert (np.abs(naive - x) > e).sum() > 100  # the repair is needed
  assert (out != naive).sum() == (np.abs(naive - x) > e).sum()  # and only there



def _random_cnn(norm, seed=0):
  return Functional.split(numpy_weights(lambda: models.create(
      "small_cnn", num_classes=10, in_channels=3, norm=norm), seed))


def _assert_l2_feasible(adv, x, eps):
  _assert_linf_feasible(adv, x, 1.0)
  norms = np.linalg.norm((np.asarray(adv) - x).reshape(len(x), -1), axis=1)
  assert (norms <= eps * (1 + 1e-6) + 6e-8 * np.sqrt(x[0].size)).all(), norms.max() - eps


RANDOM_START = {"none": False, "batchnorm": True, "paper_bn": True}
EPS_INF, EPS_L2 = np.float32(8 / 255), np.float32(0.3)


@functools.cache
def _attacks_on_random_cnns(norms):
  """FGSM (without a random start; else the clean images), L-inf and L2 PGD on 16
  images where the box binds, on a random CNN of each of `norms`, in one program:
  (x, {norm: (fgsm, pgd, l2)})."""
  nets = {norm: _random_cnn(norm) for norm in norms}
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
  x.reshape(-1)[::7] = 0.0
  x.reshape(-1)[3::7] = 1.0
  y = rng.integers(0, 10, 16).astype(np.int32)

  @jax.jit
  def run(variables, x, y, key):
    out = {}
    for norm, (params, state) in variables.items():
      fn = functools.partial(nets[norm][0].logits, params, state)
      random_start = RANDOM_START[norm]
      common = dict(steps=2, key=key, random_start=random_start, unroll=False)
      out[norm] = (attacks.fgsm(fn, x, y, eps=EPS_INF) if not random_start else x,
                   attacks.pgd_linf(fn, x, y, eps=EPS_INF, step_size=0.02, **common),
                   attacks.pgd_l2(fn, x, y, eps=EPS_L2, step_size=0.2, **common))
    return out

  variables = {norm: (params, state) for norm, (_, params, state) in nets.items()}
  return x, jax.device_get(run(variables, x, y, jax.random.key(0)))


@pytest.mark.parametrize("norm", [
    "none", pytest.param("batchnorm", marks=pytest.mark.slow),
    pytest.param("paper_bn", marks=pytest.mark.slow)])
@pytest.mark.compile_bound
def test_constraints_hold_to_the_last_bit_on_random_cnns(norm):
  # The two slow cases share one program.
  x, results = _attacks_on_random_cnns(("none",) if norm == "none" else
                                       ("batchnorm", "paper_bn"))
  fgsm, pgd, l2 = results[norm]
  _assert_linf_feasible(fgsm, x, EPS_INF)
  _assert_linf_feasible(pgd, x, EPS_INF)
  _assert_l2_feasible(l2, x, EPS_L2)
  on_ball = np.abs(np.asarray(pgd) - x) >= EPS_INF * (1 - 1e-5)
  assert on_ball.mean() > 0.3  # the eps-ball binds often


# ---------------------------------------------------------------------------
# (3) Randomness only from the key
# ---------------------------------------------------------------------------
_TRACES = []   # one entry per trace of _random_start_attacks


def _random_start_attacks(w, b, x, y, key, by_name=False):
  """On the linear model (w, b): L-inf PGD from a random start with 1 restart, with 3
  written out and with 3 in a fori_loop, L2 PGD, and FGSM; `by_name`: each through
  `attacks.attack`. One program (both ways, the same one) for the tests of sections
  (3), (6) and (7): every image set of one shape."""
  _TRACES.append(1)
  fn = _linear(w, b)
  if by_name:
    linf, l2 = (functools.partial(attacks.attack, name) for name in ("pgd", "pgd_l2"))
    fgsm = functools.partial(attacks.attack, "fgsm", step_size=0.01, steps=2, key=key,
                             random_start=True)
  else:
    linf, l2, fgsm = attacks.pgd_linf, attacks.pgd_l2, attacks.fgsm
  common = dict(eps=0.1, step_size=0.01, steps=2, key=key, random_start=True)
  return (linf(fn, x, y, restarts=1, **common),
          linf(fn, x, y, restarts=3, unroll=True, **common),
          linf(fn, x, y, restarts=3, unroll=False, **common),
          l2(fn, x, y, restarts=1, **common),
          fgsm(fn, x, y, eps=0.1))


_random_starts = jax.jit(_random_start_attacks, static_argnames="by_name")


@pytest.mark.compile_bound
def test_same_key_same_examples_other_key_other_examples():
  x, w, b, y = _linear_problem(64, 10, 0.2, 0.8, seed=3)
  a, again, other = (jax.device_get(_random_starts(w, b, x, y, jax.random.key(k)))
                     for k in (0, 0, 1))
  for same, repeat in zip(a, again):
    np.testing.assert_array_equal(same, repeat)
  for same, changed in zip(a[:4], other[:4]):   # the PGDs; FGSM takes no key
    assert np.abs(same - changed).max() > 1e-3
  for adv in a[:3]:
    _assert_linf_feasible(adv, x, 0.1)
  _assert_l2_feasible(a[3], x, np.float32(0.1))


@pytest.mark.slow
def test_restarts_keep_the_first_fooling_or_the_highest_loss_image():
  x, w, b, y = _linear_problem(64, 10, 0.2, 0.8, seed=6)
  one, three, three_rolled, _, _ = _random_starts(w, b, x, y, jax.random.key(0))
  np.testing.assert_array_equal(three, three_rolled)  # (6) for the restart loop
  _assert_linf_feasible(three, x, 0.1)
  outcome = jax.jit(lambda adv: (
      optax.softmax_cross_entropy_with_integer_labels(_linear(w, b)(adv), y),
      jnp.argmax(_linear(w, b)(adv), -1) != y))
  (loss1, fooled1), (loss3, fooled3) = jax.device_get((outcome(one), outcome(three)))
  assert (fooled3 >= fooled1).all() and fooled3.sum() > fooled1.sum()
  assert (fooled3 | (loss3 >= loss1)).all()
  assert (loss3[~fooled3] > loss1[~fooled3]).any()


# ---------------------------------------------------------------------------
# (4) A trained model: PGD >= FGSM >= clean, accuracy falls with eps
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
  """A small CNN trained for 25 Adam steps on 4 classes of noisy random patterns."""
  rng = np.random.default_rng(0)
  patterns = rng.uniform(0.25, 0.75, (4, 8, 8, 3))
  y = rng.integers(0, 4, 256).astype(np.int32)
  x = np.clip(patterns[y] + rng.normal(0, 0.1, (256, 8, 8, 3)), 0, 1).astype(np.float32)
  functional, params, state = Functional.split(numpy_weights(lambda: models.create(
      "small_cnn", num_classes=4, in_channels=3, norm="batchnorm")))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, state, opt_state):
    def loss_fn(params):
      logits, new_state = functional.apply(params, state, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
    (_, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state

  opt_state = tx.init(params)
  for _ in range(25):
    params, state, opt_state = step(params, state, opt_state)
  fn = jax.jit(functools.partial(functional.logits, params, state))
  x, y = x[:64], y[:64]

  @jax.jit
  def attack(eps):
    """(PGD: 8 steps of eps / 4, FGSM) at per-image eps (64,): one program for the
    tests below."""
    return (attacks.pgd_linf(fn, x, y, eps=eps, step_size=eps / 4, steps=8, unroll=False),
            attacks.fgsm(fn, x, y, eps=eps))
  return fn, x, y, attack


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_accuracy(fn, adv, y):
  logits = fn(adv)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


@pytest.mark.slow
def test_pgd_beats_fgsm_beats_clean_and_accuracy_falls_with_eps(trained):
  fn, x, y, attack = trained

  def run(eps):
    pgd, fgsm = attack(np.full(len(x), eps, np.float32))
    return _loss_and_accuracy(fn, pgd, y), _loss_and_accuracy(fn, fgsm, y)

  clean_loss, clean_acc = _loss_and_accuracy(fn, x, y)
  assert clean_acc >= 0.9
  results = {eps: jax.device_get(run(eps)) for eps in (0.0, 0.01, 0.03, 0.06)}
  (pgd_loss, _), (fgsm_loss, _) = results[0.03]
  assert pgd_loss >= fgsm_loss >= clean_loss, (pgd_loss, fgsm_loss, clean_loss)
  accuracies = [results[eps][0][1] for eps in sorted(results)]
  np.testing.assert_allclose(accuracies[0], clean_acc)
  losses = [results[eps][0][0] for eps in sorted(results)]
  assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
  assert all(a < b for a, b in zip(losses, losses[1:])), losses
  assert accuracies[-1] < clean_acc, accuracies


# ---------------------------------------------------------------------------
# (5) Minimal eps
# ---------------------------------------------------------------------------
def test_minimal_eps_of_a_linear_model_is_margin_over_l1_norm():
  x, w, b, y = _linear_problem(64, 2, 0.4, 0.6, seed=4)
  fn = _linear(w, b)
  logits = x.reshape(64, -1).astype(np.float64) @ w
  margin = logits[np.arange(64), y] - logits[np.arange(64), 1 - y]
  closed = margin / np.abs(w[:, 1] - w[:, 0]).sum()  # the box binds only past eps 0.4
  eps_max = float(np.quantile(closed[closed > 0], 0.7))
  found = np.asarray(jax.jit(functools.partial(
      attacks.minimal_linf_eps, fn, eps_max=eps_max, search_steps=16, pgd_steps=5,
      key=jax.random.key(0)))(x, y))
  assert found.dtype == np.float32 and found.shape == (64,)
  assert (closed < 0).sum() >= 8 and (closed > eps_max).sum() >= 4
  np.testing.assert_array_equal(found[closed < 0], 0.0)
  assert np.isinf(found[closed > eps_max]).all()
  mid = (closed > 0) & (closed < 0.99 * eps_max)
  assert mid.sum() >= 8
  assert (found[mid] >= closed[mid] - 1e-6).all()
  np.testing.assert_allclose(found[mid], closed[mid], atol=eps_max / 2**16 + 1e-6)


@pytest.mark.slow
def test_minimal_eps_breaks_the_cnn_and_a_tenth_less_mostly_does_not(trained):
  fn, x, y, attack = trained
  found = np.asarray(jax.jit(lambda x, y: attacks.minimal_linf_eps(
      fn, x, y, eps_max=0.2, search_steps=8, pgd_steps=8, unroll=False))(x, y))
  ok = np.isfinite(found) & (found > 0)
  assert ok.mean() > 0.8, found

  def fooled(eps):   # by 8 PGD steps of eps / 4
    return np.argmax(np.asarray(fn(attack(eps)[0])), -1) != y

  eps = np.where(ok, found, 0.0).astype(np.float32)
  assert np.asarray(fooled(eps))[ok].mean() >= 0.95
  assert np.asarray(fooled(0.9 * eps))[ok].mean() <= 0.3


# ---------------------------------------------------------------------------
# (6) Loops, (7) compile once, config and dispatch
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_unrolled_and_fori_loop_agree(trained):
  cnn, x, y, _ = trained
  pgd = functools.partial(attacks.pgd_linf, cnn, x, y, eps=0.03, step_size=0.01, steps=2)
  rolled, unrolled = jax.jit(lambda: (pgd(unroll=False), pgd(unroll=True)))()  # one program
  np.testing.assert_allclose(rolled, unrolled, atol=1e-6)


def test_jitted_attack_traces_once_for_repeated_calls():
  # A new function (JAX keeps one trace per function) under the shared one's name: its
  # program is the one the module compiled.
  run = jax.jit(functools.wraps(_random_start_attacks)(
      lambda *args: _random_start_attacks(*args)))
  before = len(_TRACES)
  for k in range(3):
    x, w, b, y = _linear_problem(64, 10, 0.2, 0.8, seed=k)
    jax.block_until_ready(run(w, b, x, y, jax.random.key(k)))
  assert len(_TRACES) - before == 1 and run._cache_size() == 1


def test_check_attack_config():
  attacks.check_attack_config("pgd", 0.03, 0.003, 10, 1)
  attacks.check_attack_config("fgsm", 0.0, 0.0, 0, 5, random_start=True)
  bad = [(("pgd_linf", 0.03, 0.003, 10, 1), "attack.name"),
         (("pgd", 1.5, 0.003, 10, 1), "attack.eps"),
         (("pgd", 0.03, -0.1, 10, 1), "attack.step_size"),
         (("pgd", 0.03, 0.003, 2.5, 1), "attack.steps"),
         (("pgd", 0.03, 0.003, -1, 1), "attack.steps"),
         (("pgd", 0.03, 0.003, 10, 0), "attack.restarts")]
  for args, field in bad:
    with pytest.raises(errors.HfcError, match=field):
      attacks.check_attack_config(*args)
  with pytest.raises(errors.HfcError, match="attack.restarts"):
    attacks.check_attack_config("pgd", 0.03, 0.003, 10, 3, random_start=False)


def test_dispatcher_matches_the_named_attacks():
  x, w, b, y = _linear_problem(64, 10, 0.2, 0.8, seed=5)
  key = jax.random.key(0)
  by_name = _random_starts(w, b, x, y, key, by_name=True)
  direct = _random_starts(w, b, x, y, key)
  for a, d in zip(by_name, direct, strict=True):
    np.testing.assert_array_equal(a, d)
  fn = _linear(w, b)
  np.testing.assert_array_equal(attacks.pgd_linf(fn, x, y, eps=0.05, step_size=0.01,
                                                 steps=0), x)
  kwargs = dict(eps=0.05, step_size=0.01, steps=3, key=key, random_start=True, restarts=1)
  with pytest.raises(errors.HfcError, match="attack.name"):
    attacks.attack("cw", fn, x, y, **kwargs)
  with pytest.raises(errors.HfcError, match="attack.restarts"):
    attacks.pgd_linf(fn, x, y, eps=0.05, step_size=0.01, steps=1, restarts=2)
