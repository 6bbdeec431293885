"""The text baselines: what each model answers when it reads (a cut of) the context as text.

Every variant has the same template and greedy decoding; only the context part differs:
  text                 the full context;
  m_token              the context cut to M tokens of that model's tokenizer (M = the dataset's own
                       data.datasets.<name>.M, else stage3.M);
  equal_byte           the context cut to B UTF-8 bytes, B = that example's measured payload;
  selected_text        the sender's picked tokens as plain text, cut to M of the model's tokens
                       (the code's ceiling at equal positions; senders with a pick only);
  selected_equal_byte  the picked text cut to B bytes (question-aware extractive compression).
The question travels whole beside the context part in every variant, as beside the latent.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from .latent import Receiver
from .llm import FrozenLLM
from .metrics import best_em, best_f1
from .wire import cut_utf8

SELECTED = ("selected_text", "selected_equal_byte")


def clean(text: str) -> str:
    """The answer is the first non-empty line of the generation."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


@torch.inference_mode()
def generate_text(llm: FrozenLLM, prompts: list[str], max_new_tokens: int, batch_size: int,
                  desc: str = "") -> list[str]:
    """Batched greedy generation, longest prompts first to limit padding.

    Every template prompt opens with the same prefix (chat scaffolding, instruction, one-shot
    example: about a third of a full-text prompt's tokens). As in `Receiver`, its key/value
    cache is computed once and copied per batch, and each batch runs only its prompts' rest,
    padded between the prefix and the rest (the attention mask skips the pads; positions
    follow the mask). A batch whose prompts do not all tokenise to the prefix's ids first
    runs in full, left-padded."""
    tok = llm.tokenizer
    rec = Receiver(llm)
    P = len(rec.prefix_ids)
    prefix = rec.prefix_ids.tolist()
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    out: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False,
                      disable=None, unit="batch"):
        idx = order[start:start + batch_size]
        cached = P > 0 and all(ids[i][:P] == prefix and len(ids[i]) > P for i in idx)
        head = prefix if cached else []
        rest = [ids[i][len(head):] for i in idx]
        T = max(len(r) for r in rest)
        input_ids = torch.full((len(idx), len(head) + T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for j, r in enumerate(rest):
            input_ids[j, :len(head)], mask[j, :len(head)] = torch.tensor(head, dtype=torch.long), 1
            input_ids[j, len(head) + T - len(r):], mask[j, len(head) + T - len(r):] = torch.tensor(r), 1
        extra = {"cache": rec.cache(len(idx))} if cached else {}
        gen = llm.model.generate(input_ids=input_ids.to(llm.device), attention_mask=mask.to(llm.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=llm.stop_ids(),
                                 pad_token_id=tok.pad_token_id, **extra)
        texts = tok.batch_decode(gen[:, input_ids.shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = clean(t)
    return out


def cut_tokens(llm: FrozenLLM, text: str, n: int) -> str:
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return llm.tokenizer.decode(ids)


def text_variants(llm: FrozenLLM, row: dict, M: int, B: int, selected: str | None = None) -> dict[str, str]:
    """The prompt of each text baseline for one example; with `selected` (the picked tokens
    as text, encoder.kind ids) also selected_text (cut to M of this model's tokens) and
    selected_equal_byte (cut to B bytes)."""
    t, q, c = llm.template, row["question"], row["context"]
    out = {"text": t.render(c, q), "m_token": t.render(cut_tokens(llm, c, M), q),
           "equal_byte": t.render(cut_utf8(c, B), q)}
    if selected is not None:
        out["selected_text"] = t.render(cut_tokens(llm, selected, M), q)
        out["selected_equal_byte"] = t.render(cut_utf8(selected, B), q)
    return out


def score(preds: list[str], rows: list[dict]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {"f1": sum(best_f1(p, r["answers"]) for p, r in zip(preds, rows)) / n,
            "em": sum(best_em(p, r["answers"]) for p, r in zip(preds, rows)) / n}


def by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["dataset"]].append(r)
    return dict(sorted(out.items()))


def evaluate_model(llm: FrozenLLM, rows: list[dict], M, B, max_new_tokens: int,
                   batch_size: int, predictions: list[dict], selected: dict | None = None) -> dict:
    """The text baselines for one model, per dataset; appends per-example predictions.
    M: positions, one int or per dataset name;
    B: the equal-byte budget, one int or per example id (the measured payload bytes);
    selected: the picked text per example id (a sender with a pick: adds the SELECTED baselines)."""
    result = {}
    budget = (lambda r: B[r["id"]]) if isinstance(B, dict) else (lambda r: B)  # noqa: E731
    names = ("text", "m_token", "equal_byte") + (SELECTED if selected is not None else ())
    for ds, ds_rows in by_dataset(rows).items():
        m = M[ds] if isinstance(M, dict) else M
        variants = [text_variants(llm, r, m, budget(r), selected and selected[r["id"]]) for r in ds_rows]
        bodies = [llm.template.body(r["context"], r["question"]) for r in ds_rows]
        res = {"n": len(ds_rows),
               "prompt_bytes": sum(len(b.encode("utf-8")) for b in bodies) / len(bodies),
               "prompt_tokens": sum(len(llm.tokenizer(b, add_special_tokens=False)["input_ids"])
                                    for b in bodies) / len(bodies),
               "context_tokens": sum(len(llm.tokenizer(r["context"], add_special_tokens=False)["input_ids"])
                                     for r in ds_rows) / len(ds_rows)}
        preds = {}
        for name in names:
            preds[name] = generate_text(llm, [v[name] for v in variants], max_new_tokens,
                                        batch_size, desc=f"{llm.slot}/{ds}/{name}")
            res[name] = score(preds[name], ds_rows)
        res["m_token"]["tokens"] = m
        res["equal_byte"]["bytes"] = sum(budget(r) for r in ds_rows) / len(ds_rows)
        res["context_bytes"] = sum(len(r["context"].encode("utf-8")) for r in ds_rows) / len(ds_rows)
        res["question_bytes"] = sum(len(r["question"].encode("utf-8")) for r in ds_rows) / len(ds_rows)
        if selected is not None:
            cuts = [cut_tokens(llm, selected[r["id"]], m) for r in ds_rows]
            res["selected_text"]["bytes"] = sum(len(c.encode("utf-8")) for c in cuts) / len(cuts)
            res["selected_text"]["tokens"] = m
            res["selected_equal_byte"]["bytes"] = res["equal_byte"]["bytes"]
        result[ds] = res
        for i, r in enumerate(ds_rows):
            predictions.append({"model": llm.slot, "dataset": ds, "id": r["id"], "title": r.get("title", r["id"]),
                                "question": r["question"], "answers": r["answers"],
                                **{f"pred_{k}": v[i] for k, v in preds.items()},
                                **{f"f1_{k}": best_f1(v[i], r["answers"]) for k, v in preds.items()}})
    return result


def m_token_bytes(llm: FrozenLLM, rows: list[dict], M: int) -> float:
    """Mean UTF-8 bytes of the M-token context cut (the m_token baseline's bytes on the frontier)."""
    return sum(len(cut_tokens(llm, r["context"], M).encode("utf-8")) for r in rows) / max(len(rows), 1)
