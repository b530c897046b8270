"""The paper's accuracy-vs-epoch figures, drawn from per-epoch metric records alone.

Every function here is pure: it takes the records that `metrics.jsonl` holds (one dict
per epoch, keys as `records.Recorder` writes them) and returns a new
`matplotlib.figure.Figure` on an Agg canvas. Nothing goes through `pyplot`, so no
global figure state is created and nothing needs closing; a figure is freed when its
last reference goes. `save` writes one as a PNG.

`runs` arguments are mappings from a run's name (the panel title, the legend label) to
its records, in the order the runs should be drawn. Accuracies are fractions in [0, 1];
a null (NaN) value is a gap in its curve.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from hfc_jax import fileio

SPLITS = ("test", "train_eval")
CLEAN_COLOUR = "black"
TRAIN_COLOUR = "0.55"
LFC_STYLE = "-"
HFC_STYLE = "--"
TRAIN_STYLE = ":"
DPI = 120

Records = Sequence[Mapping]


def series(records: Records, key: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (epochs, values), float64 arrays of shape (E,), for `key` over the records.

  Epochs come from each record's `epoch` (1-based); a value that is missing, null or
  not a number is NaN, so matplotlib leaves a gap there.
  """
  epochs = np.array([float(r.get("epoch", i + 1)) for i, r in enumerate(records)])
  values = np.array([_number(r.get(key)) for r in records], dtype=np.float64)
  return epochs, values


def _number(value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return math.nan
  return float(value)


def radii(records: Records, split: str = "test") -> list[str]:
  """Radius labels (as formatted in the keys, e.g. '4', '12.5') that `split` logged for
  LFC or HFC anywhere in the records, sorted by value."""
  found = set()
  for record in records:
    for key in record:
      for part in ("lfc_", "hfc_"):
        prefix = f"{split}/{part}"
        if key.startswith(prefix) and _is_float(key[len(prefix):]):
          found.add(key[len(prefix):])
  return sorted(found, key=float)


def _is_float(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def radius_colours(labels: Sequence[str]) -> dict[str, tuple]:
  """One RGBA colour per radius label, spread over viridis (small r dark, large r light)
  so the same radius has the same colour in every panel of a figure."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["viridis"]
  n = max(len(labels), 1)
  return {r: cmap(0.85 * i / max(n - 1, 1)) for i, r in enumerate(labels)}


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def panel_figure(runs: Mapping[str, Records], split: str = "test") -> Figure:
  """The paper's figure-5 layout: one panel (Axes) per run, accuracy vs epoch.

  In a panel, for every radius r the run logged (`radii(records, split)`), the
  `{split}/lfc_r` accuracy is a solid line and `{split}/hfc_r` a dashed line, both in
  r's colour (shared by all panels); `{split}/clean` is solid black; for split 'test'
  the epoch's `train_accuracy` (on the augmented training batches) is grey dotted.
  So a panel holds 2R + 2 lines for 'test' (2R + 1 otherwise). The y axis is [0, 1]; the figure
  legend names the radii and the line styles.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; choose one of {SPLITS}")
  if not runs:
    raise ValueError("panel_figure needs at least one run")
  all_radii = sorted({r for recs in runs.values() for r in radii(recs, split)}, key=float)
  colours = radius_colours(all_radii)
  ncols = min(len(runs), 4)
  nrows = math.ceil(len(runs) / ncols)
  fig = _new_figure(3.3 * ncols, 2.7 * nrows + 0.8)
  axes = fig.subplots(nrows, ncols, squeeze=False, sharex=False, sharey=True).ravel()
  for ax in axes[len(runs):]:
    fig.delaxes(ax)
  for ax, (name, recs) in zip(axes, runs.items()):
    for r in radii(recs, split):
      ax.plot(*series(recs, f"{split}/lfc_{r}"), LFC_STYLE, color=colours[r],
              label=f"LFC r={r}")
      ax.plot(*series(recs, f"{split}/hfc_{r}"), HFC_STYLE, color=colours[r],
              label=f"HFC r={r}")
    ax.plot(*series(recs, f"{split}/clean"), "-", color=CLEAN_COLOUR, lw=1.8,
            label=f"{split} clean")
    if split == "test":
      ax.plot(*series(recs, "train_accuracy"), TRAIN_STYLE, color=TRAIN_COLOUR, lw=1.8,
              label="train accuracy")
    _style_axes(ax, name)
  fig.suptitle(f"accuracy on {'test' if split == 'test' else 'training'} images: "
               "solid LFC, dashed HFC")
  fig.legend(handles=_panel_legend(colours, split), loc="outside lower center",
             ncol=min(len(all_radii) + 4, 8), fontsize="small", frameon=False)
  return fig


def _style_axes(ax, title: str) -> None:
  ax.set_title(title, fontsize="medium")
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if ax.get_subplotspec().is_first_col():
    ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)


def _panel_legend(colours: Mapping[str, tuple], split: str) -> list[Line2D]:
  """Proxy handles (not drawn in any Axes): one per radius colour, then the styles."""
  handles = [Line2D([], [], color=c, lw=3, label=f"r={r}") for r, c in colours.items()]
  handles += [Line2D([], [], color="0.3", ls=LFC_STYLE, label="LFC"),
              Line2D([], [], color="0.3", ls=HFC_STYLE, label="HFC"),
              Line2D([], [], color=CLEAN_COLOUR, label="clean")]
  if split == "test":
    handles.append(Line2D([], [], color=TRAIN_COLOUR, ls=TRAIN_STYLE, label="train"))
  return handles


def overlay_figure(runs: Mapping[str, Records], title: str = "") -> Figure:
  """Figures 4 and the optimiser sweep: one Axes, one colour per run; `test/clean` is
  solid and `train_accuracy` dashed, so the Axes holds 2 * len(runs) lines, in run
  order (test, train, test, train, ...)."""
  if not runs:
    raise ValueError("overlay_figure needs at least one run")
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["tab10"] if len(runs) <= 10 else colormaps["turbo"]
  fig = _new_figure(6.0, 4.2)
  ax = fig.subplots()
  for i, (name, recs) in enumerate(runs.items()):
    colour = cmap(i if len(runs) <= 10 else i / (len(runs) - 1))
    ax.plot(*series(recs, "test/clean"), "-", color=colour, label=f"{name} test")
    ax.plot(*series(recs, "train_accuracy"), "--", color=colour, label=f"{name} train")
  _style_axes(ax, title or "solid: clean test accuracy, dashed: train accuracy")
  ax.legend(fontsize="x-small", ncol=2 if len(runs) > 4 else 1)
  return fig


def save(fig: Figure, path: str, dpi: int = DPI) -> str:
  """Writes `fig` as a PNG at `path` (local or remote) and returns the path."""
  fileio.save_figure(fig, path, dpi=dpi, bbox_inches="tight")   # titles, legends never cut
  return path


def bands(records: Records, split: str = "test") -> list[tuple[str, str]]:
  """Band labels (r1, r2), as formatted in the keys `{split}/band_R1_R2` (e.g.
  ('0', '4'), `eval.bands`), that `split` logged anywhere in the records, sorted by
  value."""
  found = set()
  prefix = f"{split}/band_"
  for record in records:
    for key in record:
      parts = key[len(prefix):].split("_") if key.startswith(prefix) else []
      if len(parts) == 2 and all(_is_float(p) for p in parts):
        found.add(tuple(parts))
  return sorted(found, key=lambda b: (float(b[0]), float(b[1])))


def _final(records: Records, key: str) -> float:
  """The newest finite value of `key` in the records (NaN when none)."""
  values = series(records, key)[1]
  finite = values[np.isfinite(values)]
  return float(finite[-1]) if finite.size else math.nan


def band_figure(runs: Mapping[str, Records], split: str = "test") -> Figure:
  """Accuracy on band-pass images vs band at each run's last epoch: one Axes, one
  colour per run, its `{split}/band_R1_R2` accuracies as a solid line over the bands
  (x: '[r1, r2)', sorted) and its `{split}/clean` accuracy as a dotted line; a band a run
  did not log is a gap. So the Axes holds 2 * len(runs) lines (band, clean, band, ...)."""
  if not runs:
    raise ValueError("band_figure needs at least one run")
  labels = sorted({b for recs in runs.values() for b in bands(recs, split)},
                  key=lambda b: (float(b[0]), float(b[1])))
  fig = _new_figure(max(4.5, 0.9 * len(labels) + 2.0), 3.8)
  ax = fig.subplots()
  x = np.arange(len(labels))
  for i, (name, recs) in enumerate(runs.items()):
    colour = f"C{i % 10}"
    ax.plot(x, [_final(recs, f"{split}/band_{a}_{b}") for a, b in labels], "-o", ms=4,
            color=colour, label=name)
    ax.plot(x, [_final(recs, f"{split}/clean")] * len(labels), ":", color=colour,
            label=f"{name} clean")
  ax.set_xticks(x, [f"[{a}, {b})" for a, b in labels])
  ax.set_xlabel("band r1 <= dist < r2 (frequency-index units)")
  ax.set_ylabel("accuracy")
  ax.set_ylim(0.0, 1.0)
  ax.grid(alpha=0.3)
  ax.set_title(f"{split} accuracy on band-pass images, last epoch (dotted: clean)",
               fontsize="medium")
  ax.legend(fontsize="x-small", ncol=2 if len(runs) > 4 else 1)
  return fig
