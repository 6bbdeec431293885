"""Review: metrics/eval.json as one Markdown table to paste into a pull request.

    python -m latentwire report                  # the table of metrics/eval.json
    python -m latentwire report --base main      # + the deltas of `dvc metrics diff --json main`
    python -m latentwire report --worst 5        # + per model the 5 examples the latent loses most

One row per model x dataset: F1 / EM of the three text baselines and of the latent at each
precision, the wire bytes per model and text_over_wire at the reported precision (the metrics'
reported_bits = bytes.bits), tokens_over_M, and the collapse diagnostics (distinct_ratio of the
latent predictions at the reported precision, soft_pairwise_cosine). The deltas are DVC's own
(`dvc metrics diff`, workspace minus --base); revisions are never read here. Markdown goes to
stdout, so `python -m latentwire report --base main > review.md` is the whole PR comment.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from .io import read_jsonl

BASELINES = (("text", "text"), ("equal_byte", "equal-byte"), ("m_token", "M-token"),
             ("selected_text", "selected text"), ("selected_equal_byte", "selected equal-byte"))


def precisions(metrics: dict) -> dict[str, int]:
    """Precision name -> bits, as evaluate wrote them under `wire` (fp16, int8, int4)."""
    wire = metrics.get("wire") or {}
    found = {name: w["bits"] for name, w in wire.items() if isinstance(w, dict) and "bits" in w}
    return found or {"fp16": 16, "int8": 8, "int4": 4}


def precision_name(metrics: dict) -> str:
    bits = metrics.get("reported_bits", 4)
    names = {b: n for n, b in precisions(metrics).items()}
    if bits not in names:
        raise ValueError(f"reported_bits: {bits} is not one of {sorted(names)}")
    return names[bits]


def columns(precs, prec: str, present: set[str] | None = None) -> list[tuple[str, list[str], str]]:
    """(header, metric keys under <model>.<dataset>, number format) per table column; the
    baselines only where `present` (the variants found in the metrics) has them."""
    cols = [("n", ["n"], "{:.0f}")]
    cols += [(title, [f"{v}.f1", f"{v}.em"], "{:.3f}") for v, title in BASELINES
             if present is None or v in present]
    cols += [(f"latent {p}", [f"latent_{p}.f1", f"latent_{p}.em"], "{:.3f}") for p in precs]
    cols += [(f"wire B ({prec})", [f"bytes.{prec}.per_model"], "{:.0f}"),
             (f"text/wire ({prec})", [f"bytes.{prec}.text_over_wire"], "{:.2f}"),
             ("tokens/M", ["tokens_over_M"], "{:.2f}"),
             (f"distinct ({prec})", [f"latent_{prec}.distinct_ratio"], "{:.2f}"),
             ("positions text/latent", ["positions.text_over_latent"], "{:.1f}"),
             ("Z cos", ["soft_pairwise_cosine"], "{:.3f}")]
    return cols


def get(blob: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(blob, dict) or part not in blob:
            return None
        blob = blob[part]
    return blob


def model_rows(metrics: dict) -> list[tuple[str, str]]:
    """(model, dataset) pairs: the entries of eval.json that hold a `text` baseline."""
    return [(slot, ds) for slot, per in metrics.items() if isinstance(per, dict)
            for ds, res in sorted(per.items()) if isinstance(res, dict) and "text" in res]


def fmt(value, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return spec.format(value)


def fmt_delta(entry: dict | None, spec: str) -> str:
    """One `dvc metrics diff` entry ({old, new, diff}) as a signed delta."""
    if entry is None:
        return "–"
    if entry.get("old") is None:
        return "new"
    if entry.get("new") is None:
        return "gone"
    d = entry.get("diff")
    if not isinstance(d, (int, float)):
        return "n/a"
    return "+" + spec.format(d) if d >= 0 else spec.format(d)


def cell(values: list[str]) -> str:
    return " / ".join(values).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]], numeric_from: int) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in [header, align, *rows]]


def metrics_diff(base: str, metrics_path: str) -> dict[str, dict]:
    """`dvc metrics diff --json --all <base>` for the metrics file: {dotted key: {old, new, diff}}."""
    cmd = [sys.executable, "-m", "dvc", "metrics", "diff", base, "--all", "--json",
           "--targets", metrics_path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`dvc metrics diff {base}` failed: {why}")
    files = json.loads(r.stdout or "{}")
    target = Path(metrics_path)
    for name, entries in files.items():
        if Path(name) == target or Path(name).resolve() == target.resolve():
            return entries
    if len(files) == 1:
        return next(iter(files.values()))
    named = [e for n, e in files.items() if Path(n).name == target.name]
    return named[0] if len(named) == 1 else {}


def worst_examples(predictions: list[dict], slot: str, prec: str, n: int) -> list[dict]:
    """The n examples of one model with the lowest latent F1 and the highest text F1:
    sorted by latent minus text F1 (most negative first), then by latent F1."""
    lat = f"f1_latent_{prec}"
    rows = [p for p in predictions if p.get("model") == slot and lat in p and "f1_text" in p]
    return sorted(rows, key=lambda p: (p[lat] - p["f1_text"], p[lat], p["dataset"], str(p["id"])))[:n]


def short(text, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def ci_section(metrics: dict, pairs, prec: str) -> list[str]:
    """Paired bootstrap 95 % CIs of latent minus each baseline's F1 (kind ids), per model x
    dataset and pooled over datasets."""
    names = [(v, t) for v, t in BASELINES if any(get(metrics, f"{s}.{d}.ci.{v}") for s, d in pairs)]
    if not names:
        return []
    ci = lambda c: "–" if c is None else f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"  # noqa: E731
    rows = [[s, d] + [ci(get(metrics, f"{s}.{d}.ci.{v}")) for v, _ in names] for s, d in pairs]
    rows += [[s, "**pooled**"] + [ci(get(metrics, f"{s}.pooled.ci.{v}")) for v, _ in names]
             for s in dict.fromkeys(s for s, _ in pairs) if get(metrics, f"{s}.pooled.ci")]
    return ["", f"### Latent {prec} minus each baseline: F1 difference [paired bootstrap 95 % CI]", ""] + \
        table(["model", "dataset"] + [t for _, t in names], rows, 2)


def pick_section(metrics: dict) -> list[str]:
    """The share of eval questions whose gold answer lies wholly in the picked tokens, beside the
    M-token cut, the lexical prior and a random window of the same size; the share whose answer
    is in the (capped) context at all; and the share of supporting-fact sentences the pick touches."""
    picks = metrics.get("pick")
    if not picks:
        return []
    keys = ("answer_in_context", "pick_recall", "support_recall", "m_token_cut", "lexical", "random")
    rows = [[ds, f"{r['n']}", f"{r.get('M', metrics.get('M'))}"] + [fmt(r.get(k), "{:.2f}") for k in keys]
            for ds, r in sorted(picks.items())]
    return ["", "### Pick recall at M positions: gold answer wholly inside the selection, as whole words", ""] + \
        table(["dataset", "n", "M", "answer in context", "the pick", "supporting facts touched", "first M tokens",
               "lexical window", "random window"], rows, 1)


def delta_section(base: str, metrics_path: str, header: list[str], cols, pairs) -> list[str]:
    """The table of `dvc metrics diff` deltas against `base` (or a line naming it)."""
    out: list[str] = []
    diff = metrics_diff(base, metrics_path)
    out += ["", f"### Δ vs `{base}` (`dvc metrics diff {base}`: workspace − {base})", ""]
    if all(e.get("old") is None for e in diff.values()):  # DVC read nothing at base
        out += [f"`{base}` has no `{metrics_path}`: no deltas (`{base}` predates the file or "
                "never ran the evaluate stage)."]
    else:
        drows = [[slot, ds] + [cell([fmt_delta(diff.get(f"{slot}.{ds}.{k}"), spec) for k in keys])
                               for _, keys, spec in cols] for slot, ds in pairs]
        out += table(header, drows, 2)
        changed = [f"`{k}` {diff[k].get('old')} → {diff[k].get('new')}"
                   for k in ("M", "reported_bits", "equal_byte_budget")
                   if k in diff and diff[k].get("old") != diff[k].get("new")]
        current = {f"{s}.{d}." for s, d in pairs}
        gone = sorted({".".join(k.split(".")[:2]) for k, e in diff.items()
                       if e.get("new") is None and k.count(".") >= 2
                       and not any(k.startswith(c) for c in current)})
        if changed:
            out += ["", "Changed: " + ", ".join(changed) + "."]
        if gone:
            out += ["", f"Only in `{base}`: " + ", ".join(f"`{g}`" for g in gone) + "."]
    return out


def worst_section(predictions: list[dict], predictions_path: str, pairs, prec: str, worst: int) -> list[str]:
    """Per model, the `worst` examples the latent loses most against the text."""
    out: list[str] = []
    out += ["", f"### Worst latent examples ({prec}): lowest latent F1, highest text F1", ""]
    for slot in dict.fromkeys(s for s, _ in pairs):
        picked = worst_examples(predictions, slot, prec, worst)
        out += [f"#### {slot}", ""]
        if not picked:
            out += [f"No predictions of `{slot}` with both text and latent {prec} in "
                    f"`{predictions_path}`.", ""]
            continue
        wrows = [[p["dataset"], short(p["id"], 24), short(p["question"]), short(" ‖ ".join(p["answers"]), 40),
                  f"{short(p.get('pred_text', ''), 40)} ({p['f1_text']:.2f})",
                  f"{short(p.get(f'pred_latent_{prec}', ''), 40)} ({p[f'f1_latent_{prec}']:.2f})"]
                 for p in picked]
        wrows = [[c.replace("|", "\\|") for c in r] for r in wrows]
        out += table(["dataset", "id", "question", "gold", "text answer (F1)",
                      f"latent {prec} answer (F1)"], wrows, 6)
        out += [""]
    return out


def build_report(metrics_path: str = "metrics/eval.json",
                 predictions_path: str = "data/eval/predictions.jsonl",
                 base: str | None = None, worst: int = 0) -> str:
    try:
        metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{metrics_path} not found: run the pipeline first (`dvc repro`, or `make repro` "
                         "on a fresh clone); its evaluate stage writes it") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{metrics_path}: not JSON: {e}") from None
    precs, prec = precisions(metrics), precision_name(metrics)
    pairs = model_rows(metrics)
    cols = columns(precs, prec, {v for s, d in pairs for v in metrics[s][d]})
    if not pairs:
        raise ValueError(f"{metrics_path}: no model x dataset results (run the evaluate stage)")
    header = ["model", "dataset"] + [c[0] for c in cols]

    wire = metrics.get("wire", {})
    out = [f"## LatentWire eval (`{metrics_path}`)", ""]
    sizes = " / ".join(f"{p} {fmt(get(wire, f'{p}.per_model'), '{:.0f}')}" for p in precs)
    totals = " / ".join(fmt(get(wire, f"{p}.total"), "{:.0f}") for p in precs)
    out += [f"M = {metrics.get('M')} slots; reported precision **{prec}** (`bytes.bits`). "
            f"Wire bytes per model {sizes} (payload for all models {totals}). "
            "Each F1 cell is `F1 / EM`; text/wire = context bytes / payload bytes (the learned "
            "senders: prompt bytes / wire bytes per model).", ""]
    rows = [[slot, ds] + [cell([fmt(get(metrics, f"{slot}.{ds}.{k}"), spec) for k in keys])
                          for _, keys, spec in cols] for slot, ds in pairs]
    out += table(header, rows, 2)
    out += ci_section(metrics, pairs, prec) + pick_section(metrics)

    if base is not None:
        out += delta_section(base, metrics_path, header, cols, pairs)
    if worst > 0:
        out += worst_section(read_jsonl(predictions_path), predictions_path, pairs, prec, worst)
    return "\n".join(out).rstrip() + "\n"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", default="metrics/eval.json", help="eval metrics (default: metrics/eval.json)")
    p.add_argument("--predictions", default="data/eval/predictions.jsonl",
                   help="per-example predictions, for --worst (default: data/eval/predictions.jsonl)")
    p.add_argument("--base", default=None, metavar="REV",
                   help="git revision to diff against with `dvc metrics diff` (e.g. main)")
    p.add_argument("--worst", type=int, default=0, metavar="N",
                   help="per model, the N examples with the lowest latent F1 and the highest text F1")


def run(args: argparse.Namespace) -> None:
    sys.stdout.write(build_report(args.metrics, args.predictions, args.base, args.worst))
