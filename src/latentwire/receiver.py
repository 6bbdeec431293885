"""The frozen receiver: one model reading "Context:" + soft tokens (or text) + the question.

`Receiver` is the one receive path: `evaluate` (every eval answer), `transfer` (the `receive`
command and `load_receiver`), `train` (teacher-forced answer logits) and bench/latency.py all
read through it. `read` turns payload bytes into this model's soft tokens (unpack, checked
against the codec's limits, then the codec's adapter), `answer` answers greedily from them.
It imports no sender and no encoder, so the text baselines (which share its prefix cache)
depend on neither.
"""
from __future__ import annotations

import copy

import torch

from . import payload
from .llm import BODY, FrozenLLM


def clean(text: str) -> str:
    """The answer is the first non-empty line of the generation."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


class Receiver:
    """Feeds [template prefix, the rest, answer tokens] to a frozen LLM.

    The rest is, for the learned senders, the M soft tokens then the template suffix (the latent
    stands for the whole body). For encoder.kind "ids" it is per example (`rest`): "Context:",
    at most M slots, then "\nQuestion: <question>" and the suffix as text, the question beside
    the slots exactly as every text baseline has it. Rests of different lengths are padded
    between the prefix and the rest (masked; positions follow the mask).

    The prefix (chat scaffolding, instruction, one-shot example) is the same for every
    example, so its key/value cache is computed once and copied per batch: each step then
    runs the model only over the rest and the answer.
    """

    def __init__(self, llm: FrozenLLM):
        self.llm = llm
        model = llm.model
        self.prefix_ids, self.suffix_ids = self.ids(llm.template.prefix), self.ids(llm.template.suffix)
        self.context_ids = self.ids(BODY.split("{context}")[0].rstrip())  # "Context:"
        with torch.no_grad():
            self.prefix_cache = model(input_ids=self.prefix_ids[None], use_cache=True).cache

    def ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.llm.tokenizer(text, add_special_tokens=False)["input_ids"],
                            dtype=torch.long, device=self.llm.device)

    def cache(self, batch: int):
        c = copy.deepcopy(self.prefix_cache)
        c.batch_repeat_interleave(batch)
        return c

    def embed(self, ids):
        return self.llm.model.get_input_embeddings()(ids)

    def to_llm(self, soft):
        """Soft tokens onto the LLM's device and dtype (it may sit on another GPU, in bf16)."""
        return soft.to(self.llm.device, self.llm.model.get_input_embeddings().weight.dtype)

    def rest(self, slots, question: str):
        """kind ids: "Context:" + the slots [n, H] + "\nQuestion: <question>" + suffix, [T, H]."""
        tail = self.ids(BODY.split("{question}")[0].split("{context}")[1] + question + self.llm.template.suffix)
        return torch.cat([self.embed(self.context_ids), self.to_llm(slots), self.embed(tail)])

    def pad(self, rests: list):
        """Left-pad the rests: x [B, T, H] and the mask over prefix + rest [B, P + T]."""
        T, P, B = max(len(r) for r in rests), len(self.prefix_ids), len(rests)
        H = rests[0].shape[-1]
        x = rests[0].new_zeros(B, T, H)
        mask = torch.zeros(B, P + T, dtype=torch.long, device=x.device)
        mask[:, :P] = 1
        rows = []
        for b, r in enumerate(rests):
            rows.append(torch.cat([x.new_zeros(T - len(r), H), r]) if len(r) < T else r)
            mask[b, P + T - len(r):] = 1
        return torch.stack(rows), mask

    def answer_logits(self, rests: list, answer_ids):
        """Logits predicting each answer token j (teacher-forced), [B, K, V] float32, on the
        rests' device."""
        back = rests[0].device
        rests = [self.to_llm(r) for r in rests]
        B, answer_ids = len(rests), answer_ids.to(self.llm.device)
        x, mask = self.pad(rests)
        x = torch.cat([x, self.embed(answer_ids[:, :-1])], 1)
        mask = torch.cat([mask, torch.ones_like(answer_ids[:, :-1])], 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)[:, len(self.prefix_ids):]
        # the last K positions are exactly those predicting answer tokens 0..K-1
        out = self.llm.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, cache=self.cache(B),
                             use_cache=True, logits_to_keep=answer_ids.shape[1])
        return out.logits.float().to(back)

    @torch.inference_mode()
    def read(self, codec, data: bytes) -> tuple[payload.Latent, torch.Tensor]:
        """Payload bytes -> (the latent they carry, this model's soft tokens [n <= M, H]).
        `codec` is a LatentWire's codec (IdCodec or ByteCodec): its codebook and limits check
        the payload (payload.PayloadError on anything else), its adapter maps it."""
        latent = payload.unpack(data, codec.codebook, codec.limits)
        return latent, codec.soft(self.llm.slot, latent)

    def answer(self, softs: list, questions: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers (first non-empty line), one per (soft tokens, question)."""
        rests = [self.rest(s, q) for s, q in zip(softs, questions)]
        return [clean(t) for t in self.generate(rests, max_new_tokens)]

    @torch.inference_mode()
    def generate(self, rests: list, max_new_tokens: int) -> list[str]:
        """Greedy answers, one per rest."""
        rests = [self.to_llm(r) for r in rests]
        B = len(rests)
        x, mask = self.pad(rests)
        x = torch.cat([self.embed(self.prefix_ids).expand(B, -1, -1), x], 1)
        tok = self.llm.tokenizer
        gen = self.llm.model.generate(inputs_embeds=x, attention_mask=mask, cache=self.cache(B),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.llm.stop_ids(), pad_token_id=tok.pad_token_id)
        return tok.batch_decode(gen, skip_special_tokens=True)
