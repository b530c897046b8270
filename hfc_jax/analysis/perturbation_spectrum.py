r"""Where adversarial perturbations live in the spectrum (`--config.mode=perturbation_spectrum`).

  python -m hfc_jax.main --config=configs/default.py --workdir=W \
      --config.mode=perturbation_spectrum

Wang et al. (CVPR 2020), section 5 argue that a model's adversarial vulnerability comes
from its use of the high-frequency component. This study measures it directly: for the
first `perturbation_spectrum.num_images` test images it crafts FGSM and PGD images with
robust_eval's attacks (`robustness.craft`: L-inf eps `perturbation_spectrum.eps`, PGD
`pgd_steps` steps of eps/4 from a random start, batch i keyed fold_in(key(seed), i),
the masked padded batches of `common.batches`), and takes the mean power spectrum of
the perturbations x_adv - x beside that of the clean images, the reference. Spectra are
`frequency.channel_power` (orthonormal FFT, zero frequency centred at (H//2, W//2)),
averaged over images, and per channel or averaged over channels. Writes to
`<workdir>/perturbation_spectrum/`:

  * `spectrum.json`: per source ('clean', then each attack) the energy (mean per-image
    sum of squares per channel = the spectrum's sum), the radial profile (mean power per
    integer radius bin k <= dist < k + 1), the share of the energy outside each radius
    of the run's `eval.radii` (the HFC's share, with the run's `eval.inclusive`
    boundary) and the share inside every integer radius 1 ... corner; per attack also
    the accuracy under it and the perturbation's L-inf / mean L2 norms.
  * `power_<source>.npy`: float32 (H, W, C) centred mean power per channel.
  * `spectrum.png`: log10 power of each source (eval.radii drawn as circles) and the
    radial profiles on a log scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from hfc_jax import errors, frequency, sharding
from hfc_jax.analysis import common, robustness
from hfc_jax.workdir.layout import Workdir

MODE = "perturbation_spectrum"
FIELD = "perturbation_spectrum"


def check_spectrum_config(sc) -> None:
  """One-line HfcErrors for the `perturbation_spectrum.*` fields."""
  if not sc.attacks:
    raise errors.HfcError(f"{FIELD}.attacks=() must name at least one attack.")
  for name in sc.attacks:
    errors.check_choice(f"{FIELD}.attacks", name, robustness.ATTACKS)
  if not 0.0 < sc.eps <= 1.0:
    raise errors.HfcError(f"{FIELD}.eps={sc.eps!r} is out of range; allowed: (0, 1].")
  errors.check_range(f"{FIELD}.pgd_steps", sc.pgd_steps, 1, None, integer=True)
  errors.check_range(f"{FIELD}.num_images", sc.num_images, 0, None, integer=True)
  errors.check_range(f"{FIELD}.batch_size", sc.batch_size, 1, None, integer=True)
  errors.check_range(f"{FIELD}.seed", sc.seed, 0, None, integer=True)


# ---------------------------------------------------------------------------
# Jitted pieces
# ---------------------------------------------------------------------------
def power_sums(x, advs, mask):
  """Per-channel centred power summed over the real rows of one batch.

  Args:
    x: (N, H, W, C) float clean images; advs: tuple of A (N, H, W, C) adversarial
      batches of x; mask: (N,) 1 real, 0 padding.

  Returns:
    float32 (1 + A, H, W, C): the clean images' power, then each x_adv - x's.
  """
  sources = jnp.stack([x] + [a - x for a in advs])
  return jnp.einsum("n,snhwc->shwc", mask.astype(jnp.float32),
                    frequency.channel_power(sources))


def perturbation_norms(x, adv):
  """Per image (N, 2): L-inf and L2 norm of adv - x over H, W, C."""
  delta = (adv - x).reshape(x.shape[0], -1)
  return jnp.stack([jnp.max(jnp.abs(delta), axis=1), jnp.linalg.norm(delta, axis=1)], 1)


def make_power_fn(mesh):
  """`power_sums` per device (`shard_map`, no gathered FFT) and summed over the mesh."""
  spec = P(sharding.DATA_AXIS)
  local = lambda x, advs, mask: jax.lax.psum(power_sums(x, advs, mask), sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec),
                               out_specs=P()))


# ---------------------------------------------------------------------------
# Summaries (host)
# ---------------------------------------------------------------------------
def summarise(power: np.ndarray, radii, inclusive: bool) -> dict:
  """The numbers of one (H, W, C) mean per-channel spectrum (see the module doc)."""
  mean = power.mean(axis=-1)
  corner = frequency.corner_radius(*mean.shape)
  outside = np.asarray(frequency.energy_share_outside(mean, radii, inclusive=inclusive))
  inside = frequency.energy_share_inside(mean, range(1, corner + 1), inclusive=inclusive)
  return {"energy": float(mean.sum()),
          "channel_energy": [float(e) for e in power.sum(axis=(0, 1))],
          "radial_profile": [float(v) for v in np.asarray(frequency.radial_profile(mean))],
          "share_outside": {f"{r:g}": float(s) for r, s in zip(radii, outside)},
          "cumulative_share_inside": [float(s) for s in np.asarray(inside)]}


def _spectra(trained, placed, settings, mesh) -> tuple[dict, dict, dict]:
  """(attack table, {source: (H, W, C) mean power}, {attack: (N, 2) norms})."""
  cache = {}
  variables = (trained.params, trained.model_state)
  table = robustness.attack_table(trained.functional.logits, variables, placed, settings,
                                  mesh, cache=cache)
  advs = [cache[(name, settings.eps[0])] for name in settings.attacks]
  power_fn = make_power_fn(mesh)
  sums = [power_fn(b[0], tuple(a[i] for a in advs), b[2]) for i, b in enumerate(placed)]
  count = sum(float(jnp.sum(b[2])) for b in placed)
  total = np.sum(jax.device_get(sums), axis=0) / max(count, 1.0)
  power = dict(zip(("clean",) + settings.attacks, total.astype(np.float32)))
  norms_fn = jax.jit(perturbation_norms, out_shardings=sharding.replicated(mesh))
  norms = {name: common.per_image(lambda x, y, m, i, a=a: norms_fn(x, a[i]), placed)
           for name, a in zip(settings.attacks, advs)}
  return table, power, norms


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def run(config, workdir: Workdir) -> dict:
  """Attacks `workdir`'s latest checkpoint, writes `<workdir>/perturbation_spectrum/`;
  returns the results."""
  sc = config.perturbation_spectrum
  check_spectrum_config(sc)
  mesh = sharding.make_mesh(config.num_devices)
  trained = common.restore(workdir, mesh=mesh)
  x, y, dataset = common.load_test_set(trained, sc.num_images, field=f"{FIELD}.num_images")
  placed = common.batches(x, y, mesh=mesh, batch_size=sc.batch_size,
                          field=f"{FIELD}.batch_size")
  settings = robustness.AttackSettings.from_config(sc, eps=(float(sc.eps),))
  table, power, norms = _spectra(trained, placed, settings, mesh)
  ec = trained.config.eval
  radii = tuple(float(r) for r in ec.radii)
  inclusive = bool(ec.inclusive)
  sources = {name: summarise(p, radii, inclusive) for name, p in power.items()}
  for name in settings.attacks:
    sources[name].update(
        accuracy=table["attacks"][name][robustness.eps_key(settings.eps[0])],
        linf_max=float(norms[name][:, 0].max()), l2_mean=float(norms[name][:, 1].mean()))
  results = {"workdir": str(workdir), "epoch": trained.epoch, "step": trained.step,
             "data": dataset.name, "num_images": int(len(x)), "eps": float(sc.eps),
             "attacks": list(settings.attacks), "pgd_steps": settings.pgd_steps,
             "seed": settings.seed, "clean_accuracy": table["clean"], "radii": list(radii),
             "inclusive": inclusive, "shape": list(x.shape[1:]),
             "corner": frequency.corner_radius(*x.shape[1:3]), "sources": sources}
  common.write_outputs(
      common.output_dir(workdir, MODE), json_files={"spectrum.json": results},
      figures={"spectrum.png": spectrum_figure(power, results)},
      arrays={f"power_{name}.npy": p for name, p in power.items()})
  return results


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def _title(name: str, results: dict) -> str:
  if name == "clean":
    return "clean images"
  attack = "FGSM" if name == "fgsm" else f"PGD-{results['pgd_steps']}"
  return f"{attack} perturbation, eps={results['eps']:.4f}"


def spectrum_figure(power: dict, results: dict) -> Figure:
  """Top row: log10 mean power (channel mean) of each source, zero frequency centred,
  the run's eval.radii as circles, each on its own colour scale; bottom: the radial
  profiles (mean power per integer radius bin), log scale, radii dotted."""
  names = list(power)
  fig = Figure(figsize=(3.4 * len(names), 6.6), layout="constrained")
  grid = fig.add_gridspec(2, len(names), height_ratios=(1.0, 0.8))
  for k, name in enumerate(names):
    mean = power[name].mean(axis=-1)
    height, width = mean.shape
    ax = fig.add_subplot(grid[0, k])
    floor = max(float(mean.max()) * 1e-12, np.finfo(np.float32).tiny)
    image = ax.imshow(np.log10(np.maximum(mean, floor)), cmap="magma", origin="upper")
    for r in results["radii"]:
      ax.add_patch(Circle((width // 2, height // 2), r, fill=False, color="cyan", lw=0.8,
                          ls="--"))
    ax.set_title(_title(name, results), fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, shrink=0.8, label="log10 power")
  ax = fig.add_subplot(grid[1, :])
  for name in names:
    profile = results["sources"][name]["radial_profile"]
    ax.semilogy(np.arange(len(profile)), profile, marker="o", ms=3,
                label=_title(name, results))
  for r in results["radii"]:
    ax.axvline(r, ls=":", color="0.6", lw=1)
  ax.set_xlabel("radius (frequency-index units; bin k: k <= dist < k + 1)")
  ax.set_ylabel("mean power")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="x-small")
  fig.suptitle(f"Power spectra, {results['num_images']} test images (circles, dotted: "
               "eval.radii)", fontsize=9)
  return fig

