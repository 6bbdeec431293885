"""Collect a frontier sweep's experiments (bench/frontier_sweep.sh) into a table and a plot.

    python bench/frontier_table.py --names frontier-M8 frontier-M16 ...

Reads `dvc exp show --json` (params stage3.M, metrics/eval.json of each named experiment)
and writes bench/results/frontier.json (the rows), frontier.md (the table) and frontier.png
(latent F1 at the reported precision against its wire bytes per model, with the text,
equal-byte and M-token baselines at their own bytes).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def experiments(names: list[str]) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"],
                         capture_output=True, text=True, check=True).stdout
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") in names and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(json.loads(out))
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"experiments not found in `dvc exp show`: {missing}")
    return found


def rows_of(name: str, data: dict) -> list[dict]:
    params = data["params"]["params.yaml"]["data"]
    ev = data["metrics"]["metrics/eval.json"]["data"]
    bits = {16: "fp16", 8: "int8", 4: "int4"}[ev["reported_bits"]]
    rows = []
    for slot in params["models"]:
        for ds, r in sorted(ev[slot].items()):
            if not isinstance(r, dict) or "text" not in r:
                continue
            rows.append({"exp": name, "M": params["stage3"]["M"], "model": slot, "dataset": ds, "n": r["n"],
                         "precision": bits, "wire_bytes": r["bytes"][bits]["per_model"],
                         "prompt_bytes": round(r["prompt_bytes"], 1),
                         "latent_f1": r[f"latent_{bits}"]["f1"], "text_f1": r["text"]["f1"],
                         "equal_byte_f1": r["equal_byte"]["f1"], "m_token_f1": r["m_token"]["f1"],
                         "m_token_bytes": r["m_token"].get("bytes"),
                         "distinct": r[f"latent_{bits}"]["distinct_ratio"],
                         "z_cos": r["z_pairwise_cosine"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", nargs="+", required=True, help="experiment names, one per M")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    rows = [r for name, data in experiments(args.names).items() for r in rows_of(name, data)]
    rows.sort(key=lambda r: (r["model"], r["dataset"], r["M"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(rows, indent=2) + "\n")
    cols = ["M", "model", "dataset", "n", "precision", "wire_bytes", "prompt_bytes", "latent_f1", "text_f1",
            "equal_byte_f1", "m_token_f1", "distinct", "z_cos"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    (out / "frontier.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(len(models), len(datasets), figsize=(4 * len(datasets), 3.2 * len(models)),
                             squeeze=False)
    for i, m in enumerate(models):
        for j, ds in enumerate(datasets):
            ax, rs = axes[i][j], [r for r in rows if r["model"] == m and r["dataset"] == ds]
            ax.plot([r["wire_bytes"] for r in rs], [r["latent_f1"] for r in rs], "o-", label="latent")
            ax.plot([r["wire_bytes"] for r in rs], [r["equal_byte_f1"] for r in rs], "s--", label="equal-byte text")
            ax.plot([r["m_token_bytes"] or r["wire_bytes"] for r in rs], [r["m_token_f1"] for r in rs], "^:",
                    label="M-token text")
            ax.scatter([rs[0]["prompt_bytes"]], [rs[0]["text_f1"]], marker="*", s=120, c="k", label="full text")
            for r in rs:
                ax.annotate(f"M={r['M']}", (r["wire_bytes"], r["latent_f1"]), fontsize=7)
            ax.set_xscale("log")
            ax.set_title(f"{m} / {ds}", fontsize=9)
            ax.set_xlabel("bytes per model")
            ax.set_ylabel("F1")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    print(f"wrote {out}/frontier.{{json,md,png}}")


if __name__ == "__main__":
    main()
