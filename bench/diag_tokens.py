"""Where does the tokens sender lose F1? Three numbers per receiver on n SQuAD + n NQ questions.

    python bench/diag_tokens.py [--params params.yaml] [--checkpoint models/stage3/best] [--n 16]

  window hit      how often the picked context window contains a gold answer (the sender's pick);
  picked-text F1  the receiver reading the picked tokens as plain text (no codec: the upper
                  bound the pick allows);
  codec accuracy  how often a decoded soft token (int4 wire, with slot position and hint) is
                  nearest, among the receiver's target embeddings, to the token that was sent;
  latent F1       the receiver reading the latent at wire.bits.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from latentwire.config import load_params
from latentwire.evaluate import clean, generate_text, load_rows
from latentwire.latent import LatentWire, Receiver
from latentwire.llm import load_frozen
from latentwire.metrics import best_f1
from latentwire.tokens import string_targets


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval", default="data/mix/eval.jsonl")
    ap.add_argument("--checkpoint", default="models/stage3/best")
    ap.add_argument("--n", type=int, default=16, help="questions per dataset (SQuAD, NQ)")
    args = ap.parse_args()
    p = load_params(args.params)
    if p.encoder.kind != "tokens":
        raise SystemExit("encoder.kind is not 'tokens'")
    llms = {s: load_frozen(s, c, p.prompt, p.cache_dir) for s, c in p.models.items()}
    lw = LatentWire(p, p.stage3.M, llms)
    meta = lw.load(args.checkpoint)
    lw.resize(meta["M"])
    lw.eval()
    lw.attach(llms[p.encoder.feature_model])
    rows = load_rows(args.eval, None)
    rows = [r for r in rows if r["dataset"] == "squad"][:args.n] + [r for r in rows if r["dataset"] == "nq"][:args.n]
    body = next(iter(llms.values())).template.body
    texts = [body(r["context"], r["question"]) for r in rows]
    snd, stok = lw.encoder, llms[p.encoder.feature_model].tokenizer
    z, hint_logits, _ = lw.encode(texts)
    picked = [snd.pick(t)[0] for t in texts]
    picked_text = [stok.decode(ids) for ids in picked]
    hits = sum(any(a in pt for a in r["answers"]) for pt, r in zip(picked_text, rows))
    print(f"M={meta['M']}: window hit {hits}/{len(rows)}; first pick: {picked_text[0]!r}")

    def f1_by_ds(preds):
        return {ds: round(sum(best_f1(x, r["answers"]) for x, r in zip(preds, rows) if r["dataset"] == ds)
                          / max(1, sum(r["dataset"] == ds for r in rows)), 3) for ds in ("squad", "nq")}

    for slot, llm in llms.items():
        targets = F.normalize(string_targets(llms[p.encoder.feature_model], llm), dim=-1)
        soft = lw.soft_tokens(z, hint_logits.argmax(-1), slot, p.wire.bits)
        ok = sum((F.normalize(soft[i, :len(ids)], dim=-1) @ targets.T).argmax(-1).eq(torch.tensor(ids)).sum().item()
                 for i, ids in enumerate(picked))
        prompts = [llm.template.prefix + pt + llm.template.suffix for pt in picked_text]
        text_preds = generate_text(llm, prompts, p.evaluate.max_new_tokens, p.evaluate.batch_size)
        lat_preds = [clean(x) for x in Receiver(llm).generate(soft, p.evaluate.max_new_tokens)]
        print(f"{slot}: codec accuracy {ok / sum(map(len, picked)):.3f}; picked-text F1 {f1_by_ds(text_preds)}; "
              f"latent F1 {f1_by_ds(lat_preds)}")


if __name__ == "__main__":
    main()
