"""How much does SmolLM2's trained receiver move with its training seed, its step count, and
whole-word spans (`pick.whole_words`)?

    python bench/highlight_seeds.py [--slot llama] [--M 32] [--runs cut_150_seed0 ...]
                                    [--dir bench/results/highlight_llama_seeds]

Each run is one `bench/highlight.py --variants trained` (its docstring: the adapter trained with CE
on the gold answer over 8 pool train rows a step, read on 150 questions of the pick pool's held-out
tenth, never the eval mix) named <spans>_<steps>_seed<k>: spans "cut" (the default spending) or
"whole" (--whole-words), <steps> steps over <steps> x 8 rows, --seed k. A run whose JSON is in --dir
already is read, not rerun (about 4 min a run at 150 steps on 2 cores, 6 at 250). Written: --dir's
JSONs and <dir>.md, the runs and their paired differences (95 % CI resampling whole titles).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import highlight  # noqa: E402
from pair_slots import contrast_table, contrasts  # noqa: E402
from pool_probe import split  # noqa: E402
from latentwire.io import read_jsonl, write_text  # noqa: E402

RUNS = ("cut_150_seed0", "cut_150_seed1", "cut_150_seed2", "cut_250_seed0", "cut_250_seed1",
        "whole_150_seed0", "whole_150_seed1", "whole_150_seed2", "whole_250_seed0")

def parse(name: str) -> tuple[bool, int, int]:
    """"whole_250_seed1" -> (whole words, 250 steps, seed 1)."""
    spans, steps, seed = name.split("_")
    if spans not in ("cut", "whole") or not seed.startswith("seed"):
        raise ValueError(f"highlight_seeds: a run is <cut|whole>_<steps>_seed<k>, not {name!r}")
    return spans == "whole", int(steps), int(seed[4:])


def pairs(names: list[str]) -> list[tuple[str, str]]:
    """The contrasts among these runs: a seed against seed 0, more steps against the fewest, whole
    words against the default spending, each with the other two the same."""
    runs = {n: parse(n) for n in names}
    by = {v: n for n, v in runs.items()}
    out = []
    for n, (whole, steps, seed) in runs.items():
        fewest = min(st for w, st, sd in runs.values() if (w, sd) == (whole, seed))
        for other in ((whole, steps, 0), (whole, fewest, seed), (False, steps, seed)):
            if other in by and other != (whole, steps, seed) and (by[other], n) not in out:
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
        whole, steps, seed = parse(name)
        out = d / f"{name}.md"
        if not out.with_suffix(".json").is_file():
            highlight.main(["--params", args.params, "--pool", args.pool, "--pick", args.pick, "--slot", args.slot,
                            "--n", str(args.n), "--M", str(args.M), "--train", str(8 * steps), "--steps", str(steps), "--seed", str(seed),
                            "--variants", "trained", "--out", str(out)] + (["--whole-words"] if whole else []))
        runs[name] = json.loads(out.with_suffix(".json").read_text())["variants"]["trained"]
    test, _ = split(read_jsonl(args.pool), args.n, 0)
    dss = sorted({r["dataset"] for r in test})
    lines = [f"# The trained receiver ({args.slot}) against its seed, its step count and whole-word spans (M = {args.M})", "",
             f"`python bench/highlight_seeds.py --slot {args.slot} --runs {' '.join(args.runs)}`: each run is one "
             "`bench/highlight.py --variants trained` (the adapter trained with CE on the gold answer, 8 pool train rows "
             f"a step), read on the same {len(test)} questions of the pick pool's held-out tenth (never the eval mix). "
             "\"whole\": the pick spends with `pick.whole_words` on, for the train and the test rows alike.", "",
             "| run | spans | steps (rows) | seed | " + " | ".join(dss) + " | pooled | train s |",
             "|---|---|---|---|" + "---|" * (len(dss) + 2)]
    for name, v in runs.items():
        whole, steps, seed = parse(name)
        lines.append(f"| `{name}` | {'whole words' if whole else 'may cut a word (default)'} | {steps} ({8 * steps:,}) | "
                     f"{seed} | " + " | ".join(f"{v['f1'][ds]:.3f}" for ds in dss)
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
