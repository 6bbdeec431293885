"""More picked tokens in the same positions: does a reader read "telegraphic" picks? (issue 22's
"slots that carry more than one token", issue 23's recall)

    python bench/pick_telegraphic.py [--n 150] [--models qwen] [--extra 8 12] [--out bench/results/pick_telegraphic.md]

The pick spends M positions on spans of whole text. Function words and lone punctuation take a
good share of them. Here the fitted pick (models/pick, its own span width and run margin) spends
M + extra positions, and then drops the lowest-rated stopword and punctuation tokens until the
spans fit M again (`telegraphic`). It never drops a token of a span's run, the tokens rated within
the run margin of the span's best one (the predicted answer stays whole), nor punctuation next to a
digit ("7,000"). Where a dropped token leaves two kept ones touching without a space, one is put
in. The spans come back as text, which the sender tokenises again (the ids on the wire); extra is
lowered by 2 until they fit M. extra 0 is the pick as it is.

Read on n rows per dataset of the pool's held-out tenth of titles (never the eval mix), as
bench/pick_reader.py does: per extra, the context tokens the spans cover and those kept, the recall
(the gold answer wholly inside one span's text) and each reader's F1 from the text cut to M of its
tokens, paired against extra 0 with a 95 % bootstrap CI. Run `dvc repro pick` first.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import fmean

from latentwire import pick, stats
from latentwire.io import write_text
from latentwire.sender import Sender

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pick_reader import held_out, held_out_args, load_reader, reader_f1  # noqa: E402

STOP, PUNCT, DIGIT = (pick.FEATURES.index(f) for f in ("stop", "punct", "digit"))


def droppable(rd: pick.Read, scores: list[float], spans: list[tuple[int, int]], grow: float) -> list[int]:
    """The tokens the spans can spare, lowest-rated first: stopwords and lone punctuation outside
    each span's run (its tokens rated within `grow` of its best)."""
    f, out = rd.features, []
    for a, b in spans:
        top = max(scores[a:b])
        for i in range(a, b):
            if scores[i] >= top - grow:
                continue
            digits = any(0 <= j < len(scores) and f[j, DIGIT] > 0 for j in (i - 1, i + 1))
            if f[i, STOP] > 0 or (f[i, PUNCT] > 0 and not digits):
                out.append(i)
    return sorted(out, key=lambda i: scores[i])


def telegraphic(sender: Sender, rd: pick.Read, scores: list[float], M: int,
                extra: int) -> tuple[str, list[str], int, int]:
    """(the picked text, each span's text, the context tokens its spans cover, those it keeps) of
    M + extra positions thinned to M (see the docstring); at extra 0 the sender's own pick."""
    sep = sender.tokenizer.decode([sender.sep_id])  # the separator token's text (" ...")
    for e in [*range(extra, 0, -2), 0]:
        spans = pick.spans_for(scores, rd.sentence, M + e, sender.span, rd.paragraph, sender.cover, sender.grow,
                               rd.word if sender.whole_words else None)
        keep = {i for a, b in spans for i in range(a, b)}
        seps = sum(1 for x, y in zip(spans, spans[1:]) if x[1] < y[0])
        for i in droppable(rd, scores, spans, sender.grow or 0.0):
            if len(keep) + seps <= M:
                break
            keep.discard(i)
        texts = []
        for a, b in spans:  # each run of kept tokens decoded whole (a character may take several byte tokens)
            runs = [[]]
            for i in range(a, b):
                if i in keep:
                    runs[-1].append(rd.ids[i])
                elif runs[-1]:
                    runs.append([])
            pieces = [sender.tokenizer.decode(r) for r in runs if r]
            texts.append("".join(p if not k or p.startswith(" ") else " " + p for k, p in enumerate(pieces)))
        joined = "".join((sep if k and spans[k - 1][1] < spans[k][0] else "") + t
                         for k, t in enumerate(texts)).strip()
        if e == 0 or len(sender.tokenizer(joined, add_special_tokens=False)["input_ids"]) <= M:
            return joined, texts, sum(b - a for a, b in spans), len(keep)


def main(argv=None) -> dict:
    ap = held_out_args(__doc__)
    ap.add_argument("--extra", type=int, nargs="+", default=[8, 12], help="positions spent before thinning to M")
    ap.add_argument("--out", default="bench/results/pick_telegraphic.md")
    args = ap.parse_args(argv)
    params, M, sender, rows = held_out(args)
    scored = [(rd, sender.model.score(rd)) for rd in
              (pick.read(sender.tokenizer, r["question"], r["context"], sender.max_tokens) for r in rows)]
    extras = [0] + sorted(set(args.extra) - {0})
    picked = {}
    for e in extras:
        if e == 0:  # the pick as the stage spends it
            ps = [sender.spend(rd, s, M) for rd, s in scored]
            covered = [sum(b - a for a, b in p.spans) for p in ps]
            picked[e] = ([sender.decode(p.ids) for p in ps], [p.texts(r["context"]) for p, r in zip(ps, rows)],
                         covered, covered)
        else:
            picked[e] = tuple(map(list, zip(*(telegraphic(sender, rd, s, M, e) for rd, s in scored))))
    names = sorted({r["dataset"] for r in rows})
    hit = {e: [pick.contains_answer(t, r["answers"]) for t, r in zip(picked[e][1], rows)] for e in extras}
    out: dict = {"M": M, "rows": len(rows), "span": sender.span, "grow": sender.grow, "models": {},
                 "recall": {e: {"all": fmean(hit[e]), **{ds: fmean([h for h, r in zip(hit[e], rows) if r["dataset"] == ds])
                                                       for ds in names}} for e in extras},
                 "ids": {e: fmean(len(sender.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in picked[e][0])
                         for e in extras},
                 "covered": {e: fmean(picked[e][2]) for e in extras}, "kept": {e: fmean(picked[e][3]) for e in extras}}
    for slot in args.models:
        llm = load_reader(params, slot)
        f1 = {}
        for e in extras:
            t0 = time.time()
            f1[e] = reader_f1(llm, params, picked[e][0], rows, M, f"{slot} extra {e}")
            print(f"pick_telegraphic: {slot} extra {e}: F1 {fmean(f1[e]):.3f}, {time.time() - t0:.0f}s", flush=True)
        out["models"][slot] = {e: {"f1": fmean(f1[e]),
                                   **{ds: fmean([x for x, r in zip(f1[e], rows) if r["dataset"] == ds]) for ds in names},
                                   "vs_pick": stats.paired_ci({ds: [a - b for a, b, r in zip(f1[e], f1[0], rows)
                                                                    if r["dataset"] == ds] for ds in names}, params.seed)}
                               for e in extras}
        del llm
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    write_text(args.out, table(out, names, args) + "\n")
    return out


def table(out: dict, names: list[str], args) -> str:
    lines = [f"# Telegraphic picks: M + extra positions thinned to M (M = {out['M']}, {out['rows']} held-out pool rows)", "",
             f"`python bench/pick_telegraphic.py --n {args.n} --models {' '.join(args.models)} --extra "
             f"{' '.join(map(str, args.extra))}`: the fitted pick (span {out['span']}, run margin {out['grow']}) spends "
             "M + extra positions, then drops its lowest-rated stopwords and lone punctuation outside each span's run "
             "until M; extra 0 is the pick. Rows of the pool's held-out tenth of titles (never the eval mix). "
             "Recall: the gold answer wholly inside one span's text; F1: the reader on that text cut to M of its tokens; "
             "Δ: paired against extra 0, 95 % bootstrap CI.", "",
             "| extra | context tokens the spans cover | kept | sender ids (positions) | " + " | ".join(f"recall {d}" for d in names)
             + " | recall |", "|---|---:|---:|---:|" + "---:|" * (len(names) + 1)]
    for e, rec in out["recall"].items():
        lines.append(f"| {e} | {out['covered'][e]:.1f} | {out['kept'][e]:.1f} | {out['ids'][e]:.1f} | "
                     + " | ".join(f"{rec[d]:.3f}" for d in names) + f" | **{rec['all']:.3f}** |")
    for slot, res in out["models"].items():
        lines += ["", f"## {slot}", "", "| extra | " + " | ".join(names) + " | F1 | Δ F1 vs the pick [95 % CI] |",
                  "|---|" + "---:|" * (len(names) + 1) + "---|"]
        for e, r in res.items():
            ci = r["vs_pick"]
            lines.append(f"| {e} | " + " | ".join(f"{r[d]:.3f}" for d in names) + f" | **{r['f1']:.3f}** | "
                         f"{ci['diff']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
