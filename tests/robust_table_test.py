"""Robust tables (`analysis.robust_table`): AutoAttack with host-side compaction, worst
case, device-count independence (compacted and batch-statistic layouts), APGD against
PGD on a trained model, and robust_eval / kernels end to end with AutoAttack."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kernels as kernels_config
from hfc_jax import defaults, errors, intervals, main, sharding
from hfc_jax.analysis import common, robust_table
from hfc_jax import data as data_lib

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

N, SHAPE, K = 40, (4, 4, 1), 10


def _linear_target(mesh, batch_size=8):
  """A K-class linear model on N images (each image scored on its own) as a Target;
  labels are its own predictions, so every image starts correct."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0.3, 0.7, (N,) + SHAPE).astype(np.float32)
  w = jnp.asarray(10 * rng.normal(size=(int(np.prod(SHAPE)), K)), jnp.float32)
  logits_fn = lambda p, s, x, mask=None: jnp.matmul(x.reshape(x.shape[0], -1), p,
                                                    precision="highest")
  y = np.asarray(jnp.argmax(logits_fn(w, None, x), -1)).astype(np.int32)
  return robust_table.Target(logits_fn, (w, {}), x, y, mesh, batch_size, False)


SETTINGS = robust_table.AttackSettings.from_config(
    {}, attacks=("pgd", "autoattack"), eps=(0.01, 0.03), pgd_steps=2, autoattack_version="fast",
    apgd_iters=2, square_queries=40, masking_images=0)


@pytest.mark.slow
def test_autoattack_compacts_and_is_the_same_on_one_and_eight_devices(monkeypatch):
  calls = []
  real = robust_table.fooled
  def spy(target, name, options, active, *args, **kwargs):
    calls.append((target.mesh.devices.size, name, int(active.sum())))
    return real(target, name, options, active, *args, **kwargs)
  monkeypatch.setattr(robust_table, "fooled", spy)
  out = {}
  for devices in (1, 8):
    target = _linear_target(sharding.make_mesh(devices))
    table, masks, _ = robust_table.attack_table(target, SETTINGS)
    out[devices] = (table, masks)
  (t1, m1), (t8, m8) = out[1], out[8]
  assert t1 == t8
  for key in m1.fooled:
    np.testing.assert_array_equal(m1.fooled[key], m8.fooled[key])
  # Each attack of the ensemble ran only on the images still robust before it.
  for eps in SETTINGS.eps:
    parts = m1.parts[eps]
    assert list(parts) == ["apgd_ce", "apgd_t", "square"]
    left = N - parts["apgd_ce"].sum()
    assert (1, "apgd_t", left) in calls
    assert (1, "square", left - parts["apgd_t"].sum()) in calls
    assert not (parts["apgd_ce"] & parts["apgd_t"]).any()
  # The eps are a few times the typical minimal perturbation: some images break.
  assert 0 < t1["attacks"]["autoattack"]["0.0300"] < 1
  # Worst case: robust only where both attacks failed, with its interval.
  for k in ("0.0100", "0.0300"):
    eps = float(k)
    broken = m1.fooled[("pgd", eps)] | m1.fooled[("autoattack", eps)]
    assert t1["worst_case"][k] == pytest.approx(np.mean(~broken))
    assert t1["worst_case"][k] <= min(t1["attacks"]["pgd"][k], t1["attacks"]["autoattack"][k])
    cell = t1["intervals"]["worst_case"][k]
    assert (cell["n"], cell["correct"]) == (N, int((~broken).sum()))
    assert (cell["low"], cell["high"]) == intervals.wilson(cell["correct"], N)


@pytest.fixture(scope="module")
def restored(tiny_trained_workdir):
  """The session's tiny paper_bn model restored on 1 and on 8 devices, and its
  first 64 test images."""
  one = common.restore(tiny_trained_workdir)
  eight = common.restore(tiny_trained_workdir, mesh=sharding.make_mesh(8))
  dataset = data_lib.load(one.config.data)
  x = dataset.x_test[:64].astype(np.float32) / 255
  return one, eight, x, dataset.y_test[:64].astype(np.int32)


# The attack budgets and batch of every table of the trained model in this module: the
# APGD test, the robust_eval run and the kernels sweep run the same programs (the eps,
# images and variants change only their arguments), so each compiles once. On the CPU
# every APGD / PGD iteration is written out: compile time grows with them.
BATCH = 32
BUDGET = {"pgd_steps": 2, "apgd_iters": 2, "square_queries": 40}


def _target(trained, x, y, mesh, batch_size=BATCH):
  assert trained.config.model.norm == "paper_bn"
  return robust_table.Target(trained.functional.logits, (trained.params, trained.model_state),
                             x, y, mesh, batch_size, True)


@pytest.mark.slow
def test_batch_statistic_models_use_fixed_batches_on_any_device_count(restored):
  """40 images in fixed batches of 32: the second holds 8 images and 24 masked padding
  rows, on one device as on eight. (BATCH and APGD-CE's budget are the robust_eval
  run's below, so the eight-device programs compile once for the module.)"""
  one, eight, x, y = restored
  settings = robust_table.AttackSettings.from_config({}, attacks=("apgd_ce",),
                                                     eps=(2 / 255,), pgd_steps=1,
                                                     apgd_iters=BUDGET["apgd_iters"],
                                                     masking_images=0)
  t1, m1, _ = robust_table.attack_table(_target(one, x[:40], y[:40], sharding.make_mesh(1)),
                                        settings)
  t8, m8, _ = robust_table.attack_table(_target(eight, x[:40], y[:40], sharding.make_mesh(8)),
                                        settings)
  np.testing.assert_array_equal(m1.correct, m8.correct)
  for key in m1.fooled:
    np.testing.assert_array_equal(m1.fooled[key], m8.fooled[key])
  assert t1["batch_dependent"] and "paper_bn" in t1["batch_note"]
  assert m1.fooled[("apgd_ce", 2 / 255)].any()
  # Another batch size is another model: the layout is part of the result.
  plan = robust_table._plan(_target(one, x[:40], y[:40], sharding.make_mesh(8)),
                            np.ones(40, bool))
  assert [(b, list(idx[[0, -1]]), rows) for b, idx, rows in plan] == [
      (0, [0, 31], 32), (1, [32, 39], 32)]


@pytest.mark.slow
def test_apgd_is_not_weaker_than_pgd_and_autoattack_is_worst(restored):
  """At eps 0.25/255 and 0.5/255, where this barely trained model keeps some images
  (measured: clean 0.41, PGD-2 0.36 and 0.27, APGD-CE-2 0.25 and 0.16 of 64; at 2/255
  every attack breaks every image and the comparison would hold trivially)."""
  _, eight, x, y = restored
  settings = robust_table.AttackSettings.from_config(
      {}, attacks=("pgd", "apgd_ce", "autoattack"), eps=(0.25 / 255, 0.5 / 255),
      autoattack_version="fast", masking_images=0, **BUDGET)
  table, masks, _ = robust_table.attack_table(_target(eight, x, y, sharding.make_mesh(8)),
                                              settings)
  assert table["clean"] > 0.1
  for k in ("0.0010", "0.0020"):
    pgd, apgd = (table["intervals"][a][k] for a in ("pgd", "apgd_ce"))
    assert 0 < pgd["accuracy"] < table["clean"], (k, pgd)   # not trivially 0
    # Same budget (2 gradient steps): APGD-CE within PGD-2's interval or better.
    assert apgd["accuracy"] <= pgd["high"], (k, apgd, pgd)
    auto = table["intervals"]["autoattack"][k]
    assert auto["accuracy"] <= min(pgd["high"], apgd["high"])
    assert table["worst_case"][k] <= min(table["attacks"][a][k] for a in settings.attacks)
  assert table["attacks"]["autoattack"]["0.0020"] < table["attacks"]["autoattack"]["0.0010"]


def _robust_config():
  config = defaults.get_config()
  config.mode = "robust_eval"
  rc = config.robust_eval
  # Budgets at a minimum: the tests check the pipeline, not the attacks' strength, and on
  # the CPU every APGD / PGD iteration is written out (compile time grows with them).
  rc.attacks, rc.eps, rc.autoattack_version = ("pgd", "autoattack"), (0.01, 0.03), "fast"
  rc.update(BUDGET)
  rc.pgd_steps = 1     # its PGD keeps its images (the defence's transfer row): no program to share
  rc.num_images, rc.batch_size, rc.masking_images = 40, BATCH, 24   # 2 fixed batches
  rc.defence_radii, rc.min_eps_search_steps, rc.min_eps_pgd_steps = (), 1, 1
  return config


@pytest.fixture(scope="module")
def robust_eval_run(tiny_trained_workdir):
  """One robust_eval of the session's tiny model with AutoAttack and the low-pass defence
  at r = 32 (results, the workdir): the two tests below assert on the same run, so its
  table, checks and defence row are computed (and compiled) once. (A narrower filter,
  a model of its own, is attacked through the filter in tests/robustness_test.py.)"""
  config = _robust_config()
  config.robust_eval.defence_radii = (32,)
  return main.run(config, tiny_trained_workdir), tiny_trained_workdir


@pytest.mark.slow
def test_robust_eval_with_autoattack_writes_intervals_and_checks(robust_eval_run):
  results, tiny_trained_workdir = robust_eval_run
  out = os.path.join(tiny_trained_workdir, "robust_eval")
  on_disk = json.load(open(os.path.join(out, "robust_eval.json")))
  assert on_disk["intervals"] == json.loads(json.dumps(results["intervals"]))
  assert set(on_disk["intervals"]) == {"clean", "pgd", "autoattack", "worst_case"}
  for cells in (on_disk["intervals"]["autoattack"], on_disk["intervals"]["worst_case"]):
    for c in cells.values():
      assert c["n"] == 40 and c["low"] <= c["accuracy"] <= c["high"]
  checks = on_disk["masking_checks"]
  assert set(checks) == {"monotone", "large_eps", "square_only", "more_iterations",
                         "flagged"}
  assert checks["square_only"]["status"] in ("pass", "flag")   # fast runs Square
  assert checks["large_eps"]["attack"] == "apgd_ce" and checks["large_eps"]["n"] == 24
  assert checks["more_iterations"]["before"]["n"] == 24
  assert checks["flagged"] == [k for k in ("monotone", "large_eps", "square_only",
                                           "more_iterations") if checks[k]["status"] == "flag"]
  assert on_disk["batch_dependent"] is True
  assert set(on_disk["autoattack"]["after"]["0.0300"]) == {"apgd_ce", "apgd_t", "square"}
  table = open(os.path.join(out, "robust_eval.md")).read()
  assert "| AutoAttack (fast) | " in table and "| worst case | " in table
  assert "Note: model.norm='paper_bn'" in table and "| large_eps | " in table
  row = next(l for l in table.splitlines() if l.startswith("| worst case |"))
  k = on_disk["intervals"]["worst_case"]["0.0100"]
  assert f"{k['accuracy']:.4f} [{k['low']:.4f}, {k['high']:.4f}]" in row


@pytest.mark.slow
def test_the_low_pass_defence_is_attacked_with_autoattack_through_the_filter(
    robust_eval_run):
  """(c) runs the table's attacks through the filter. At r = 32 the filter keeps the
  whole 32x32 spectrum, so the defended model is the undefended one (up to the FFT's
  float rounding) and (c) must repeat the undefended table."""
  results, tiny_trained_workdir = robust_eval_run
  (identity,) = results["defence"]
  assert identity["radius"] == 32
  table = identity["adaptive_table"]
  assert set(table) == {"pgd", "autoattack", "worst_case"}
  for k, worst in table["worst_case"].items():
    assert worst <= min(table["pgd"][k], table["autoattack"][k])
    assert 0.0 <= worst <= identity["clean"]
  assert identity["clean"] == results["clean"]
  for name in ("pgd", "autoattack", "worst_case"):
    source = results["attacks"][name] if name != "worst_case" else results["worst_case"]
    for k, acc in source.items():
      assert abs(identity["adaptive_table"][name][k] - acc) <= 1 / 40   # one image
  table = open(os.path.join(tiny_trained_workdir, "robust_eval", "robust_eval.md")).read()
  assert "(c) adaptive: every attack of the table through the filter" in table
  row = next(l for l in table.splitlines() if l.startswith("| 32 |"))
  assert row.endswith(f"| {identity['adaptive_table']['worst_case']['0.0300']:.4f} |")


@pytest.mark.slow
def test_kernels_sweep_with_autoattack_and_the_controls(tiny_trained_workdir):
  config = kernels_config.get_config()
  kc = config.kernels
  kc.attacks, kc.eps, kc.rhos, kc.cutoffs = ("autoattack",), (0.03,), (0.0, 0.5), ()
  kc.variants = ("eq3", "eq3_renorm", "scaled")
  # The budgets, batch and masking subset of _robust_config: the same programs as the
  # robust_eval run above (the sweep changes only the parameters), so compiled once; one
  # batch of images.
  kc.autoattack_version = "fast"
  kc.update(BUDGET)
  kc.num_images, kc.batch_size, kc.masking_images = BATCH, BATCH, 24
  results = main.run(config, tiny_trained_workdir)
  rows = results["models"][0]["sweep"]
  assert [r["variant"] for r in rows] == ["eq3 rho=0", "eq3 rho=0.5", "eq3 renorm rho=0.5",
                                          "scaled rho=0.5"]
  for r in rows:
    cell = r["intervals"]["autoattack"]["0.0300"]
    assert cell["n"] == BATCH and cell["accuracy"] == r["attacks"]["autoattack"]["0.0300"]
    assert r["masking_checks"]["large_eps"]["n"] == 24
  assert results["models"][0]["batch_dependent"] is True
  table = open(os.path.join(tiny_trained_workdir, "kernels", "kernels.md")).read()
  assert "| run | scaled rho=0.5 | " in table and "AutoAttack (fast) 0.0300" in table
  assert "### Gradient-masking checks" in table and "Note (run): model.norm=" in table


@pytest.mark.parametrize("field,value,message", [
    ("attacks", ("pgd", "deepfool"), "robust_eval.attacks='deepfool' is not allowed; choose "
     "one of: 'fgsm', 'pgd', 'apgd_ce', 'apgd_t', 'fab_t', 'square', 'autoattack'."),
    ("autoattack_version", "plus", "robust_eval.autoattack_version='plus' is not allowed"),
    ("square_queries", -1, "robust_eval.square_queries=-1 is out of range"),
    ("masking_eps", 2.0, "robust_eval.masking_eps=2.0 is out of range"),
])
def test_bad_attack_fields_are_one_line(field, value, message):
  rc = defaults.get_config().robust_eval
  rc[field] = value
  with pytest.raises(errors.HfcError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")) as e:
    robust_table.check_attack_fields(rc, "robust_eval")
  assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_targeted_attack_on_the_cpu_runs_one_target_at_a_time_on_the_survivors(
    monkeypatch):
  """APGD-T with its iterations written out (the CPU): one call per target rank, each on
  the images no earlier rank broke, all through one compiled program; an image counts
  as broken if any rank broke it."""
  target = _linear_target(sharding.make_mesh(8))
  calls = []
  real = robust_table._fooled_once
  def spy(target, name, options, active, eps, key, **kwargs):
    hit, adv = real(target, name, options, active, eps, key, **kwargs)
    calls.append((kwargs.get("rank", 0), dict(options)["n_targets"], active.copy(), hit))
    return hit, adv
  monkeypatch.setattr(robust_table, "_fooled_once", spy)
  # SETTINGS' APGD-T budget: the program the AutoAttack test above compiled is reused.
  options = (("n_iter", 2), ("n_restarts", 1), ("n_targets", 3), ("unroll", True))
  active = np.ones(N, bool)
  wrong, _ = robust_table.fooled(target, "apgd_t", options, active, 0.03,
                                 jax.random.key(0))
  assert [c[:2] for c in calls] == [(0, 1), (1, 1), (2, 1)][:len(calls)]
  remaining = active.copy()
  for rank, _, ran_on, hit in calls:
    np.testing.assert_array_equal(ran_on, remaining)   # only the survivors
    assert not (hit & ~ran_on).any()
    remaining &= ~hit
  np.testing.assert_array_equal(wrong, active & ~remaining)
  assert 0 < wrong.sum() < N
  programs = [k for k in target.programs if k[0] == "apgd_t"]
  assert len(programs) == 1       # one program (rank is traced) for every target
