"""PNG pictures of a run, from the same vega-lite specs as `dvc plots show`:
`python -m latentwire plots [--out plots/] [--base REV]`.

For every plot that dvc.yaml declares, `dvc plots show --json` (with --base REV: `dvc plots diff
--json REV`, both revisions in one picture) gives the vega-lite spec that DVC fills from its
template in .dvc/plots/ with the data; vl-convert draws it offline as <out>/<name>.png:

  <out>/<stage>_loss.png, <stage>_first_token_acc.png, <stage>_K.png, <stage>_lr.png
                        per curriculum stage (metrics/train/<stage>_curve.csv)
  <out>/frontier.png    per model x dataset (metrics/frontier.csv): F1 against wire bytes per model
                        (log x), the latent at each precision and the three text baselines
  <out>/f1_bars.png     per model x dataset: F1 of text, equal-byte, M-token and the latent

<name> is the plot's id in dvc.yaml, or the file's stem for a plot declared by its file. vl-convert
runs vega-lite VL_VERSION and the vega that scripts/vega_offline.py inlines in the offline HTML
page (.dvc/plots/offline.html), so the PNGs and `dvc plots show` / `dvc plots diff` are one drawing.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from .io import atomic_path

VL_VERSION = "5.21"  # the templates' $schema is vega-lite v5; the HTML page inlines vega-lite 5.21.0
SCALE = 1.0          # PNG pixels per vega pixel


def png_name(plot_id: str) -> str:
    """f1_bars -> f1_bars.png; metrics/frontier.csv -> frontier.png."""
    name = plot_id if re.fullmatch(r"[\w-]+", plot_id) else Path(plot_id).stem
    return f"{name}.png"


def dvc_specs(base: str | None = None) -> tuple[dict[str, dict], list[dict]]:
    """{plot id: filled vega-lite spec} of the plots DVC could draw, and DVC's errors (missing files)."""
    args = ["diff", base] if base is not None else ["show"]
    cmd = [sys.executable, "-m", "dvc", "plots", *args, "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`dvc plots {' '.join(args)} --json` failed: {why}")
    out = json.loads(r.stdout or "{}")
    specs = {pid: e["content"] for pid, entries in (out.get("data") or {}).items()
             for e in entries if e.get("type") == "vega" and e.get("content")}
    return specs, out.get("errors") or []


def save_png(spec: dict, path: Path) -> None:
    import vl_convert

    png = vl_convert.vegalite_to_png(spec, vl_version=VL_VERSION, scale=SCALE)
    with atomic_path(path) as tmp:  # a PNG appears whole or not at all
        Path(tmp).write_bytes(png)


def main(out: str = "plots", base: str | None = None) -> list[Path]:
    specs, errors = dvc_specs(base)
    for e in errors:  # a plot whose data is missing is left out, said here
        why = "not found" if e.get("type") == "FileNotFoundError" else e.get("msg")
        print(f"plots: {e.get('name')} left out: {e.get('source')} at {e.get('rev')}: {why}", file=sys.stderr)
    if not specs:
        raise ValueError("nothing to plot: DVC found no data for any plot in dvc.yaml "
                         "(run the pipeline: dvc repro)")
    names = {pid: png_name(pid) for pid in specs}
    if len(set(names.values())) < len(names):
        raise ValueError(f"two plots would write the same PNG: {names}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for pid, spec in specs.items():
        save_png(spec, out_dir / names[pid])
        written.append(out_dir / names[pid])
        print(written[-1])
    return written


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="plots", help="output folder for the PNGs (default: plots/)")
    p.add_argument("--base", default=None, metavar="REV",
                   help="draw `dvc plots diff REV` (REV and the workspace in each picture)")


def run(args: argparse.Namespace) -> None:
    main(args.out, args.base)
