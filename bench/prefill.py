"""Prefill benchmark: time to first token with the latent prompt vs the full text prompt.

    python bench/prefill.py [--params params.yaml] [--checkpoint models/stage3/best] [--n 24]

Per model slot, on the first n eval examples, batch 1, greedy, one new token:
  text    prefix + body (question + context) + suffix, as the text baseline reads it;
  latent  prefix + M soft tokens + suffix, as the latent receiver reads it.
Neither uses the prefix cache, so both pay the whole prefill. The sender's cost (encoding
the prompt into Z, for the lm encoder a forward of its feature model) is timed apart.
Next to the measured TTFT ratio it prints the token-compression ratio (the physical limit
of the saving: prompt tokens / latent-prompt tokens). Writes bench/results/prefill.json.
Timing belongs here, not in unit tests: numbers depend on the machine (say which).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latentwire.config import load_params
from latentwire.evaluate import load_rows
from latentwire.latent import LatentWire, Receiver
from latentwire.llm import load_frozen


def ttft(model, **inputs) -> float:
    t0 = time.perf_counter()
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    return time.perf_counter() - t0


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval", default="data/mix/eval.jsonl")
    ap.add_argument("--checkpoint", default="models/stage3/best")
    ap.add_argument("--n", type=int, default=24, help="examples per model (default 24)")
    ap.add_argument("--out", default="bench/results/prefill.json")
    args = ap.parse_args()
    params = load_params(args.params)
    rows = load_rows(args.eval, None)[:args.n]
    M = params.stage3.M
    llms = {s: load_frozen(s, c, params.prompt, params.cache_dir) for s, c in params.models.items()}
    lw = LatentWire(params, M, llms)
    trained = Path(args.checkpoint, "meta.json").is_file()
    if trained:  # latency does not depend on the weights; untrained weights time the same
        lw.load(args.checkpoint)
    if params.encoder.kind != "bytes":
        lw.attach(llms[params.encoder.feature_model])
    lw.eval()
    body = next(iter(llms.values())).template.body
    texts = [body(r["context"], r["question"]) for r in rows]
    lw.encode(texts[:1])  # warm-up
    t_enc = []
    for t in texts:
        for memo in (getattr(lw.featurizer, "memo", None), getattr(lw.encoder, "memo", None)):
            if memo is not None:
                memo.clear()  # time the frozen feature pass too
        t0 = time.perf_counter()
        z, hint_logits, _ = lw.encode([t])
        t_enc.append(time.perf_counter() - t0)
    result = {"machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
              "device": "cuda" if torch.cuda.is_available() else "cpu", "M": M, "n": len(rows),
              "encoder": params.encoder.kind, "trained_checkpoint": trained,
              "sender_encode_ms": round(1e3 * statistics.median(t_enc), 1), "models": {}}
    for slot, llm in llms.items():
        rec, tok, model = Receiver(llm), llm.tokenizer, llm.model
        emb = model.get_input_embeddings()
        text_t, lat_t, text_len, lat_len = [], [], [], []
        for i, (r, t) in enumerate(zip(rows, texts)):
            ids = tok(llm.template.render(r["context"], r["question"]), add_special_tokens=False,
                      return_tensors="pt")["input_ids"].to(llm.device)
            z, hint_logits, _ = lw.encode([t])
            soft = rec.to_llm(lw.soft_tokens(z, hint_logits.argmax(-1), slot, params.wire.bits))
            x = torch.cat([emb(rec.prefix_ids)[None], soft, emb(rec.suffix_ids)[None]], 1)
            if i == 0:  # warm-up both paths
                ttft(model, input_ids=ids)
                ttft(model, inputs_embeds=x)
            text_t.append(ttft(model, input_ids=ids, attention_mask=torch.ones_like(ids)))
            lat_t.append(ttft(model, inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long)))
            text_len.append(ids.shape[1])
            lat_len.append(x.shape[1])
        body_tokens = statistics.mean(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        res = {"text_ttft_ms": round(1e3 * statistics.median(text_t), 1),
               "latent_ttft_ms": round(1e3 * statistics.median(lat_t), 1),
               "text_prompt_tokens": statistics.mean(text_len), "latent_prompt_tokens": statistics.mean(lat_len),
               "body_tokens": body_tokens}
        res["ttft_ratio"] = round(res["text_ttft_ms"] / res["latent_ttft_ms"], 2)
        res["prompt_token_ratio"] = round(res["text_prompt_tokens"] / res["latent_prompt_tokens"], 2)
        res["body_token_ratio"] = round(body_tokens / M, 2)
        result["models"][slot] = res
        print(f"{slot}: TTFT text {res['text_ttft_ms']} ms, latent {res['latent_ttft_ms']} ms -> "
              f"{res['ttft_ratio']}x; prompt tokens {res['text_prompt_tokens']:.0f} vs "
              f"{res['latent_prompt_tokens']:.0f} -> {res['prompt_token_ratio']}x "
              f"(body alone {res['body_token_ratio']}x)")
    print(f"sender: encode one prompt {result['sender_encode_ms']} ms ({params.encoder.kind} encoder)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
