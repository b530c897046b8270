"""Tests for hfc_jax.models: shapes, exact parameter counts, norms, dropout, dtype, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hfc_jax import defaults, errors, models, optimizers, sharding, train
from hfc_jax.analysis import common
from hfc_jax.models import layers, preact_resnet
from hfc_jax.workdir import checkpointing
from hfc_jax.workdir.layout import Workdir
from tests.conftest import numpy_weights, tiny_config

# Most of this module's time is XLA compiling programs it runs a few times: they
# compile unoptimised (the `compile_bound` marker; tests/conftest.py says why).
pytestmark = pytest.mark.compile_bound

NORMS = ("none", "paper_bn", "batchnorm")


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _conv(k, c_in, c_out, bias=False):
  return k * k * c_in * c_out + (c_out if bias else 0)


def _norm(c, norm):
  return 2 * c if norm == "batchnorm" else 0


def small_cnn_params(c, k, norm, widths=(16, 32, 64, 64)):
  total = sum(_conv(3, a, b, bias=True) + _norm(b, norm)
              for a, b in zip((c,) + widths[:-1], widths))
  return total + widths[-1] * k + k


def resnet18_params(c, k, norm):
  total = _conv(3, c, 64) + _norm(64, norm)
  c_in = 64
  for stage, width in enumerate((64, 128, 256, 512)):
    for block in range(2):
      total += _conv(3, c_in, width) + _conv(3, width, width) + 2 * _norm(width, norm)
      if stage > 0 and block == 0:  # 1x1 projection shortcut + its norm
        total += _conv(1, c_in, width) + _norm(width, norm)
      c_in = width
  return total + 512 * k + k


def preact_resnet32_params(c, k, norm, widths=(16, 32, 64)):
  total, c_in = _conv(3, c, widths[0]), widths[0]
  for width in widths:
    for _ in range(5):  # norm(c_in) conv(c_in->w) norm(w) conv(w->w); option-A shortcut
      total += _norm(c_in, norm) + _conv(3, c_in, width) + _norm(width, norm)
      total += _conv(3, width, width)
      c_in = width
  return total + _norm(c_in, norm) + c_in * k + k


def plain_cnn_params(c, k, norm, size=32, cells=None, widths=(32, 32, 64, 128)):
  *convs, hidden = widths
  total = sum(_conv(3, a, b, bias=True) + _norm(b, norm)
              for a, b in zip([c] + convs[:-1], convs))
  if cells is None:
    cells = (-(-size // 4)) ** 2  # two 2x2 'SAME' max pools: 32 -> 8, 28 -> 7, 12 -> 3
  return total + cells * convs[-1] * hidden + hidden + hidden * k + k


PARAM_FORMULAS = {
    "small_cnn": small_cnn_params, "resnet18": resnet18_params,
    "preact_resnet32": preact_resnet32_params, "plain_cnn": plain_cnn_params,
    # three pools: 32 -> 4, 28 -> 4 (ceil); global average pool: 1 cell
    "plain_cnn_early_pool": lambda c, k, norm, size=32: plain_cnn_params(
        c, k, norm, cells=(-(-size // 8)) ** 2),
    "plain_cnn_gap": lambda c, k, norm, size=32: plain_cnn_params(c, k, norm, cells=1)}
FIRST_CONV_FEATURES = {"small_cnn": 16, "resnet18": 64, "preact_resnet32": 16, "plain_cnn": 32,
                       "plain_cnn_early_pool": 32, "plain_cnn_gap": 32}


def test_formulas_match_known_counts():
  assert resnet18_params(3, 10, "batchnorm") == 11_173_962
  assert preact_resnet32_params(3, 10, "none") == 461_882  # the usual "0.46M" ResNet-32
  assert small_cnn_params(3, 10, "none") == 61_162
  assert plain_cnn_params(1, 10, "none", size=28) == 430_890
  # convs 1->16->16->32 (160 + 2,320 + 4,640), 3x3x32 features -> 64 (18,496) -> 7 (455)
  assert plain_cnn_params(1, 7, "none", size=12, widths=(16, 16, 32, 64)) == 26_071


# The models of PyTorch layouts (wide_resnet, torchvision_resnet50, ...) are tested in
# models_published_test.py, which checks that every model is covered by one of the two.
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(PARAM_FORMULAS))
def test_shapes_and_param_counts(name, norm):
  # The layers models.create builds, with NumPy-drawn weights (its jax.random initialiser
  # compiles programs of its own; every training test runs it).
  for shape, classes in (((2, 32, 32, 3), 10), ((2, 28, 28, 1), 7)):
    model = numpy_weights(lambda: models.create(name, num_classes=classes,
                                                in_channels=shape[-1], norm=norm,
                                                image_size=shape[1:3]))
    logits = model(_images(shape), train=False)
    assert logits.shape == (shape[0], classes) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    params = nnx.state(model, nnx.Param)
    expected = PARAM_FORMULAS[name](shape[-1], classes, norm)
    if name.startswith("plain_cnn"):
      expected = PARAM_FORMULAS[name](shape[-1], classes, norm, size=shape[1])
    assert _count(params) == expected
    kernel = models.first_conv_kernel(params)
    assert kernel.shape == (3, 3, shape[-1], FIRST_CONV_FEATURES[name])
    assert params["first_conv"]["kernel"].shape == kernel.shape


# Widths unlike the defaults in every entry. Each distinct kernel shape costs a compile
# (of its forward pass, and a small one cutting its initial weights), so most of these
# kernels have shapes that the models of test_shapes_and_param_counts already built
# (preact_resnet32's widths may only grow: its option-A shortcut pads channels).
@pytest.mark.parametrize("name,widths", [("small_cnn", (32, 16, 32, 32)),
                                         ("plain_cnn", (16, 16, 32, 64)),
                                         ("preact_resnet32", (8, 16, 32))])
@pytest.mark.slow
def test_widths_replace_the_defaults(name, widths):
  assert all(w != d for w, d in zip(widths, models.DEFAULT_WIDTHS[name]))
  model = models.create(name, num_classes=7, in_channels=1, widths=widths,
                        image_size=(12, 12))
  logits = nnx.jit(lambda model, x: model(x, train=False))(model, _images((3, 12, 12, 1)))
  assert logits.shape == (3, 7) and np.all(np.isfinite(logits))
  assert models.first_conv_kernel(model).shape == (3, 3, 1, widths[0])
  # every entry is used where it belongs: plain_cnn's convs 1->16->16->32, then the
  # 3x3x32 features -> 64 -> 7
  kwargs = {"size": 12} if name == "plain_cnn" else {}
  expected = PARAM_FORMULAS[name](1, 7, "none", widths=widths, **kwargs)
  assert _count(nnx.state(model, nnx.Param)) == expected


def test_plain_cnn_head_is_a_dense_layer_on_the_flattened_features():
  """The head's input is the (H/4, W/4, 64) feature map flattened, for odd sizes too."""
  for size, cells in ((16, 16), (28, 49), (30, 64)):
    model = models.create("plain_cnn", num_classes=10, in_channels=1, image_size=(size, size))
    assert model.hidden.kernel.shape == (cells * 64, 128)
    assert model(_images((2, size, size, 1)), train=False).shape == (2, 10)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "plain_cnn"}, r"model.name='plain_cnn' needs the image size"),
    ({"name": "plain_cnn", "image_size": (28, 28), "widths": (8, 8)},
     r"model.widths=\(8, 8\): plain_cnn takes 4 positive integers \(default \(32, 32, 64, 128\)\)"),
    ({"name": "small_cnn", "widths": (8, 0, 8, 8)}, r"model.widths=\(8, 0, 8, 8\): small_cnn"),
    ({"name": "resnet18", "widths": (8.5, 8, 8, 8)}, r"model.widths=\(8.5, 8, 8, 8\)"),
])
def test_bad_widths_and_missing_image_size_raise(kwargs, message):
  with pytest.raises(errors.HfcError, match=message):
    models.create(num_classes=10, in_channels=1, **kwargs)


def test_first_conv_kernel_accepts_model_state_and_dict():
  model = models.create("preact_resnet32", num_classes=10, in_channels=3)
  _, params = nnx.split(model, nnx.Param)
  expected = np.asarray(model.first_conv.kernel[...])
  for source in (model, params, nnx.to_pure_dict(params)):
    np.testing.assert_array_equal(models.first_conv_kernel(source), expected)


@pytest.mark.parametrize("name", sorted(PARAM_FORMULAS))
def test_split_gives_only_params_and_batch_stats(name):
  model = nnx.eval_shape(lambda: models.create(name, num_classes=10, in_channels=3,
                                               image_size=(32, 32),
                                               norm="batchnorm", dropout=0.5))
  _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert _count(rest) == 0
  assert _count(params) == PARAM_FORMULAS[name](3, 10, "batchnorm")
  # mean/var mirror scale/bias one to one
  assert _count(stats) == _count(params) - PARAM_FORMULAS[name](3, 10, "none")


def test_paper_bn_norm_matches_numpy():
  x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 5, 5, 6)).astype(np.float32)
  mean = x.mean(axis=(0, 1, 2))
  expected = (x - mean) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3)
  norm = layers.make_norm("paper_bn", 6, rngs=nnx.Rngs(0))
  for train in (True, False):  # the paper's BN uses batch statistics in eval too
    y = np.asarray(norm(jnp.asarray(x), train=train))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
  assert _count(nnx.state(norm)) == 0


def test_batchnorm_uses_running_stats_in_eval():
  x = np.random.default_rng(2).normal(3.0, 2.0, size=(8, 4, 4, 5)).astype(np.float32)
  norm = layers.make_norm("batchnorm", 5, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(norm(jnp.asarray(x), train=False), x / np.sqrt(1 + 1e-5),
                             rtol=1e-5)
  norm(jnp.asarray(x), train=True)  # one step: ra = 0.9 * ra + 0.1 * batch
  mean = 0.1 * x.mean(axis=(0, 1, 2))
  var = 0.9 + 0.1 * x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(norm.mean[...], mean, rtol=1e-5)
  np.testing.assert_allclose(norm.var[...], var, rtol=1e-5)
  np.testing.assert_allclose(norm(jnp.asarray(x), train=False),
                             (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm,batch_independent", [
    pytest.param("batchnorm", True, marks=pytest.mark.slow), ("paper_bn", False)])
def test_model_eval_batch_dependence(norm, batch_independent):
  model = models.create("small_cnn", num_classes=10, in_channels=3, norm=norm)
  x = _images((4, 16, 16, 3), seed=3)
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  # jitted: three programs to compile instead of one per op and shape
  call = nnx.jit(lambda model, x, train: model(x, train=train), static_argnums=2)
  call(model, x, True)
  after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  if norm == "batchnorm":
    assert not np.allclose(before["first_norm"]["mean"], after["first_norm"]["mean"])
  alone, in_batch = call(model, x[:1], False), call(model, x, False)[:1]
  assert np.allclose(alone, in_batch, atol=1e-5) == batch_independent


def test_dropout_only_when_training_with_rngs():
  model = models.create("small_cnn", num_classes=10, in_channels=3, dropout=0.5)
  x = _images((4, 16, 16, 3), seed=4)
  evals = [model(x, train=False), model(x, train=False, rngs=nnx.Rngs(dropout=0))]
  np.testing.assert_array_equal(evals[0], evals[1])
  train_a = model(x, train=True, rngs=nnx.Rngs(dropout=0))
  train_b = model(x, train=True, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(train_a, evals[0]) and not np.allclose(train_a, train_b)
  with pytest.raises(ValueError):
    model(x, train=True)
  no_dropout = models.create("small_cnn", num_classes=10, in_channels=3, dropout=0.0)
  np.testing.assert_array_equal(no_dropout(x, train=True), no_dropout(x, train=False))


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_dropout_layer_equals_nnx_dropout_bit_for_bit_and_takes_a_traced_rate(rate):
  """`layers.apply_dropout`, which every model's head uses, is nnx.Dropout's computation
  (same key, mask and scaling) and also runs with the rate as a traced scalar (a
  run-parallel group's per-run rate), giving the same mask."""
  x = jnp.asarray(_images((4, 64), seed=7))   # small_cnn's head input in the test above
  want = nnx.Dropout(rate)(x, deterministic=False, rngs=nnx.Rngs(dropout=5))
  got = layers.apply_dropout(x, rate, train=True, rngs=nnx.Rngs(dropout=5))
  np.testing.assert_array_equal(got, want)
  traced = jax.jit(lambda r: layers.apply_dropout(x, r, train=True,
                                                  rngs=nnx.Rngs(dropout=5)))(
                                                      jnp.float32(rate))
  np.testing.assert_array_equal(traced == 0, want == 0)
  np.testing.assert_allclose(traced, want, rtol=1e-6)
  assert 0.2 < float(np.mean(np.asarray(want) == 0)) < 0.7


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet32"])
@pytest.mark.slow
def test_bfloat16_keeps_float32_params_and_logits(name):
  x = _images((2, 16, 16, 3), seed=5)
  ref = models.create(name, num_classes=10, in_channels=3, norm="batchnorm")
  model = models.create(name, num_classes=10, in_channels=3, norm="batchnorm",
                        dtype="bfloat16")
  assert {a.dtype for a in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype(np.float32)}
  train = nnx.jit(lambda model, x: model(x, train=True))   # one compile, not one per op
  logits = train(model, x)
  assert logits.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {np.dtype(np.float32)}
  expected = train(ref, x)
  assert not np.array_equal(logits, expected)  # really computed in bfloat16
  np.testing.assert_allclose(logits, expected, rtol=0.1, atol=0.1)
  jaxpr = str(jax.make_jaxpr(lambda v: model(v, train=False))(x))
  assert "bf16" in jaxpr


def test_input_filter_splits_the_input():
  x = _images((2, 32, 32, 3), seed=6)
  low = layers.FrequencyFilter("lowpass", 8.0)(x)
  high = layers.FrequencyFilter("highpass", 8.0)(x)
  assert low.shape == x.shape and low.dtype == jnp.float32
  np.testing.assert_allclose(low + high, x, atol=1e-5)
  assert layers.FrequencyFilter("none", 8.0)(x) is x
  kw = dict(num_classes=10, in_channels=3, input_filter="lowpass", filter_radius=8.0)
  filtered = models.create("small_cnn", **kw)
  plain = models.create("small_cnn", num_classes=10, in_channels=3)
  np.testing.assert_allclose(filtered(x, train=False), plain(low, train=False), atol=1e-5)


@pytest.mark.slow
def test_jitted_grad_step_updates_batch_stats():
  # One block per stage (the model's own constructor): the same layers, a third of the
  # program to compile.
  model = preact_resnet.PreActResNet32(num_classes=10, in_channels=3, norm="batchnorm",
                                       dropout=0.5, blocks_per_stage=1,
                                       rngs=nnx.Rngs(params=0))
  x, y = _images((4, 16, 16, 3), seed=7), jnp.arange(4)

  @nnx.jit
  def grads(model, x, y, rngs):
    def loss_fn(model, rngs):  # rngs go in as an argument, not by closure
      logits = model(x, train=True, rngs=rngs)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    return nnx.grad(loss_fn)(model, rngs)

  g = grads(model, x, y, nnx.Rngs(dropout=0))
  assert g["first_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert np.any(np.asarray(g["first_conv"]["kernel"][...]) != 0)
  assert np.any(np.asarray(model.final_norm.mean[...]) != 0)


@pytest.mark.parametrize("field,kwargs", [
    ("model.name", dict(name="vgg")),
    ("model.norm", dict(norm="layernorm")),
    ("model.input_filter", dict(input_filter="bandpass")),
    ("model.dtype", dict(dtype="float16")),
    ("model.dropout", dict(dropout=1.5)),
    ("model.filter_radius", dict(filter_radius=-1.0)),
])
def test_bad_values_raise_hfc_error(field, kwargs):
  args = dict(name="small_cnn", num_classes=10, in_channels=3) | kwargs
  with pytest.raises(errors.HfcError, match=field.replace(".", r"\.")):
    models.create(args.pop("name"), **args)


def test_create_and_check_config_refuse_with_the_same_line():
  """`models.create` (public, used without validation) and `check_config` (run by
  validation) share one check: a used input filter's radius against the image size."""
  config = defaults.get_config()
  config.model.input_filter, config.model.filter_radius = "lowpass", 40.0
  messages = []
  for build in (lambda: models.check_config(config, 32),
                lambda: models.from_config(config.model, num_classes=10, in_channels=3,
                                           image_size=(32, 32))):
    with pytest.raises(errors.HfcError) as raised:
      build()
    messages.append(str(raised.value))
  assert messages == ["model.filter_radius=40.0 is out of range; allowed: [1, 32]."] * 2


def test_from_config_of_a_checkpoint_written_before_model_widths():
  """Checkpoints written before `model.widths` existed, completed as restore does,
  build the model with its default widths."""
  old = {"name": "small_cnn", "norm": "none", "dropout": 0.0, "input_filter": "none",
         "filter_radius": 0.0, "dtype": "float32"}
  model = models.from_config(defaults.complete({"model": old}).model, num_classes=10,
                             in_channels=3, image_size=None)
  assert _count(nnx.state(model, nnx.Param)) == small_cnn_params(3, 10, "none")


def test_old_norm_name_batch_stats_builds_the_paper_bn_model():
  """'batch_stats', the old name of 'paper_bn', is accepted where a norm is read and gives
  the same model: same layers, parameters and outputs, in training and evaluation."""
  assert defaults.complete({"model": {"norm": "batch_stats"}}).model.norm == "paper_bn"
  built = {}
  for norm in ("batch_stats", "paper_bn"):
    config = defaults.get_config().model
    config.norm = norm
    built[norm] = models.from_config(config, num_classes=10, in_channels=3,
                                     image_size=(16, 16), seed=4)
  old, new = built["batch_stats"], built["paper_bn"]
  assert isinstance(old.first_norm, layers.PaperBatchNorm)
  assert layers.depends_on_batch("batch_stats") and layers.depends_on_batch("paper_bn")
  assert not layers.depends_on_batch("batchnorm")
  old_state, new_state = nnx.to_pure_dict(nnx.state(old)), nnx.to_pure_dict(nnx.state(new))
  assert jax.tree.structure(old_state) == jax.tree.structure(new_state)
  for a, b in zip(jax.tree.leaves(old_state), jax.tree.leaves(new_state)):
    np.testing.assert_array_equal(a, b)
  x = _images((4, 16, 16, 3), seed=5)
  for train in (False, True):
    np.testing.assert_array_equal(old(x, train=train), new(x, train=train))


@pytest.mark.slow
def test_checkpoint_whose_config_says_batch_stats_restores(tmp_path):
  """A checkpoint written before the rename stores model.norm='batch_stats': it restores,
  its config says 'paper_bn', and the restored model gives the saved model's logits."""
  config = tiny_config(**{"model.norm": "batch_stats"})
  mesh = sharding.make_mesh(1)
  tx = optimizers.make_optimizer(config.optim, 1, 1)
  functional, state = train.create_train_state(train.create_model(config, 10, 3, 16), tx,
                                               config.seed, mesh)
  meta = {"config": config.to_dict(), "history": [], "num_classes": 10, "channels": 3,
          "image_size": 16, "epoch_progress": {}}
  ckpt = checkpointing.Checkpointer(Workdir.of(tmp_path))
  ckpt.save(1, state, meta)
  ckpt.wait()
  assert ckpt.restore_meta(1)["config"]["model"]["norm"] == "batch_stats"
  ckpt.close()
  trained = common.restore(str(tmp_path))
  assert trained.config.model.norm == "paper_bn" and trained.step == 0
  x = _images((4, 16, 16, 3), seed=6)
  np.testing.assert_array_equal(
      trained.functional.logits(trained.params, trained.model_state, x),
      functional.logits(state.params, state.model_state, x))
