"""How much does SmolLM2's trained receiver move with its training seed, its step count, and
how the pick spends M: whole-word spans (`pick.whole_words`), the span width?

    python bench/highlight_seeds.py [--slot llama] [--M 32] [--runs cut_150_seed0 ...]
                                    [--dir bench/results/highlight_llama_seeds]

Each run is one `bench/highlight.py --variants trained` (its docstring: the adapter trained with CE
on the gold answer over 8 pool train rows a step, read on 150 questions of the pick pool's held-out
tenth, never the eval mix) named <spans>_<steps>_seed<k>: spans "cut" (the default spending) or
"whole" (--whole-words), either followed by a span width (--span; "cut3": spans of 3 tokens; none:
the `pick` stage's width), <steps> steps over <steps> x 8 rows, --seed k. A run whose JSON is in --dir
already is read, not rerun (about 4 min a run at 150 steps on 2 cores, 6 at 250). Written: --dir's
JSONs and <dir>.md, the runs and their paired differences (95 % CI resampling whole titles).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import highlight  # noqa: E402
from pair_slots import contrast_table, contrasts  # noqa: E402
from pool_probe import split  # noqa: E402
from latentwire.io import read_jsonl, write_text  # noqa: E402

RUNS = ("cut_150_seed0", "cut_150_seed1", "cut_150_seed2", "cut_250_seed0", "cut_250_seed1",
        "whole_150_seed0", "whole_150_seed1", "whole_150_seed2", "whole_250_seed0",
        "cut3_150_seed0", "cut3_150_seed1", "cut12_150_seed0")


class Run(NamedTuple):
    whole: bool        # spans end between words (--whole-words)
    width: int | None  # the span width (--span); None: the pick stage's
    steps: int
    seed: int


def parse(name: str) -> Run:
    """"whole_250_seed1" -> Run(whole words, the stage's width, 250 steps, seed 1); "cut3_150_seed0" ->
    Run(the default spending, spans of 3 tokens, 150 steps, seed 0)."""
    m = re.fullmatch(r"(cut|whole)(\d*)_(\d+)_seed(\d+)", name)
    if not m:
        raise ValueError(f"highlight_seeds: a run is <cut|whole>[width]_<steps>_seed<k>, not {name!r}")
    return Run(m[1] == "whole", int(m[2]) if m[2] else None, int(m[3]), int(m[4]))


def pairs(names: list[str]) -> list[tuple[str, str]]:
    """The contrasts among these runs: a seed against seed 0, more steps against the fewest, whole
    words against the default spending, a span width against the stage's, each with the rest the same."""
    runs = {n: parse(n) for n in names}
    by = {v: n for n, v in runs.items()}
    out = []
    for n, r in runs.items():
        fewest = min(o.steps for o in runs.values() if o._replace(steps=r.steps) == r)
        for other in (r._replace(seed=0), r._replace(steps=fewest), r._replace(whole=False), r._replace(width=None)):
            if other in by and other != r and (by[other], n) not in out:
                out.append((n, by[other]))
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--slot", default="llama")
    ap.add_argument("--M", type=int, default=32)
    ap.add_argument("--n", type=int, default=50, help="test questions per dataset")
    ap.add_argument("--runs", nargs="+", default=list(RUNS))
    ap.add_argument("--dir", default="bench/results/highlight_llama_seeds")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    runs = {}
    for name in args.runs:
        r = parse(name)
        out = d / f"{name}.md"
        if not out.with_suffix(".json").is_file():
            highlight.main(["--params", args.params, "--pool", args.pool, "--pick", args.pick, "--slot", args.slot,
                            "--n", str(args.n), "--M", str(args.M), "--train", str(8 * r.steps), "--steps", str(r.steps),
                            "--seed", str(r.seed), "--variants", "trained", "--out", str(out)]
                           + (["--whole-words"] if r.whole else []) + (["--span", str(r.width)] if r.width else []))
        runs[name] = json.loads(out.with_suffix(".json").read_text())["variants"]["trained"]
    test, _ = split(read_jsonl(args.pool), args.n, 0)
    dss = sorted({r["dataset"] for r in test})
    lines = [f"# The trained receiver ({args.slot}) against its seed, its step count and the pick's spending (M = {args.M})", "",
             f"`python bench/highlight_seeds.py --slot {args.slot} --runs {' '.join(args.runs)}`: each run is one "
             "`bench/highlight.py --variants trained` (the adapter trained with CE on the gold answer, 8 pool train rows "
             f"a step), read on the same {len(test)} questions of the pick pool's held-out tenth (never the eval mix). "
             "\"whole\": the pick spends with `pick.whole_words` on; a width: spans of that many tokens, not the `pick` "
             "stage's; both for the train and the test rows alike.", "",
             "| run | spans | width | steps (rows) | seed | " + " | ".join(dss) + " | pooled | train s |",
             "|---|---|---|---|---|" + "---|" * (len(dss) + 2)]
    for name, v in runs.items():
        r = parse(name)
        width = r.width or "the stage's"
        lines.append(f"| `{name}` | {'whole words' if r.whole else 'may cut a word (default)'} | "
                     f"{width} | {r.steps} ({8 * r.steps:,}) | "
                     f"{r.seed} | " + " | ".join(f"{v['f1'][ds]:.3f}" for ds in dss)
                     + f" | **{v['f1_pooled']:.3f}** | {v['train_s']} |")
    contrast = pairs(list(runs))
    if contrast:
        lines += ["", "Paired F1 differences on the same questions, 95 % CI resampling whole titles:", ""]
        lines += contrast_table(contrasts(test, runs, contrast), dss)
    text = "\n".join(lines) + "\n"
    write_text(d.with_suffix(".md"), text)
    return text


if __name__ == "__main__":
    print(main())
