"""The whole trip, sender + wire + receiver, against sending the text: time to first token.

    python bench/latency.py [--params params.yaml] [--n 56] [--threads 2] [--dense] [--out bench/results/latency.json]
                            [--long hotpotqa_distractor --n-long 16]

encoder.kind ids. Per receiver and batch size (1 and 8), over the first n eval prompts:
  text     the receiver prefills "Context: <context>\\nQuestion: <q>" + suffix and emits one token;
  latent   sender (read + pick + pack), then unpack + adapter, then the receiver prefills
           "Context:" + <= M slots + "\\nQuestion: <q>" + suffix and emits one token.
Both reuse the template prefix's KV cache (Receiver: computed once, copied per batch), so the
two differ only in what the prompt carries. Time to first token is one forward over the rest
and the argmax of its last logits (`first_token`), the prefill without generate()'s per-call
set-up, which is the same absolute cost for both and would only blur the ratio. Medians and p90 over batches, in ms per batch.
Break-even: how many receivers must read one payload before the sender's cost is repaid by
their prefill savings; amortised: the trip for both receivers from one payload against both
reading the text. Beside each ratio, the receiver's token-compression ratio (text rest tokens
/ latent rest positions), the physical limit of the prefill saving. Writes --out (JSON) and
a Markdown table beside it. The receivers run as `evaluate` runs them: with evaluate.prepack
(the default) their linear weights are reordered once at load (packed.py); --dense times the
plain nn.Linear model instead. --long DATASET also times the first --n-long eval prompts of that
dataset alone at batch 1 and its own M (data.datasets.<name>.M): the long-context regime, under
"long" in the JSON. Timing belongs here, not in unit tests: say which machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latentwire import payload
from latentwire.config import load_params
from latentwire.latent import LatentWire
from latentwire.llm import load_frozen
from latentwire.packed import pack
from latentwire.receiver import Receiver
from latentwire.sender import Sender
from latentwire.units import load_rows


def ms(f):
    t0 = time.perf_counter()
    out = f()
    return 1e3 * (time.perf_counter() - t0), out


@torch.inference_mode()
def first_token(rec: Receiver, rests: list) -> list[int]:
    """Prefill and the first greedy token: one forward over the cached prefix + the padded rests
    (what generate() does before its first token, without its per-call set-up)."""
    rests = [rec.to_llm(r) for r in rests]
    x, mask = rec.pad(rests)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)[:, len(rec.prefix_ids):]
    out = rec.llm.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, cache=rec.cache(len(rests)),
                        use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].argmax(-1).tolist()


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 2), "p90": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))], 2)}


@torch.inference_mode()
def run(params_path: str, eval_path: str, checkpoint: str, pick_dir: str, n: int, threads: int,
        batches=(1, 8), dense: bool = False, long: str | None = None, n_long: int = 16) -> dict:
    torch.set_num_threads(threads)
    params = load_params(params_path)
    if params.encoder.kind != "ids":
        raise SystemExit(f"bench/latency.py times encoder.kind ids, not {params.encoder.kind!r}")
    all_rows = load_rows(eval_path, None)
    M = params.stage3.M
    sender = Sender.load(params, pick_dir, M)
    llms = {s: load_frozen(s, c, params.prompt, params.cache_dir) for s, c in params.models.items()}
    packed = {s: pack(llm.model) if params.evaluate.prepack and not dense else 0 for s, llm in llms.items()}
    trained = Path(checkpoint, "meta.json").is_file()  # timing does not depend on the weights
    lw = (LatentWire.from_checkpoint(params, checkpoint, M, pick_dir) if trained
          else LatentWire(params, M, pick_dir=pick_dir, hidden={s: llm.model.config.hidden_size
                                                                for s, llm in llms.items()}).eval())
    for llm in llms.values():
        lw.attach(llm)
    rows = [r for r in all_rows if not long or r["dataset"] != long][:n]
    out = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": threads,
           "device": "cpu" if not torch.cuda.is_available() else "cuda", "M": M, "n": len(rows),
           "packed_linears": packed, **trip(sender, lw, llms, rows, M, [b for b in batches if b <= len(rows)])}
    if long:
        long_rows = [r for r in all_rows if r["dataset"] == long][:n_long]
        if not long_rows:
            raise SystemExit(f"--long {long}: no such dataset in {eval_path}")
        M_long = lw.codec.M_for(long_rows[0])
        out["long"] = {long: {"M": M_long, "n": len(long_rows), **trip(sender, lw, llms, long_rows, M_long, [1])}}
    return out


def trip(sender: Sender, lw: LatentWire, llms: dict, rows: list[dict], M: int, batches) -> dict:
    """Sender, unpack + adapter and prefill against the text's prefill, per receiver and batch size."""
    sender.M = M
    sender.send(rows[0]["question"], rows[0]["context"])  # warm-up
    send_ms, payloads = [], []
    for r in rows:
        t, data = ms(lambda: sender.send(r["question"], r["context"]))
        send_ms.append(t)
        payloads.append(data)
    out = {"sender_ms_per_prompt": stats(send_ms), "payload_bytes_mean": statistics.mean(map(len, payloads)),
           "models": {}}
    for slot, llm in llms.items():
        rec = Receiver(llm)
        text_rest = [rec.embed(rec.ids(llm.template.body(r["context"], r["question"]) + llm.template.suffix))
                     for r in rows]
        res = {}
        for B in batches:
            t_text, t_unpack, t_pre = [], [], []
            for i in range(0, len(rows) - B + 1, B):
                batch = list(range(i, i + B))
                if i == 0:  # warm-up both paths
                    first_token(rec, [text_rest[k] for k in batch])
                t_text.append(ms(lambda: first_token(rec, [text_rest[k] for k in batch]))[0])
                t, rests = ms(lambda: [rec.rest(rec.read(lw.codec, payloads[k])[1], rows[k]["question"]) for k in batch])
                t_unpack.append(t)
                if i == 0:
                    first_token(rec, rests)
                t_pre.append(ms(lambda: first_token(rec, rests))[0])
            send_b = [sum(send_ms[i:i + B]) for i in range(0, len(rows) - B + 1, B)]
            trips = [s + u + p for s, u, p in zip(send_b, t_unpack, t_pre)]
            text_tokens = statistics.mean(len(x) for x in text_rest)
            lat_tokens = statistics.mean(len(rec.context_ids) + len(payload.unpack(p, sender.codebook).ids)
                                         + len(rec.ids("\nQuestion: " + r["question"] + llm.template.suffix))
                                         for p, r in zip(payloads, rows))
            tm, pm, sm, um = (statistics.median(x) for x in (t_text, t_pre, send_b, t_unpack))
            saving = tm - pm - um
            res[f"batch{B}"] = {
                "text_ttft_ms": stats(t_text), "latent_sender_ms": stats(send_b),
                "latent_unpack_adapter_ms": stats(t_unpack), "latent_prefill_ms": stats(t_pre),
                "latent_trip_ms": stats(trips),
                "trip_over_text": round(statistics.median(trips) / tm, 3),
                "prefill_speedup": round(tm / pm, 2),
                "token_compression": round(text_tokens / lat_tokens, 2),
                "speedup_over_compression": round((tm / pm) / (text_tokens / lat_tokens), 2),
                "break_even_receivers": round(sm / saving, 3) if saving > 0 else None}
        out["models"][slot] = res
    for B in batches:  # one payload read by every receiver, against each reading the text
        k = f"batch{B}"
        send = out["models"][next(iter(llms))][k]["latent_sender_ms"]["median"]
        lat = sum(m[k]["latent_unpack_adapter_ms"]["median"] + m[k]["latent_prefill_ms"]["median"]
                  for m in out["models"].values())
        text = sum(m[k]["text_ttft_ms"]["median"] for m in out["models"].values())
        out[f"all_receivers_{k}"] = {"trip_ms": round(send + lat, 2), "text_ms": round(text, 2),
                                     "trip_over_text": round((send + lat) / text, 3)}
    return out


def markdown(r: dict, head: str = "") -> str:
    kernel = "packed linear weights" if any(r.get("packed_linears", {}).values()) else "dense nn.Linear"
    lines = [f"{head}Machine: {r.get('machine')}, {r.get('threads')} threads, {r.get('device')}, {kernel}; M = {r['M']}, "
             f"n = {r['n']} prompts; payload {r['payload_bytes_mean']:.1f} B; sender {r['sender_ms_per_prompt']['median']} ms "
             "a prompt (median). Times in ms per batch, median (p90).", "",
             "| receiver | batch | text TTFT | sender | unpack + adapter | latent prefill | whole trip | trip / text | "
             "prefill speed-up | token compression | break-even receivers |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    f = lambda s: f"{s['median']:.1f} ({s['p90']:.1f})"  # noqa: E731
    for slot, per in r["models"].items():
        for b, m in per.items():
            lines.append(f"| {slot} | {b.removeprefix('batch')} | {f(m['text_ttft_ms'])} | {f(m['latent_sender_ms'])} | "
                         f"{f(m['latent_unpack_adapter_ms'])} | {f(m['latent_prefill_ms'])} | {f(m['latent_trip_ms'])} | "
                         f"{m['trip_over_text']:.2f} | {m['prefill_speedup']:.2f}x | {m['token_compression']:.2f}x | "
                         f"{m['break_even_receivers']} |")
    for k, v in r.items():
        if k.startswith("all_receivers_"):
            lines.append(f"\nOne payload for every receiver ({k.removeprefix('all_receivers_')}): trip "
                         f"{v['trip_ms']} ms against {v['text_ms']} ms of text, {v['trip_over_text']:.2f}.")
    for name, sub in r.get("long", {}).items():
        lines.append("\n" + markdown({**{k: r.get(k) for k in ("machine", "threads", "device", "packed_linears")}, **sub},
                                     f"**{name}** (the long regime, its own M). "))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval", default="data/mix/eval.jsonl")
    ap.add_argument("--checkpoint", default="models/stage3/best")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--n", type=int, default=56, help="eval prompts (default 56: 7 batches of 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense", action="store_true", help="time the dense nn.Linear receivers (no evaluate.prepack)")
    ap.add_argument("--out", default="bench/results/latency.json")
    ap.add_argument("--long", default="hotpotqa_distractor",
                    help="also time this eval dataset alone, at batch 1 and its own M ('' : none)")
    ap.add_argument("--n-long", type=int, default=16, help="prompts of --long (default 16)")
    a = ap.parse_args(argv)
    r = run(a.params, a.eval, a.checkpoint, a.pick, a.n, a.threads, dense=a.dense, long=a.long or None,
            n_long=a.n_long)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return r


if __name__ == "__main__":
    main()
