"""AutoAttack family (APGD-CE, APGD-T, FAB-T, Square, the ensemble): exact minimal
perturbations of linear classifiers, the exact hyperplane-and-box projection, DLR
invariances, exact constraints, keys and device counts."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from hfc_jax import attacks, errors, sharding
from hfc_jax.attacks import apgd, fab, losses

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

SHAPE = (4, 4, 1)
DIM = int(np.prod(SHAPE))
K = 10
N = 32


def _linear(w, b):
  """logits = x.reshape(N, -1) @ w + b as a logits_fn, in full float32."""
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  return lambda x: jnp.matmul(x.reshape(x.shape[0], -1), w, precision="highest") + b


@functools.cache
def _problem(seed=0, scale=10.0):
  """N images uniform in [0.3, 0.7] (the box never binds at the minimal perturbation),
  a K-class linear model (weights scaled so the softmax is confident) and its own
  predictions as labels: every image starts correctly classified."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.3, 0.7, (N,) + SHAPE).astype(np.float32)
  w = (scale * rng.normal(size=(DIM, K))).astype(np.float32)
  b = (scale * 0.1 * rng.normal(size=K)).astype(np.float32)
  logits = x.reshape(N, -1).astype(np.float64) @ w + b
  return x, w, b, logits.argmax(1).astype(np.int32), logits


def _smallest(norm, seed=0):
  """The smallest perturbation norm moving each image to any other class:
  min_j (f_y - f_j) / ||w_y - w_j||_q, q the dual norm (L1 for L-inf, L2 for L2)."""
  x, w, _, y, logits = _problem(seed)
  margin = logits[np.arange(N), y][:, None] - logits  # (N, K)
  dw = w[:, y].T[:, :, None].astype(np.float64) - w[None]  # (N, D, K)
  dual = np.abs(dw).sum(1) if norm == "linf" else np.sqrt((dw ** 2).sum(1))
  per_class = np.where(np.arange(K)[None] == y[:, None], np.inf,
                       margin / np.where(dual > 0, dual, 1))
  return per_class.min(1)


def _fooled(fn, adv, y):
  return np.asarray(jnp.argmax(fn(adv), -1) != y)


def _assert_feasible(adv, x, eps, norm):
  """The box and the eps-ball exactly (L-inf in float32), L2 up to x + delta's
  rounding, as tests/attacks_test.py asserts for PGD."""
  adv, x = np.asarray(adv), np.asarray(x)
  eps = np.broadcast_to(np.asarray(eps, np.float32), (len(x),))
  assert adv.dtype == np.float32
  assert (adv >= 0).all() and (adv <= 1).all()
  if norm == "linf":
    assert (np.abs(adv - x) <= eps[:, None, None, None]).all()
  else:
    norms = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
    assert (norms <= eps * (1 + 1e-6) + 6e-8 * np.sqrt(x[0].size)).all()


# ---------------------------------------------------------------------------
# Losses and the projection
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [10, 4, 3])
def test_dlr_losses_are_invariant_to_shift_and_positive_scale(classes):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(64, classes)).astype(np.float32) * 3
  y = rng.integers(0, classes, 64)
  t = (y + 1 + rng.integers(0, classes - 1, 64)) % classes
  for loss in (lambda z: losses.dlr(z, y), lambda z: losses.dlr_targeted(z, y, t)):
    base = np.asarray(loss(z))
    assert np.isfinite(base).all() and np.abs(base).max() > 0.1
    for a, c in ((7.5, 0.0), (0.2, -3.0), (1.0, 11.0)):
      np.testing.assert_allclose(loss(a * z + c), base, rtol=2e-4, atol=2e-5)
  # The formulas of Croce & Hein (2020), written out from the sorted logits.
  zs = -np.sort(-z.astype(np.float64), 1)
  other = np.where(np.eye(classes, dtype=bool)[y], -np.inf, z).max(1)
  zy, zt = z[np.arange(64), y], z[np.arange(64), t]
  np.testing.assert_allclose(losses.dlr(z, y), -(zy - other) / (zs[:, 0] - zs[:, 2]),
                             rtol=1e-5)
  fourth = zs[:, min(3, classes - 1)]
  np.testing.assert_allclose(losses.dlr_targeted(z, y, t),
                             -(zy - zt) / (zs[:, 0] - 0.5 * (zs[:, 2] + fourth)), rtol=1e-5)
  assert ((np.asarray(losses.dlr(z, y)) > 0) == (z.argmax(1) != y)).all()


def test_dlr_with_two_classes_is_the_margin():
  z = np.array([[1.0, 3.0], [2.0, -1.0]], np.float32)
  y = np.array([0, 0])
  np.testing.assert_allclose(losses.dlr(z, y), [2.0, -3.0])
  np.testing.assert_allclose(losses.dlr_targeted(z, y, 1 - y), [2.0, -3.0])


def test_target_classes_are_the_highest_other_logits():
  z = np.array([[0.0, 5.0, 3.0, 4.0], [9.0, 1.0, 2.0, 3.0]], np.float32)
  np.testing.assert_array_equal(losses.target_classes(z, np.array([1, 3]), 3),
                                [[3, 2, 0], [0, 2, 1]])


def _brute_force_l2(x, w, b):
  """min ||d||_2 s.t. w.(x + d) + b = 0, 0 <= x + d <= 1, by enumerating which
  coordinates sit at a bound (the rest move along w); None when infeasible."""
  c, lo, hi = -(w @ x + b), -x, 1 - x
  best = None
  for assign in itertools.product(range(3), repeat=len(x)):
    a = np.array(assign)
    d = np.where(a == 1, lo, np.where(a == 2, hi, 0.0))
    free = a == 0
    rest, ww = c - w[~free] @ d[~free], w[free] @ w[free]
    if ww == 0:
      if abs(rest) > 1e-12:
        continue
    else:
      d[free] = rest / ww * w[free]
    if (d >= lo - 1e-12).all() and (d <= hi + 1e-12).all():
      if best is None or np.linalg.norm(d) < np.linalg.norm(best):
        best = d
  return best


def test_hyperplane_box_projection_is_exact():
  rng = np.random.default_rng(0)
  n, d = 120, 5
  x = rng.uniform(0, 1, (n, d))
  x[::3, 0] = 0.0  # points on the box's faces
  x[1::3, 1] = 1.0
  w = rng.normal(size=(n, d)) * (rng.uniform(size=(n, d)) < 0.85)  # some w_i = 0
  b = 1.5 * rng.normal(size=n)
  xf, wf, bf = (np.float32(a) for a in (x, w, b))
  project = jax.jit(fab.project_hyperplane_box, static_argnums=3)   # one compile per norm
  z = {p: np.asarray(project(xf, wf, bf, p), np.float64) for p in ("linf", "l2")}
  feasible = 0
  for i in range(n):
    c = -(w[i] @ x[i] + b[i])
    # L-inf as a linear program in (d, r): min r, -r <= d <= r, w.d = c, box bounds.
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    lp = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d),
                          A_eq=np.r_[w[i], 0.0][None], b_eq=[c],
                          bounds=[(-xi, 1 - xi) for xi in x[i]] + [(0, None)])
    l2 = _brute_force_l2(x[i], w[i], b[i])
    assert (lp.status == 0) == (l2 is not None)
    if l2 is None:  # the hyperplane misses the box: the corner closest to it
      corner = np.where(np.sign(c) * w[i] > 0, 1.0, np.where(np.sign(c) * w[i] < 0, 0.0,
                                                             x[i]))
      for p in z:
        np.testing.assert_allclose(z[p][i], corner, atol=1e-6)
      continue
    feasible += 1
    for p in z:
      assert abs(w[i] @ z[p][i] + b[i]) < 1e-5  # on the hyperplane
    np.testing.assert_allclose(np.abs(z["linf"][i] - x[i]).max(), lp.fun, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(z["l2"][i] - x[i], l2, atol=1e-5)
  assert feasible >= 40 and n - feasible >= 20
  for p in z:
    assert (z[p] >= 0).all() and (z[p] <= 1).all()


def test_apgd_checkpoints():
  assert apgd.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
  assert apgd.checkpoints(25) == (6, 11, 15, 18, 20, 22, 24)
  assert apgd.checkpoints(1) == ()


# ---------------------------------------------------------------------------
# Linear classifiers: every attack against the exact minimal perturbation
# ---------------------------------------------------------------------------
@functools.cache
def _program(norm):
  """Every attack the tests below check, on a linear model and images passed as
  arguments, in one jitted program per norm: each program pays a large fixed compile
  cost (about 4 CPU-s; an attack more adds about 0.5), so one program serves every
  test, problem and eps. Returns run(x, y, w, b, eps, eps_square, key_e, key_a) ->
  {'auto': the standard ensemble with key_e; 'apgd_ce', 'apgd_t', 'fab_t' (the
  registry's defaults) and 'square' (1,000 queries, at eps_square) with key_a;
  'fab_minimal': (adv, norms); 'small': the short runs of the constraint and key tests
  (APGD-CE with 2 restarts, APGD-T on 2 targets, FAB-T on 2 targets, both with 2
  restarts, 10 iterations each, and Square with 50 queries); for L-inf also 'fast':
  the fast ensemble through the registry, and 'pgd': 'pgd' through run_eval_attack and
  through eval_attack}."""

  def run(x, y, w, b, eps, eps_square, key_e, key_a):
    fn = _linear(w, b)
    common = dict(eps=eps, key=key_a, norm=norm)
    short = dict(common, n_iter=10, n_restarts=2)
    out = {
        "auto": attacks.auto_attack(fn, x, y, eps=eps, key=key_e, norm=norm),
        "apgd_ce": attacks.run_eval_attack("apgd_ce", fn, x, y, **common),
        "apgd_t": attacks.run_eval_attack("apgd_t", fn, x, y, **common),
        "fab_t": attacks.run_eval_attack("fab_t", fn, x, y, **common),
        "square": attacks.run_eval_attack("square", fn, x, y, eps=eps_square, key=key_a,
                                          norm=norm, n_queries=1000),
        "fab_minimal": fab.fab_minimal(fn, x, y, eps=0.1, key=key_a, norm=norm),
        "small": (attacks.apgd_attack(fn, x, y, **short),
                  attacks.apgd_targeted(fn, x, y, n_targets=2, **short),
                  attacks.fab_targeted(fn, x, y, n_targets=2, **short),
                  attacks.square_attack(fn, x, y, n_queries=50, **common))}
    if norm == "linf":
      out["fast"] = attacks.run_eval_attack("autoattack", fn, x, y, settings="fast", **common)
      out["pgd"] = (
          attacks.run_eval_attack("pgd", fn, x, y, eps=0.03, key=key_a, steps=3),
          attacks.eval_attack("pgd", fn, x, y, eps=0.03, steps=3, key=key_a))
    return out
  return jax.jit(run)


def _run_all(norm, x, y, w, b, eps, eps_square=None, key_e=1, key_a=None):
  """`_program(norm)` on numpy arrays as numpy (eps: (N,) float32; keys: ints, key_a
  None: fold_in(key(key_e), 0), the key the ensemble gives its first attack)."""
  key = jax.random.key(key_e)
  other = jax.random.fold_in(key, 0) if key_a is None else jax.random.key(key_a)
  eps = np.asarray(eps, np.float32)
  eps_square = eps if eps_square is None else np.asarray(eps_square, np.float32)
  return jax.device_get(_program(norm)(x, y, w, b, eps, eps_square, key, other))


@functools.cache
def _at(norm, scale, square_scale):
  """Every attack on `_problem()` at scale x the exact minimal norm (Square at
  square_scale x), with the default keys."""
  x, w, b, y, _ = _problem()
  smallest = _smallest(norm)
  return _run_all(norm, x, y, w, b, (scale * smallest).astype(np.float32),
                  (square_scale * smallest).astype(np.float32))


def _above(norm):
  return _at(norm, 1.01, 1.5)


def _below(norm):
  return _at(norm, 0.99, 0.99)


def _eps(norm, scale):
  return (scale * _smallest(norm)).astype(np.float32)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_apgd_finds_the_minimal_perturbation_and_nothing_below(norm):
  x, w, b, y, _ = _problem()
  fn = _linear(w, b)
  above, below = _above(norm), _below(norm)
  for name in ("apgd_t", "apgd_ce"):
    _assert_feasible(above[name], x, _eps(norm, 1.01), norm)
    _assert_feasible(below[name], x, _eps(norm, 0.99), norm)
  fooled_t, fooled_ce = (_fooled(fn, above[name], y) for name in ("apgd_t", "apgd_ce"))
  assert fooled_t.all(), fooled_t.sum()
  # Not 95%: cross-entropy is convex in x for a linear model, and at 1.01x its maximum
  # over the ball is often not the one vertex that fools (measured: 27/32 (L-inf) and
  # 26/32 (L2) for APGD-CE, 27/32 for 100-step PGD-CE; 32/32 at this scale with DLR).
  assert fooled_ce.mean() >= 0.75, fooled_ce.sum()
  for name in ("apgd_t", "apgd_ce"):
    assert not _fooled(fn, below[name], y).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_fab_finds_the_minimal_norm_within_one_percent(norm):
  x, w, b, y, _ = _problem()
  smallest = _smallest(norm)
  fn = _linear(w, b)
  adv, norms = _above(norm)["fab_minimal"]
  norms, adv = np.asarray(norms, np.float64), np.asarray(adv)
  assert _fooled(fn, adv, y).all()
  ratio = norms / smallest
  assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.01).all(), (ratio.min(), ratio.max())
  diff = (adv - x).reshape(N, -1)
  measured = np.abs(diff).max(1) if norm == "linf" else np.linalg.norm(diff, axis=1)
  np.testing.assert_allclose(norms, measured, rtol=1e-5)
  # As a check at eps: succeeds at 1.01x (within FAB's 0.5% overshoot), never at 0.99x.
  for scale, result in ((1.01, _above(norm)), (0.99, _below(norm))):
    _assert_feasible(result["fab_t"], x, _eps(norm, scale), norm)
  assert _fooled(fn, _above(norm)["fab_t"], y).all()
  assert not _fooled(fn, _below(norm)["fab_t"], y).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow   # compiles the module's attack program
def test_square_breaks_most_images_at_one_and_a_half_times_the_minimum(norm):
  x, w, b, y, _ = _problem()
  fn = _linear(w, b)
  above, below = _above(norm)["square"], _below(norm)["square"]
  _assert_feasible(above, x, _eps(norm, 1.5), norm)
  _assert_feasible(below, x, _eps(norm, 0.99), norm)
  fooled = _fooled(fn, above, y)
  assert fooled.mean() >= 0.8, fooled.sum()
  assert not _fooled(fn, below, y).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_autoattack_keeps_the_first_success_and_finds_nothing_below_the_minimum(norm):
  x, w, b, y, _ = _problem()
  fn = _linear(w, b)
  results = {1.01: _above(norm)["auto"], 0.99: _below(norm)["auto"]}
  for scale, broken in ((1.01, True), (0.99, False)):
    result = results[scale]
    _assert_feasible(result.adv, x, _eps(norm, scale), norm)
    assert set(result.fooled) == {"clean", "apgd_ce", "apgd_t", "fab_t", "square"}
    assert not result.fooled["clean"].any()
    assert (result.robust == (not broken)).all()
    np.testing.assert_array_equal(_fooled(fn, result.adv, y), ~result.robust)
  assert not any(m.any() for m in results[0.99].fooled.values())
  # At 1.01x: APGD-T and FAB-T break every image; the images APGD-CE broke keep its
  # example (the ensemble's first attack, key fold_in(key, 0)).
  result = results[1.01]
  assert result.fooled["apgd_t"].all() and result.fooled["fab_t"].all()
  by_ce = result.fooled["apgd_ce"]
  assert by_ce.mean() >= 0.75
  # APGD-CE alone (run_eval_attack's 'apgd_ce' is apgd_attack with its defaults), with
  # that key.
  ce = _above(norm)["apgd_ce"]
  np.testing.assert_allclose(result.adv[by_ce], np.asarray(ce)[by_ce], atol=1e-6)


@pytest.mark.slow
def test_fast_autoattack_and_registry():
  x, w, b, y, _ = _problem()
  fn = _linear(w, b)
  eps = _eps("linf", 1.01)
  assert attacks.AutoAttackSettings.preset("fast").attacks == ("apgd_ce", "apgd_t",
                                                               "square")
  adv = _above("linf")["fast"]
  _assert_feasible(adv, x, eps, "linf")
  assert _fooled(fn, adv, y).all()  # APGD-T breaks every image at 1.01x
  assert set(attacks.REGISTRY) == set(attacks.EVAL_ATTACKS)
  assert attacks.ATTACKS == ("fgsm", "pgd", "pgd_l2")  # training's attacks unchanged
  np.testing.assert_array_equal(*_above("linf")["pgd"])


def test_check_eval_attack_config():
  for name in attacks.EVAL_ATTACKS:
    attacks.check_eval_attack_config(name, 8 / 255, "l2" if name == "pgd_l2" else "linf")
  attacks.check_eval_attack_config("apgd_t", 1.5, "l2")  # an L2 radius may exceed 1
  bad = [(("cw", 0.03), "eval.attack"), (("apgd_ce", 0.03, "l1"), "eval.norm"),
         (("fgsm", 0.03, "l2"), "eval.norm"), (("square", 1.5), "eval.eps"),
         (("fab_t", -0.1, "l2"), "eval.eps")]
  for args, field in bad:
    with pytest.raises(errors.HfcError, match=field):
      attacks.check_eval_attack_config(*args)
  with pytest.raises(errors.HfcError, match="attack.name"):
    attacks.check_attack_config("apgd_ce", 0.03, 0.003, 10, 1)  # not for training
  with pytest.raises(errors.HfcError, match="attack.name"):
    attacks.run_eval_attack("cw", None, None, None, eps=0.1, key=None)


# ---------------------------------------------------------------------------
# Exact constraints where the box binds; keys; device counts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_constraints_hold_exactly_where_the_box_binds(norm):
  rng = np.random.default_rng(3)
  x = rng.uniform(0, 1, (N,) + SHAPE).astype(np.float32)
  x.reshape(-1)[::5] = 0.0
  x.reshape(-1)[2::5] = 1.0
  w, b = rng.normal(size=(DIM, K)).astype(np.float32), rng.normal(size=K).astype(np.float32)
  y = np.asarray(jnp.argmax(_linear(w, b)(x), -1)).astype(np.int32)
  eps = rng.uniform(0.05, 0.3, N).astype(np.float32) * (1 if norm == "linf" else 3)
  out = _run_all(norm, x, y, w, b, eps, key_e=0, key_a=0)
  for adv in (out["auto"].adv, out["apgd_ce"], out["apgd_t"], out["fab_t"], out["square"],
              *out["small"], *([out["fast"]] if norm == "linf" else [])):
    _assert_feasible(adv, x, eps, norm)
  _assert_feasible(out["fab_minimal"][0], x, np.inf, norm)   # the box only


@pytest.mark.slow
def test_same_key_same_result_other_key_other_result():
  x, w, b, y, _ = _problem()
  eps = _eps("linf", 1.01)
  a = jax.tree.leaves(_above("linf"))             # keys 1 and fold_in(key(1), 0)
  again = jax.tree.leaves(_run_all("linf", x, y, w, b, eps, _eps("linf", 1.5)))
  other = _run_all("linf", x, y, w, b, eps, _eps("linf", 1.5), key_e=2, key_a=3)
  for same, repeat in zip(a, again, strict=True):
    np.testing.assert_array_equal(same, repeat)
  apgd, _, _, square = other["small"]
  assert np.abs(_above("linf")["small"][0] - apgd).max() > 1e-3  # random starts differ
  assert np.abs(_above("linf")["small"][3] - square).max() > 1e-3


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_bits():
  """APGD-CE (L-inf) and Square (L2) of the module's program on one device, and the
  same calls sharded over 8 devices."""
  x, w, b, y, _ = _problem()
  eps_linf, eps_l2 = _eps("linf", 1.01), _eps("l2", 1.01)

  def attack(x, y, eps_linf, eps_l2, w, b, key):
    fn = _linear(w, b)
    return (attacks.apgd_attack(fn, x, y, eps=eps_linf, key=key, norm="linf", n_iter=10,
                                n_restarts=2),
            attacks.square_attack(fn, x, y, eps=eps_l2, key=key, norm="l2", n_queries=50))

  one = (_above("linf")["small"][0], _above("l2")["small"][3])
  mesh = sharding.make_mesh(8)
  args = sharding.put_batch(mesh, x, y, eps_linf, eps_l2)
  run = jax.jit(attack, out_shardings=sharding.batch_sharding(mesh))
  eight = jax.device_get(run(*args, w, b, jax.random.fold_in(jax.random.key(1), 0)))
  assert len(args[0].sharding.device_set) == 8
  for a, c in zip(one, eight, strict=True):
    np.testing.assert_array_equal(a, c)
  assert np.abs(one[1] - x).max() > 0  # the attacks did move the images


def test_square_schedule_halves_p_at_the_papers_iterations():
  """AutoAttack's Square: p_init halved after iterations 10, 50, 200, ... as counted on
  the query itself (no rescaling to the 5,000-query budget)."""
  from hfc_jax.attacks import square  # pylint: disable=g-import-not-at-top
  p = lambda i, **kw: float(square.p_schedule(i, 5000, 0.8, **kw))
  assert [p(i) for i in (0, 10, 11, 50, 51, 201, 501, 1001, 2001, 4001, 4999)] == \
      pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.00625])
  assert p(6, rescale=True) == pytest.approx(0.4)       # 6 of 5,000 is 12 of 10,000
  assert p(2001, rescale=True) == pytest.approx(0.8 / 2 ** 7)   # 4002: past 4000


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_ce_is_exact_on_a_binary_linear_model(norm):
  """With two classes the cross-entropy is a monotone function of the margin f_y - f_j,
  so maximising it over the eps-ball is finding the smallest perturbation: APGD-CE must
  break every image at 1.01x the smallest eps and none at 0.99x. (With ten classes the
  CE maximum is a softmax-weighted mix of directions and need not be the vertex that
  fools at 1.01x: 27 of 32 there, tested above.)"""
  rng = np.random.default_rng(3)
  x = rng.uniform(0.3, 0.7, (N,) + SHAPE).astype(np.float32)
  w = rng.normal(size=(DIM, 2)).astype(np.float32)
  diff = x.reshape(N, -1).astype(np.float64) @ (w[:, 0] - w[:, 1])
  b = np.asarray([0.0, np.median(diff)], np.float32)   # boundary through the data
  logits = x.reshape(N, -1).astype(np.float64) @ w + b
  y = logits.argmax(1).astype(np.int32)
  dw = (w[:, 0] - w[:, 1]).astype(np.float64)
  dual = np.abs(dw).sum() if norm == "linf" else np.sqrt((dw ** 2).sum())
  smallest = np.abs(logits[:, 0] - logits[:, 1]) / dual
  # The minimal step moves pixel i by smallest * |dw_i| / ||dw||_2 (L2) or smallest
  # (L-inf); keep the images where that stays inside the box, so it is the minimum.
  reach = smallest * (np.abs(dw).max() / dual if norm == "l2" else 1.0)
  keep = (1.01 * reach < 0.29) & (smallest > 1e-4)
  assert keep.sum() >= 16
  fn = _linear(w, b)
  attack = jax.jit(lambda x, y, eps: attacks.apgd_attack(
      fn, x, y, eps=eps, key=jax.random.key(0), norm=norm, n_iter=100))
  above = attack(x, y, jnp.asarray(1.01 * smallest, jnp.float32))
  below = attack(x, y, jnp.asarray(0.99 * smallest, jnp.float32))
  assert _fooled(fn, above, y)[keep].all()
  assert not _fooled(fn, below, y).any()
  _assert_feasible(above, x, 1.01 * smallest, norm)
