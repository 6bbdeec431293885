"""PNG pictures of a run, offline (matplotlib, Agg): `python -m latentwire plots [--out plots/]`.

  <out>/curves_<stage>.png  per curriculum stage (metrics/train/<stage>_curve.csv): losses (train
                            loss, KD and CE per model, dev loss), first-token accuracy (per model,
                            dev, hint), K and the learning rate, per step
  <out>/frontier.png        per model x dataset (metrics/frontier.csv): latent F1 against its wire
                            bytes per model (log x), one point per precision, with the three text
                            baselines as reference markers (at their bytes) and dashed lines (F1)
  <out>/f1_bars.png         per dataset: F1 of text, equal-byte, M-token and the latent per model

The same data drives `dvc plots show` / `dvc plots diff main` (dvc.yaml, templates in .dvc/plots/).
Figures have fixed sizes (no tight bounding box): PANEL inches per panel at DPI.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from .io import atomic_path

DPI = 100
CURVE_SIZE = (12.0, 8.0)          # one 2 x 2 figure per stage
FRONTIER_PANEL = (4.5, 3.5)       # per model x dataset panel
BARS_PANEL = (5.0, 3.5)           # per dataset panel
TEXT = {"text": ("text", "#222222", "s"), "equal_byte": ("equal-byte", "#e6862a", "D"),
        "m_token": ("M-token", "#3b8bc2", "^")}
LATENT = {"latent_fp16": ("latent fp16", "#54278f"), "latent_int8": ("latent int8", "#756bb1"),
          "latent_int4": ("latent int4", "#9e9ac8")}
VARIANTS = list(TEXT) + list(LATENT)


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def series(rows: list[dict], col: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one curve column, skipping empty cells (dev_* only at eval steps)."""
    pts = [(num(r["step"]), num(r.get(col))) for r in rows]
    pts = [(x, y) for x, y in pts if not (math.isnan(x) or math.isnan(y))]
    return [x for x, _ in pts], [y for _, y in pts]


def new_figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    return fig


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:  # a PNG appears whole or not at all
        fig.savefig(tmp, format="png")


def plot_curves(curve_csv: Path, out: Path) -> Path:
    rows = read_csv(curve_csv)
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{curve_csv}: no step rows")
    from matplotlib.ticker import MaxNLocator

    stage = curve_csv.stem.removesuffix("_curve")
    cols = list(rows[0])
    slots = sorted({c.split("/", 1)[0] for c in cols if "/" in c})
    fig = new_figure(CURVE_SIZE)
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0][0], "loss", ["loss"] + [f"{s}/{k}" for k in ("kd", "ce") for s in slots] + ["dev_loss"]),
        (axes[0][1], "first-token accuracy", [f"{s}/first_acc" for s in slots] + ["dev_first_acc", "hint_acc"]),
        (axes[1][0], "K (answer tokens in the loss)", ["K"]),
        (axes[1][1], "learning rate", ["lr"]),
    ]
    for ax, title, wanted in panels:
        for col in (c for c in wanted if c in cols):
            xs, ys = series(rows, col)
            if not xs:
                continue
            if col.startswith("dev_"):  # validated every train.eval_every steps only
                ax.plot(xs, ys, "o--", label=col, markersize=4)
            elif col == "K":
                ax.step(xs, ys, where="post", label=col)
                ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
            else:
                ax.plot(xs, ys, label=col, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title.startswith("K"):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{stage}: training curves ({curve_csv})")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.91, bottom=0.07, hspace=0.35, wspace=0.2)
    path = out / f"curves_{stage}.png"
    save_figure(fig, path)
    return path


def log_bytes_axis(ax) -> None:
    """Log x axis with plain byte numbers at 1-2-5 steps (no overlapping 10^x labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def frontier_grid(rows: list[dict]) -> tuple[list[str], list[str]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    datasets = sorted({r["dataset"] for r in rows})
    return models, datasets


def plot_frontier(rows: list[dict], out: Path) -> Path:
    models, datasets = frontier_grid(rows)
    fig = new_figure((FRONTIER_PANEL[0] * len(datasets), FRONTIER_PANEL[1] * len(models)))
    axes = fig.subplots(len(models), len(datasets), squeeze=False)
    for i, model in enumerate(models):
        for j, ds in enumerate(datasets):
            ax = axes[i][j]
            got = {r["variant"]: (num(r["bytes"]), num(r["f1"])) for r in rows
                   if r["model"] == model and r["dataset"] == ds}
            lat = sorted((b, f, v) for v, (b, f) in got.items() if v in LATENT and not math.isnan(b))
            if lat:
                ax.plot([b for b, _, _ in lat], [f for _, f, _ in lat], "-", color=LATENT["latent_int8"][1],
                        linewidth=1, zorder=2)
                for b, f, v in lat:
                    ax.plot([b], [f], "o", color=LATENT[v][1], markersize=8, label=LATENT[v][0], zorder=3)
                    ax.annotate(v.removeprefix("latent_"), (b, f), textcoords="offset points",
                                xytext=(4, 5), fontsize=7)
            for v, (label, color, marker) in TEXT.items():
                if v not in got or math.isnan(got[v][1]):
                    continue
                b, f = got[v]
                ax.axhline(f, color=color, linestyle="--", linewidth=0.9, alpha=0.7, zorder=1)
                if not math.isnan(b) and b > 0:
                    ax.plot([b], [f], marker, color=color, markersize=7, label=label, zorder=3)
                else:  # no byte count: the line alone
                    ax.plot([], [], "--", color=color, label=f"{label} (F1 only)")
            f1s = [f for _, f in got.values() if not math.isnan(f)]
            ax.set_ylim(0, max([0.1] + f1s) * 1.15)
            if any(not math.isnan(b) and b > 0 for b, _ in got.values()):
                log_bytes_axis(ax)
            ax.set_title(f"{model} / {ds}", fontsize=10)
            ax.set_xlabel("bytes per model (log)", fontsize=8)
            ax.set_ylabel("F1", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.tick_params(labelsize=7)
    handles, labels = {}, []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    order = [t[0] for t in TEXT.values()] + [t[0] for t in LATENT.values()]
    labels.sort(key=lambda lab: next((i for i, o in enumerate(order) if lab.startswith(o)), len(order)))
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="upper center", ncol=min(len(labels), 7),
                   fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.75 / fig.get_figheight(),
                        bottom=0.55 / fig.get_figheight(), hspace=0.45, wspace=0.3)
    path = out / "frontier.png"
    save_figure(fig, path)
    return path


def plot_bars(rows: list[dict], out: Path) -> Path:
    models, datasets = frontier_grid(rows)
    fig = new_figure((BARS_PANEL[0] * len(datasets), BARS_PANEL[1]))
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    labels = {**{v: t[0] for v, t in TEXT.items()}, **{v: t[0] for v, t in LATENT.items()}}
    colors = {**{v: t[1] for v, t in TEXT.items()}, **{v: t[1] for v, t in LATENT.items()}}
    present = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    width = 0.8 / max(len(present), 1)
    for ax, ds in zip(axes, datasets):
        f1 = {(r["model"], r["variant"]): num(r["f1"]) for r in rows if r["dataset"] == ds}
        for k, v in enumerate(present):
            xs = [m + (k - (len(present) - 1) / 2) * width for m in range(len(models))]
            ys = [f1.get((model, v), math.nan) for model in models]
            ax.bar(xs, [0 if math.isnan(y) else y for y in ys], width, color=colors[v], label=labels[v])
        ax.set_xticks(range(len(models)), models)
        ax.set_title(ds)
        ax.set_ylabel("F1")
        ax.set_ylim(0, max([0.1] + [y for y in f1.values() if not math.isnan(y)]) * 1.15)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(present), fontsize=8,
               frameon=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.8, bottom=0.1, wspace=0.25)
    path = out / "f1_bars.png"
    save_figure(fig, path)
    return path


def main(train_dir: str = "metrics/train", frontier: str = "metrics/frontier.csv",
         out: str = "plots") -> list[Path]:
    curves = sorted(Path(train_dir).glob("*_curve.csv"))
    frontier_path = Path(frontier)
    if not curves and not frontier_path.is_file():
        raise ValueError(f"nothing to plot: no {train_dir}/*_curve.csv and no {frontier} "
                         "(run the pipeline: dvc repro)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_curves(c, out_dir) for c in curves]
    if frontier_path.is_file():
        rows = [r for r in read_csv(frontier_path) if r.get("variant") in VARIANTS]
        if not rows:
            raise ValueError(f"{frontier}: no rows with a known variant ({', '.join(VARIANTS)})")
        written += [plot_frontier(rows, out_dir), plot_bars(rows, out_dir)]
    else:
        print(f"plots: {frontier} not found (run the evaluate stage); curves only", file=sys.stderr)
    for p in written:
        print(p)
    return written


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="plots", help="output folder for the PNGs (default: plots/)")
    p.add_argument("--train-dir", default="metrics/train", help="folder of <stage>_curve.csv files")
    p.add_argument("--frontier", default="metrics/frontier.csv", help="written by the evaluate stage")


def run(args: argparse.Namespace) -> None:
    main(args.train_dir, args.frontier, args.out)
