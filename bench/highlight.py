"""Can the learned receiver read what text cannot carry: the sender's own rating of each token?
(issue 22, "the learned part earns its place")

    python bench/highlight.py [--slot qwen] [--n 50] [--M 32] [--train 1200] [--steps 150]
                              [--seed 0] [--whole-words] [--span W]

The latent and the selected_text baseline hand the receiver the same picked tokens, so a
receiver adapter that only maps ids to embeddings can at best match the text (the ledger:
learned receiver - untrained +0.009). The sender knows more than the ids: the pick rates every
token for how likely it is to be the answer. Sent as a bucket (--edges: 3 edges, 2 bits a token)
beside its 16-bit id, a learned embedding per bucket added to the token's embedding (zero at the
start) is something only a learned receiver can use. The lr (default) is in units of the
receiver's embedding scale: one lr for all moves Qwen's adapter 7x faster than SmolLM2's.

Four receivers read the same --n questions a dataset of the pick pool's held-out tenth
(train-split titles the pick never fitted on; never the eval mix), greedy answers:
  - untrained:  the adapter at its start (the picked text's own embeddings: ~ selected_text)
  - trained:    adapter (low-rank correction + slot positions) trained --steps steps of CE on the
                gold answer (answers[0] + eos) over --train rows of the pool's train part
  - highlight:  the same training, the same batches, plus the rating embedding
  - highlight_only: the same batches, only the rating embedding trained (the adapter stays at
                its start, so the text's own embeddings are untouched)
highlight - trained is what the rating adds; trained - untrained what training alone adds.
On 2 cores a trained Qwen variant takes about 11 min, a SmolLM2 one about 4 (docs/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentwire.adapter import TokenAdapter, receiver_tokens
from latentwire.adapter import receiver_ratings as adapter_ratings
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.kd import answer_tokens
from latentwire.llm import load_frozen
from latentwire.losses import ce_loss
from latentwire.metrics import f1_score
from latentwire.receiver import Receiver
from latentwire.sender import Sender

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_slots import contrast_table, contrasts  # noqa: E402
from pool_probe import split  # noqa: E402

VARIANTS = ("untrained", "trained", "highlight", "highlight_only")
REL_LR = 0.011  # Qwen 0.0136 a coordinate -> 1.5e-4; SmolLM2 0.099 -> 1.1e-3 (train.lr 1e-3 is 7x Qwen's scale)
CONTRASTS = (("highlight", "trained"), ("highlight", "untrained"), ("trained", "untrained"),
             ("highlight_only", "untrained"))


def sent(sender: Sender, row: dict, M: int, edges: list[float]) -> tuple[list[int], list[int]]:
    """The picked ids and each one's rating bucket (the pick's answer probability; a separator 0):
    the pipeline's rating channel (ids.rating_edges) at these edges."""
    old, sender.rating_edges = sender.rating_edges, edges
    try:
        picked = sender.pick(row["question"], row["context"], M)
    finally:
        sender.rating_edges = old
    return picked.ids, picked.ratings


def receiver_ratings(sender: Sender, llm):
    """(ids, ratings) -> the receiver's own tokens of the ids' text (as TokenAdapter reads them, cut
    to len(ids)) and each one's bucket (adapter.receiver_ratings: the highest of the ids its
    characters overlap)."""
    to_tokens, to_ratings = receiver_tokens(sender.tokenizer, llm), adapter_ratings(sender.tokenizer, llm)
    return lambda ids, rating: (to_tokens(ids)[:len(ids)], to_ratings(ids, rating)[:len(ids)])


class Reader(torch.nn.Module):
    """TokenAdapter plus (optionally) an embedding per rating bucket, zero at the start."""

    def __init__(self, E: torch.Tensor, M: int, rank: int, n_buckets: int, highlight: bool, frozen: bool = False):
        super().__init__()
        self.E = E
        self.adapter = TokenAdapter(E.shape[1], M, rank)
        self.adapter.requires_grad_(not frozen)
        self.hl = torch.nn.Embedding(n_buckets, E.shape[1]) if highlight else None
        if self.hl is not None:
            torch.nn.init.zeros_(self.hl.weight)

    def forward(self, tok: list[int], rating: list[int]) -> torch.Tensor:
        a = self.adapter
        e = self.E[torch.tensor(tok)]
        x = e + a.delta(e) + a.pos[:len(tok)]
        return x + self.hl(torch.tensor(rating)) if self.hl is not None else x


def answers(rec: Receiver, reader: Reader, data: list[tuple], rows: list[dict], max_new: int, batch: int) -> list[float]:
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            softs = [reader(t, r) for t, r in data[i:i + batch]]
            preds = rec.answer(softs, [r["question"] for r in rows[i:i + batch]], max_new)
            out += [max(f1_score(p, a) for a in r["answers"]) for r, p in zip(rows[i:i + batch], preds)]
    return out


def train(rec: Receiver, reader: Reader, data: list[tuple], rows: list[dict], steps: int, batch: int,
          lr: float, K: int, seed: int = 0) -> list[float]:
    tok = rec.llm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opt = torch.optim.AdamW([p for p in reader.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    g, curve = torch.Generator().manual_seed(seed), []
    bar = tqdm(range(steps), desc="train", unit="step", disable=None)
    for _ in bar:
        idx = torch.randint(len(rows), (batch,), generator=g).tolist()
        ans = [answer_tokens(tok, rows[i]["answers"][0], K) for i in idx]
        ids = torch.full((batch, K), pad)
        mask = torch.zeros(batch, K, dtype=torch.bool)
        for j, a in enumerate(ans):
            ids[j, :len(a)], mask[j, :len(a)] = torch.tensor(a), True
        rests = [rec.rest(reader(*data[i]), rows[i]["question"]) for i in idx]
        loss = ce_loss(rec.answer_logits(rests, ids), ids, mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
        bar.set_postfix(loss=f"{sum(curve[-20:]) / len(curve[-20:]):.3f}")
    return curve


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--slot", default="qwen")
    ap.add_argument("--n", type=int, default=50, help="test questions per dataset")
    ap.add_argument("--M", type=int, default=32)
    ap.add_argument("--train", type=int, default=1200, help="train rows of the pool's train part")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None,
                    help="AdamW learning rate (default: REL_LR x the receiver's mean |embedding coordinate|)")
    ap.add_argument("--edges", type=float, nargs="+", default=[0.3, 0.6, 0.8],
                    help="answer-probability edges of the rating buckets (3 edges: 2 bits a token)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=0, help="the adapters' start and the batches' draw")
    ap.add_argument("--whole-words", action="store_true", help="spend the pick with pick.whole_words on")
    ap.add_argument("--span", type=int, default=None, help="spend the pick with this span width (default: the stage's)")
    ap.add_argument("--out", default="bench/results/highlight.md")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    params = load_params(args.params)
    sender = Sender.load(params, args.pick, args.M)
    sender.whole_words = sender.whole_words or args.whole_words
    sender.span = args.span or sender.span
    test, rows = split(read_jsonl(args.pool), args.n, args.train)
    t0 = time.time()
    s_train = [sent(sender, r, args.M, args.edges) for r in tqdm(rows, desc="pick train", disable=None)]
    s_test = [sent(sender, r, args.M, args.edges) for r in tqdm(test, desc="pick test", disable=None)]
    print(f"highlight: picks {time.time() - t0:.0f}s; bucket shares "
          f"{torch.bincount(torch.tensor([b for _, r in s_train for b in r]), minlength=len(args.edges) + 1).tolist()}",
          flush=True)
    llm = load_frozen(args.slot, params.models[args.slot], params.prompt, params.cache_dir)
    for p in llm.model.parameters():
        p.requires_grad_(False)
    rec = Receiver(llm)
    E = llm.model.get_input_embeddings().weight.detach()
    base = TokenAdapter(E.shape[1], args.M)
    base.set_table(E, receiver_tokens(sender.tokenizer, llm))
    align = receiver_ratings(sender, llm)
    d_train, d_test = [align(i, r) for i, r in s_train], [align(i, r) for i, r in s_test]
    assert all(t == base.tokens(i) for (t, _), (i, _) in zip(d_test, s_test)), "alignment != TokenAdapter.tokens"
    lr = args.lr or REL_LR * E.abs().mean().item()
    K, out = params.kd.K_max, {"slot": args.slot, "M": args.M, "n": len(test), "train_rows": len(rows),
                               "steps": args.steps, "lr": lr, "edges": args.edges, "variants": {}}
    for v in args.variants:
        torch.manual_seed(args.seed)
        reader = Reader(E, args.M, params.train.adapter_rank, len(args.edges) + 1, v.startswith("highlight"),
                        frozen=v == "highlight_only")
        t0 = time.time()
        curve = train(rec, reader, d_train, rows, args.steps, args.batch, lr, K, args.seed) if v != "untrained" else []
        train_s = time.time() - t0
        per = answers(rec, reader, d_test, test, params.evaluate.max_new_tokens, 16)
        f1: dict[str, list[float]] = {}
        for r, x in zip(test, per):
            f1.setdefault(r["dataset"], []).append(x)
        out["variants"][v] = {"per_question": per, "f1_pooled": sum(per) / len(per),
                              "f1": {d: sum(x) / len(x) for d, x in f1.items()}, "train_s": round(train_s),
                              "loss_first_last_20": [sum(curve[:20]) / 20, sum(curve[-20:]) / 20] if curve else None}
        print(f"highlight: {v}: pooled F1 {out['variants'][v]['f1_pooled']:.3f} {out['variants'][v]['f1']} "
              f"(train {train_s:.0f}s)", flush=True)
    out["contrasts"] = contrasts(test, out["variants"], [(a, b) for a, b in CONTRASTS if {a, b} <= set(out["variants"])])
    dss = sorted({r["dataset"] for r in test})
    lines = [f"# The sender's rating as a learned channel ({args.slot}, M = {args.M})", "",
             f"`python bench/highlight.py --slot {args.slot} --n {args.n} --M {args.M} --train {args.train} "
             f"--steps {args.steps}" + (f" --seed {args.seed}" if args.seed else "")
             + (" --whole-words" if sender.whole_words else "") + (f" --span {args.span}" if args.span else "") + "`: see the script's docstring. Learning rate {lr:.2e}; rating buckets at answer "
             f"probability {args.edges}.", "",
             "| variant | " + " | ".join(dss) + " | pooled | train s |", "|---|" + "---|" * (len(dss) + 2)]
    for v, res in out["variants"].items():
        lines.append(f"| {v} | " + " | ".join(f"{res['f1'][d]:.3f}" for d in dss)
                     + f" | **{res['f1_pooled']:.3f}** | {res['train_s']} |")
    lines += ["", "Paired F1 differences, 95 % CI resampling whole titles:", "", *contrast_table(out["contrasts"], dss)]
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
