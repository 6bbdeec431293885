"""How should a receiver with another tokenizer read the codebook's ids, before any training?

    python bench/receiver_base.py [--params params.yaml] [--n 150] [--models qwen]
                                  [--out bench/results/receiver_base.md]

The ids on the wire are SmolLM2 tokens (the codebook). Qwen's tokenizer is another one. Two
untrained bases (the adapter's learned correction and slot positions at zero) are read here, with
`receiver.Receiver` as `evaluate` reads the latent:

  mean    one position per id: the mean of the receiver's embeddings of the id's string's own tokens
          (adapter.string_table; the base until this round)
  tokens  the ids' text in the receiver's own tokens, cut to as many positions as ids were sent
          (adapter.receiver_tokens; the base now)

beside `text`: the picked text cut to M of the receiver's tokens in the text prompt (the
selected_text baseline). The fitted pick (models/pick) spends M = pick.dev_M positions on n
held-out pool rows per dataset (the pool's held-out tenth of titles: train split, never the eval
mix). Reported per dataset: F1 of each, and the paired Δ (tokens − mean, tokens − text) with a 95 %
bootstrap CI (pooled, stratified by dataset). Run `dvc repro pick` first.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import fmean

import torch

from latentwire import stats
from latentwire.adapter import TokenAdapter, receiver_tokens, string_table
from latentwire.io import write_text
from latentwire.llm import load_frozen
from latentwire.metrics import best_f1
from latentwire.packed import pack
from latentwire.receiver import Receiver

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the held-out rows: bench/pick_reader.py's
from pick_reader import held_out, held_out_args, reader_f1  # noqa: E402

BASES = ("mean", "tokens", "text")


@torch.inference_mode()
def read_all(llm, softs: list, rows: list[dict], bs: int, max_new_tokens: int) -> list[str]:
    rec, out = Receiver(llm), []
    for i in range(0, len(rows), bs):
        out += rec.answer(softs[i:i + bs], [r["question"] for r in rows[i:i + bs]], max_new_tokens)
    return out


def main(argv=None) -> dict:
    ap = held_out_args(__doc__)
    ap.add_argument("--out", default="bench/results/receiver_base.md")
    args = ap.parse_args(argv)
    params, M, sender, rows = held_out(args)
    ids = [sender.pick(r["question"], r["context"], M).ids for r in rows]
    names = sorted({r["dataset"] for r in rows})
    ev = params.evaluate
    out: dict = {"M": M, "n_per_dataset": args.n, "rows": len(rows), "models": {}}
    for slot in args.models:
        llm = load_frozen(slot, params.models[slot], params.prompt, params.cache_dir)
        E = llm.model.get_input_embeddings().weight.detach()
        means, counts = string_table(sender.tokenizer, llm)
        adapter = TokenAdapter(E.shape[1], M)  # untrained: its correction and positions are zero
        adapter.set_table(E, receiver_tokens(sender.tokenizer, llm))
        with torch.no_grad():
            softs = {"mean": [means[torch.tensor(i, dtype=torch.long)].to(E.dtype) for i in ids],
                     "tokens": [adapter(torch.tensor(i, dtype=torch.long)) for i in ids]}
        if ev.prepack:
            pack(llm.model)  # as evaluate: the linear weights reordered once (CPU)
        f1 = {}
        for base in BASES:
            t0 = time.time()
            if base == "text":  # the selected_text baseline's prompt
                f1[base] = reader_f1(llm, params, [sender.decode(i) for i in ids], rows, M, f"{slot} text")
            else:
                preds = read_all(llm, softs[base], rows, ev.batch_size, ev.max_new_tokens)
                f1[base] = [best_f1(p, r["answers"]) for p, r in zip(preds, rows)]
            print(f"receiver_base: {slot} {base}: F1 {fmean(f1[base]):.3f}, {time.time() - t0:.0f}s", flush=True)

        def delta(a: str, b: str) -> dict:
            return stats.paired_ci({ds: [x - y for x, y, r in zip(f1[a], f1[b], rows) if r["dataset"] == ds]
                                    for ds in names}, params.seed)

        out["models"][slot] = {
            "f1": {b: {ds: fmean([x for x, r in zip(f1[b], rows) if r["dataset"] == ds]) for ds in names}
                   | {"all": fmean(f1[b])} for b in BASES},
            "positions": {b: fmean(len(s) for s in softs[b]) for b in ("mean", "tokens")},
            "split_ids": fmean(sum(int(counts[t]) > 1 for t in i) / max(len(i), 1) for i in ids),
            "tokens_minus_mean": delta("tokens", "mean"), "tokens_minus_text": delta("tokens", "text")}
        del llm
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    write_text(args.out, table(out, names, args) + "\n")
    return out


def table(out: dict, names: list[str], args) -> str:
    lines = [f"# The receiver's untrained base: one mean embedding per id, or the ids' text in its own tokens "
             f"(M = {out['M']}, {out['rows']} held-out pool rows)", "",
             f"`python bench/receiver_base.py --n {args.n} --models {' '.join(args.models)}`: the fitted pick spends M "
             f"positions on {args.n} rows per dataset of the pool's held-out tenth of titles (never the eval mix); "
             "the receiver reads the picked ids with no learned correction: `mean` (one position an id, the mean of its "
             "embeddings of the id's string's tokens: the base before), `tokens` (the ids' text in its own tokens, cut to the "
             "ids' count: the base now), `text` (the picked text in the text prompt, the selected_text baseline). "
             "Δ: paired on the same rows, 95 % bootstrap CI.", ""]
    for slot, res in out["models"].items():
        lines += [f"## {slot}", "", f"ids whose string alone its tokenizer splits: {res['split_ids']:.3f}; positions read: "
                  f"mean {res['positions']['mean']:.1f}, tokens {res['positions']['tokens']:.1f}", "",
                  "| base | " + " | ".join(names) + " | all |", "|---|" + "---:|" * (len(names) + 1)]
        for b in BASES:
            lines.append(f"| {b} | " + " | ".join(f"{res['f1'][b][d]:.3f}" for d in names) + f" | **{res['f1'][b]['all']:.3f}** |")
        for k, label in (("tokens_minus_mean", "tokens − mean"), ("tokens_minus_text", "tokens − text")):
            ci = res[k]
            lines.append(f"\n{label}: {ci['diff']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] (n = {ci['n']})")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
