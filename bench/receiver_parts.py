"""Which part of a trained receiver adapter helps, read on questions the eval mix never holds?
(issue 22: the learned receiver against an untrained one)

    python bench/receiver_parts.py --slot qwen --n 50        # after `dvc repro`

The ledger zeroes parts of the default's checkpoint and reads the eval mix. This reads the same
checkpoint (models/stage3/best) on --n questions a dataset of the pick pool's held-out tenth
(train-split titles the pick never fitted on), so that a choice made from it is not a choice
made on the eval mix. Four readers of the same picked ids, greedy answers:
  - trained:     the adapter as trained (low-rank correction + a position per slot)
  - pos_only:    its positions, the correction at zero
  - delta_only:  its correction, the positions at zero
  - untrained:   both at zero (the picked text's own embeddings: ~ selected_text)
With --text, two readers of the whole context instead of the picked ids, in the same template:
  - text:          its own token embeddings (~ the full-text baseline)
  - text_trained:  each token through the trained correction, e + delta(e) (no slot positions: the
                   text is longer than M). text_trained - text is what the training does to a
                   reader of the text: the answer's form, say, rather than anything the slots carry.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from latentwire.adapter import TokenAdapter, receiver_tokens
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.llm import load_frozen
from latentwire.metrics import f1_score
from latentwire.receiver import Receiver
from latentwire.sender import Sender

sys.path.insert(0, str(Path(__file__).resolve().parent))
from highlight import Reader, answers, receiver_ratings, sent  # noqa: E402
from pair_slots import contrast_table, contrasts  # noqa: E402
from pool_probe import split  # noqa: E402

VARIANTS = {"trained": (), "pos_only": ("delta",), "delta_only": ("pos",), "untrained": ("pos", "delta")}
CONTRASTS = (("trained", "untrained"), ("pos_only", "untrained"), ("delta_only", "untrained"),
             ("pos_only", "trained"))
TEXT_CONTRASTS = (("text_trained", "text"), ("trained", "text_trained"), ("trained", "text"))


def reader_from(state: dict, slot: str, E: torch.Tensor, M: int, rank: int, zero: tuple[str, ...]) -> Reader:
    """A Reader holding `slot`'s adapter of a LatentWire checkpoint, the `zero` parts at zero."""
    reader = Reader(E, M, rank, 1, highlight=False)
    prefix = f"codec.adapters.{slot}."
    own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not own:
        raise ValueError(f"receiver_parts: the checkpoint holds no adapter for slot {slot!r}")
    for k in own:  # the correction's last layer at zero: delta(e) = 0 exactly (as bench/ledger.py)
        if ("pos" in zero and k == "pos") or ("delta" in zero and k.startswith("delta.2.")):
            own[k] = own[k] * 0
    reader.adapter.load_state_dict(own)
    return reader.eval()


def scored(test: list[dict], per: list[float], t0: float, name: str) -> dict:
    """One variant's F1 per question, per dataset and pooled, and its wall time (printed as it lands)."""
    f1: dict[str, list[float]] = {}
    for r, x in zip(test, per):
        f1.setdefault(r["dataset"], []).append(x)
    res = {"per_question": per, "f1_pooled": sum(per) / len(per), "f1": {d: sum(x) / len(x) for d, x in f1.items()},
           "wall_s": round(time.time() - t0)}
    print(f"receiver_parts: {name}: pooled F1 {res['f1_pooled']:.3f} {res['f1']}", flush=True)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--checkpoint", default="models/stage3/best")
    ap.add_argument("--slot", default="qwen")
    ap.add_argument("--n", type=int, default=50, help="test questions per dataset")
    ap.add_argument("--M", type=int, default=32)
    ap.add_argument("--text", action="store_true", help="also read the whole context, plain and through the correction")
    ap.add_argument("--out", default=None, help="default: bench/results/receiver_parts_<slot>.md")
    args = ap.parse_args(argv)
    out_path = args.out or f"bench/results/receiver_parts_{args.slot}.md"
    params = load_params(args.params)
    sender = Sender.load(params, args.pick, args.M)
    test, _ = split(read_jsonl(args.pool), args.n, 0)
    s_test = [sent(sender, r, args.M, [0.5]) for r in tqdm(test, desc="pick test", disable=None)]
    llm = load_frozen(args.slot, params.models[args.slot], params.prompt, params.cache_dir)
    rec = Receiver(llm)
    E = llm.model.get_input_embeddings().weight.detach()
    base = TokenAdapter(E.shape[1], args.M)
    base.set_table(E, receiver_tokens(sender.tokenizer, llm))
    d_test = [receiver_ratings(sender, llm)(i, r) for i, r in s_test]
    assert all(t == base.tokens(i) for (t, _), (i, _) in zip(d_test, s_test)), "alignment != TokenAdapter.tokens"
    state = load_file(str(Path(args.checkpoint) / "model.safetensors"))
    out = {"slot": args.slot, "M": args.M, "n": len(test), "checkpoint": args.checkpoint, "variants": {}}
    for v, zero in VARIANTS.items():
        reader = reader_from(state, args.slot, E, args.M, params.train.adapter_rank, zero)
        t0 = time.time()
        out["variants"][v] = scored(test, answers(rec, reader, d_test, test, params.evaluate.max_new_tokens, 16), t0, v)
    if args.text:
        reader = reader_from(state, args.slot, E, args.M, params.train.adapter_rank, ())
        ctx = [llm.tokenizer(" " + r["context"], add_special_tokens=False)["input_ids"] for r in test]
        for v, through in (("text", False), ("text_trained", True)):
            t0, per = time.time(), []
            with torch.no_grad():
                for i in range(0, len(test), 8):
                    e = [E[torch.tensor(c)] for c in ctx[i:i + 8]]
                    softs = [x + reader.adapter.delta(x) if through else x for x in e]
                    preds = rec.answer(softs, [r["question"] for r in test[i:i + 8]], params.evaluate.max_new_tokens)
                    per += [max(f1_score(p, a) for a in r["answers"]) for r, p in zip(test[i:i + 8], preds)]
            out["variants"][v] = scored(test, per, t0, v)
    out["contrasts"] = contrasts(test, out["variants"], CONTRASTS + (TEXT_CONTRASTS if args.text else ()))
    dss = sorted({r["dataset"] for r in test})
    lines = [f"# The parts of the trained receiver ({args.slot}, M = {args.M}), on held-out pool questions", "",
             f"`python bench/receiver_parts.py --slot {args.slot} --n {args.n} --M {args.M}"
             f"{' --text' * args.text}` reads {args.checkpoint} with parts at zero: see the script's docstring.", "",
             "| variant | " + " | ".join(dss) + " | pooled |", "|---|" + "---|" * (len(dss) + 1)]
    for v, res in out["variants"].items():
        lines.append(f"| {v} | " + " | ".join(f"{res['f1'][d]:.3f}" for d in dss) + f" | **{res['f1_pooled']:.3f}** |")
    lines += ["", "Paired F1 differences, 95 % CI resampling whole titles:", "", *contrast_table(out["contrasts"], dss)]
    write_text(out_path, "\n".join(lines) + "\n")
    write_text(Path(out_path).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
