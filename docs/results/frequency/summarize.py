r"""The tables of docs/results.md's "Beyond the paper" section, from the analyses' outputs.

  python docs/results/frequency/summarize.py --out=docs/results/frequency/summary.json \
      MODE_DIR [MODE_DIR ...]

Each MODE_DIR is a `<workdir>/fourier_heatmap`, `<workdir>/bands` or
`<workdir>/perturbation_spectrum` directory (or a copy of one) written by `python -m hfc_jax.main
--config.mode=...`. Prints one Markdown table per analysis kind, each headed by the data
set and the commit and command in the directory's provenance.json, and writes the
numbers as JSON. Reads only those files.

- Fourier heat map: the mean test error over the frequencies (i, j) whose distance from
  the centre of the spectrum falls in each ring [0, 4), [4, 8), [8, 12), [12, 16),
  [16, corner], beside the clean error.
- Bands: the accuracy on band-pass test images, per band.
- Perturbation spectrum: the share of the perturbation's energy outside each radius for
  FGSM and PGD, beside the clean images' and that of white noise (the share of the
  spectrum's frequencies outside the radius).
"""

import argparse
import json
import os

import numpy as np

from hfc_jax import frequency
from hfc_jax.analysis import common
from hfc_jax.reporting import markdown

RINGS = ((0, 4), (4, 8), (8, 12), (12, 16), (16, None))
KINDS = {"fourier_heatmap": "heatmap.json", "bands": "bands.json",
         "perturbation_spectrum": "spectrum.json"}   # the analysis a directory holds


def _load(directory: str, name: str) -> dict:
  with open(os.path.join(directory, name), encoding="utf-8") as f:
    return json.load(f)


def _made_by(directory: str) -> str:
  path = os.path.join(directory, "provenance.json")
  if not os.path.exists(path):
    return "provenance not recorded"
  p = _load(directory, "provenance.json")
  commit = (p.get("commit") or "?")[:7] + (" (uncommitted changes)" if p.get("dirty") else "")
  return f"commit {commit}, jax {p['versions'].get('jax')}: `{p['command']}`"


def names(models: list[dict]) -> list[str]:
  """The models' names as the analyses give them (`common.display_names` of their
  workdirs), also for outputs written before the analyses did so."""
  return common.display_names([m["workdir"] for m in models])


def heatmap_rows(directory: str) -> list[dict]:
  d = _load(directory, "heatmap.json")
  models = [d] + list(d.get("compare", []))
  rows = []
  for model, name in zip(models, names(models)):
    errors = np.asarray(model["errors"], np.float64)
    dist = frequency.spectrum_distance(*errors.shape)
    ring_means = []
    for r1, r2 in RINGS:
      inside = (dist >= r1) & (dist < (r2 if r2 is not None else np.inf))
      ring_means.append(float(errors[inside].mean()))
    rows.append({"model": name,
                 "clean_error": float(model["clean_error"]), "rings": ring_means,
                 "max_error": float(errors.max())})
  return rows


def bands_rows(directory: str) -> tuple[list, list[dict]]:
  d = _load(directory, "bands.json")
  return d["bands"], [{"model": n, "clean": m["clean"], "bands": m["bands"]}
                      for m, n in zip(d["models"], names(d["models"]))]


def white_share_outside(shape, radii) -> dict[str, float]:
  """The share of a centred spectrum's frequencies at distance >= r: where white noise
  puts its energy."""
  dist = frequency.spectrum_distance(shape[0], shape[1])
  return {str(int(r)): float(np.mean(dist >= r)) for r in radii}


def spectrum_row(directory: str) -> dict:
  d = _load(directory, "spectrum.json")
  radii = [str(int(r)) for r in d["radii"]]
  row = {"workdir": d["workdir"], "clean_accuracy": d["clean_accuracy"],
         "radii": radii, "white": white_share_outside(d["shape"], d["radii"])}
  for source, values in d["sources"].items():
    row[source] = {"share_outside": values["share_outside"],
                   "accuracy": values.get("accuracy")}
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("dirs", nargs="+")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  summary = []
  for directory in args.dirs:
    kind = next((k for k, f in KINDS.items() if os.path.exists(os.path.join(directory, f))),
                None)
    print(f"\n{directory}: made by {_made_by(directory)}\n")
    if kind == "fourier_heatmap":
      rows = heatmap_rows(directory)
      header = ["model", "clean error"] + [f"[{a}, {b})" if b else f"[{a}, corner]"
                                           for a, b in RINGS]
      print(markdown.table(header, [[r["model"], f"{r['clean_error']:.3f}"]
                            + [f"{v:.3f}" for v in r["rings"]] for r in rows]))
      summary.append({"dir": directory, "kind": kind, "rows": rows})
    elif kind == "bands":
      bands, rows = bands_rows(directory)
      header = ["model", "clean"] + [f"[{a:g}, {b:g})" for a, b in bands]
      print(markdown.table(header, [[r["model"], f"{r['clean']:.3f}"]
                            + [f"{v:.3f}" for v in r["bands"]] for r in rows]))
      summary.append({"dir": directory, "kind": kind, "bands": bands, "rows": rows})
    elif kind == "perturbation_spectrum":
      row = spectrum_row(directory)
      header = ["source", "accuracy"] + [f"outside r={r}" for r in row["radii"]]
      lines = [[name, "" if row[name].get("accuracy") is None
                else f"{row[name]['accuracy']:.3f}"]
               + [f"{row[name]['share_outside'][r]:.3f}" for r in row["radii"]]
               for name in ("clean", "fgsm", "pgd") if name in row]
      lines.append(["white noise", ""] + [f"{row['white'][r]:.3f}" for r in row["radii"]])
      print(markdown.table(header, lines))
      summary.append({"dir": directory, "kind": kind, **row})
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
