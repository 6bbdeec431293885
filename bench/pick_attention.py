"""Does a frozen LM's own attention find the answer better than the pick's GRU, or beside it?
(issue 23: the pick's recall)

    python bench/pick_attention.py [--slot llama] [--train 20] [--n 30] [--out bench/results/pick_attention_llama.md]

The pick rates context tokens with no LLM forward (pick.py). A well-known alternative rates them
by the attention that a frozen LM, reading the prompt (context, then question), pays from the
question's positions to each context token ("retrieval heads"). Here the slot's LM reads each row
in the template every stage uses; per layer and head, a context token's share of the question
rows' attention (mean over the question rows) is mapped onto the sender's tokens (the highest of
the LM tokens its characters overlap). The heads are ranked on --train rows a dataset of the pool's
train part (the answer tokens' share against a uniform spread); the pick's spending (its span, run
margin and coverage) then fills M = pick.dev_M positions from:
  - gru:            the fitted pick's rating (models/pick), as the pipeline spends it;
  - attn top k:     the mean log attention share of the k best heads alone;
  - gru + w attn k: the rating plus w times the standardised attention score.
Recall (the gold answer wholly inside one picked span) is read on --n rows a dataset of the pool's
held-out tenth (never the eval mix). The cost is the LM's whole prefill at the sender, with eager
attention: the wall time is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latentwire import pick
from latentwire.config import load_params
from latentwire.io import write_text
from latentwire.llm import load_frozen
from latentwire.sender import Sender

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pick_reader import dev_sample  # noqa: E402

TOPS, WEIGHTS, BLEND_TOPS = (1, 4, 16, 64), (0.5, 1.0, 2.0), (4, 16)


def overlap(sender_offsets: list[tuple[int, int]], lm_offsets: list[tuple[int, int]]) -> torch.Tensor:
    """[sender tokens, LM tokens]: 1 where their characters overlap (a token of no width takes the
    LM token at its place)."""
    m = torch.zeros(len(sender_offsets), len(lm_offsets))
    j = 0
    for i, (a, b) in enumerate(sender_offsets):
        while j < len(lm_offsets) - 1 and lm_offsets[j][1] <= a:
            j += 1
        k = j
        while k < len(lm_offsets) and lm_offsets[k][0] < max(b, a + 1):
            m[i, k], k = 1, k + 1
        if not m[i].any():
            m[i, j] = 1
    return m


class AttentionRater:
    """The slot's LM over the prompt; attention(row) -> (the sender's read, [layers, heads, tokens])."""

    def __init__(self, params, slot: str, sender: Sender):
        llm = load_frozen(slot, params.models[slot], params.prompt, params.cache_dir)
        llm.model.set_attn_implementation("eager")  # the attention weights themselves (sdpa returns none)
        self.model, self.tok, self.template, self.sender = llm.model, llm.tokenizer, llm.template, sender
        self.prefix = self.tok(self.template.prefix + "Context:", add_special_tokens=False)["input_ids"]

    def attention(self, row: dict) -> tuple[pick.Read, torch.Tensor]:
        s = self.sender
        rd = pick.read(s.tokenizer, row["question"], row["context"], s.max_tokens)
        enc = self.tok(" " + row["context"][:rd.offsets[-1][1]], add_special_tokens=False, return_offsets_mapping=True)
        rest = self.tok("\nQuestion: " + row["question"] + self.template.suffix, add_special_tokens=False)["input_ids"]
        a, b = len(self.prefix), len(self.prefix) + len(enc["input_ids"])
        with torch.no_grad():
            out = self.model(torch.tensor([self.prefix + enc["input_ids"] + rest]), output_attentions=True)
        A = torch.stack([x[0, :, b:, a:b] for x in out.attentions])  # [L, H, question rows, context]
        A = (A / A.sum(-1, keepdim=True).clamp_min(1e-9)).mean(2)      # the context's share, per row averaged
        m = overlap(rd.offsets, [(max(x - 1, 0), max(y - 1, 0)) for x, y in enc["offset_mapping"]])
        return rd, (A.unsqueeze(-2) * m).amax(-1)


def head_lift(scored: list[tuple]) -> torch.Tensor:
    """[L, H]: the mean over rows of the answer tokens' attention share against a uniform spread."""
    lift, n = 0, 0
    for _, rd, A, y, _ in scored:
        if y.any():
            lift, n = lift + A[:, :, y > 0].sum(-1) / (y.sum() / len(y)), n + 1
    return lift / max(n, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--slot", default="llama", help="the LM whose attention rates (models.*)")
    ap.add_argument("--train", type=int, default=20, help="rows a dataset of the pool's train part that rank the heads")
    ap.add_argument("--n", type=int, default=30, help="held-out pool rows a dataset that read the recall")
    ap.add_argument("--out", default="bench/results/pick_attention.md")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    M = params.pick.dev_M
    sender = Sender.load(params, args.pick, M)
    train = dev_sample(args.pool, args.train, params.seed, held=False)  # ranks the heads
    rows = train + dev_sample(args.pool, args.n, params.seed)
    rater = AttentionRater(params, args.slot, sender)
    t0, scored = time.time(), []
    for r in rows:
        rd, A = rater.attention(r)
        scored.append((r, rd, A, pick.answer_labels(rd, r["context"], r["answers"]), sender.model.logits(rd)[:, 0]))
    wall, tokens = time.time() - t0, sum(len(s[1].ids) for s in scored)
    print(f"pick_attention: {len(rows)} rows, {tokens} sender tokens, {wall:.0f}s", flush=True)
    n_train = len(train)
    lift = head_lift(scored[:n_train])
    L, H = lift.shape
    top = lift.flatten().argsort(descending=True)

    def attn(A: torch.Tensor, k: int) -> torch.Tensor:
        return A.reshape(L * H, -1)[top[:k]].clamp_min(1e-6).log().mean(0)

    def recall(rate) -> dict[str, float]:
        hits: dict[str, list[bool]] = {}
        for r, rd, A, _, g in scored[n_train:]:
            p = sender.spend(rd, rate(A, g).tolist(), M)
            hits.setdefault(r["dataset"], []).append(pick.contains_answer(p.texts(r["context"]), r["answers"]))
        res = {ds: sum(h) / len(h) for ds, h in sorted(hits.items())}
        return {**res, "mean": sum(res.values()) / len(res)}

    def standard(s: torch.Tensor) -> torch.Tensor:
        return (s - s.mean()) / (s.std() + 1e-6)

    raters = {"gru (the pick)": lambda A, g: g}
    raters.update({f"attn top {k}": (lambda A, g, k=k: attn(A, k)) for k in TOPS})
    raters.update({f"gru + {w} attn top {k}": (lambda A, g, k=k, w=w: g + w * standard(attn(A, k)))
                   for k in BLEND_TOPS for w in WEIGHTS})
    out = {"slot": args.slot, "M": M, "train_rows": n_train, "dev_rows": len(rows) - n_train, "wall_s": round(wall),
           "sender_tokens": tokens, "best_heads": [[int(i) // H, int(i) % H, round(float(lift.flatten()[i]), 2)]
                                                   for i in top[:8]],
           "recall": {name: recall(rate) for name, rate in raters.items()}}
    dss = [k for k in out["recall"]["gru (the pick)"] if k != "mean"]
    lines = [f"# A frozen LM's attention as the pick's rating ({args.slot}, M = {M})", "",
             f"`python bench/pick_attention.py --slot {args.slot} --train {args.train} --n {args.n}`: see the script's "
             f"docstring. Heads ranked on {n_train} train-part pool rows; recall on {out['dev_rows']} rows of the pool's "
             f"held-out tenth (never the eval mix). The LM's prefill with attention: {wall:.0f} s for "
             f"{len(rows)} rows ({tokens / wall:.0f} sender tokens/s on this machine). Best heads (layer, head, "
             f"answer share against uniform): {', '.join(f'({a}, {b}, {c})' for a, b, c in out['best_heads'][:5])}.", "",
             "| rating | " + " | ".join(dss) + " | mean |", "|---|" + "---|" * (len(dss) + 1)]
    for name, res in out["recall"].items():
        lines.append(f"| {name} | " + " | ".join(f"{res[d]:.3f}" for d in dss) + f" | **{res['mean']:.3f}** |")
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
