"""The quality-vs-bytes frontier across M: one table and one plot from the metrics/eval.json of
several DVC experiments (or any git revisions), one experiment per M. The sweep itself:

    root=$(realpath ../shared/data)   # queued runs work in a temporary copy: data.root absolute
    for M in 8 16 32 64; do           # add e.g. -S evaluate.max_examples=8 for a quick sweep
      dvc exp run --queue -n frontier-M$M -S stage3.M=$M -S data.root=$root
    done
    dvc exp run --run-all
    python bench/frontier_table.py --names frontier-M8 frontier-M16 frontier-M32 frontier-M64

Writes bench/results/frontier.json (the rows), frontier.md (the table) and frontier.png (per
model x dataset: the latent's F1 against its payload bytes, beside the equal-byte and M-token
text cuts at their own bytes and the whole context as text). A row's M is the positions its
dataset got: a dataset with its own M (hotpotqa_distractor) keeps it across the sweep.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import dvc.api
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

COLUMNS = ["rev", "M", "model", "dataset", "n", "code", "wire_bytes", "context_bytes", "latent_f1", "text_f1",
           "equal_byte_f1", "m_token_f1", "distinct", "soft_cos"]


def rows_of(rev: str, ev: dict) -> list[dict]:
    """One row per model x dataset of one revision's metrics/eval.json."""
    rows = []
    for slot, per in ev.items():
        if not isinstance(per, dict):
            continue
        for ds, r in sorted(per.items()):
            if not isinstance(r, dict) or "text" not in r:
                continue  # wire, pick, a slot's embedding stats and pooled CIs
            latents = [k for k in r if k.startswith("latent_")]
            if len(latents) != 1:
                raise SystemExit(f"{rev}: {slot}/{ds} has latent variants {latents}, not one: "
                                 f"is its metrics/eval.json from `evaluate`?")
            latent = latents[0]
            code = latent.removeprefix("latent_")  # ids, or the byte encoder's precision
            rows.append({"rev": rev, "M": r["positions"]["M"], "model": slot, "dataset": ds, "n": r["n"],
                         "code": code, "wire_bytes": r["bytes"][code]["per_model"],
                         "context_bytes": r["context_bytes"], "latent_f1": r[latent]["f1"],
                         "text_f1": r["text"]["f1"], "equal_byte_f1": r["equal_byte"]["f1"],
                         "m_token_f1": r["m_token"]["f1"], "m_token_bytes": r["m_token"]["bytes"],
                         "distinct": r[latent]["distinct_ratio"], "soft_cos": r["soft_pairwise_cosine"]})
    return rows


def table(rows: list[dict]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(md) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    models = sorted({r["model"] for r in rows})
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(len(models), len(datasets), figsize=(4 * len(datasets), 3.2 * len(models)),
                             squeeze=False)
    for i, m in enumerate(models):
        for j, ds in enumerate(datasets):
            ax, rs = axes[i][j], [r for r in rows if r["model"] == m and r["dataset"] == ds]
            ax.plot([r["wire_bytes"] for r in rs], [r["latent_f1"] for r in rs], "o-", label="latent")
            ax.plot([r["wire_bytes"] for r in rs], [r["equal_byte_f1"] for r in rs], "s--", label="equal-byte text")
            ax.plot([r["m_token_bytes"] for r in rs], [r["m_token_f1"] for r in rs], "^:", label="M-token text")
            ax.scatter([rs[0]["context_bytes"]], [rs[0]["text_f1"]], marker="*", s=120, c="k", label="full text")
            for r in rs:
                ax.annotate(f"M={r['M']}", (r["wire_bytes"], r["latent_f1"]), fontsize=7)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range labels its minor ticks, overlapping
            ax.set_title(f"{m} / {ds}", fontsize=9)
            ax.set_xlabel("context bytes per model")
            ax.set_ylabel("F1")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", nargs="+", required=True, help="experiment names (or git revisions), one per M")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    rows = []
    for name in args.names:
        try:
            found = rows_of(name, dvc.api.metrics_show("metrics/eval.json", rev=name))
        except FileNotFoundError:
            raise SystemExit(f"{name}: no metrics/eval.json (has its evaluate stage run?)") from None
        if not found:
            raise SystemExit(f"{name}: no model x dataset results in its metrics/eval.json")
        rows += found
    rows.sort(key=lambda r: (r["model"], r["dataset"], r["M"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "frontier.md").write_text(table(rows))
    plot(rows, out / "frontier.png")
    print(table(rows) + f"wrote {out}/frontier.{{json,md,png}}")
    return rows


if __name__ == "__main__":
    main()
