"""The lm encoder's input: a frozen model's hidden states over the full text prompt.

The feature model reads exactly what it would read as a text receiver (template prefix +
body + suffix). The prefix is the same for every prompt, so it runs once and its key/value
cache is reused; only the body + suffix positions are returned, and they have seen the
instruction, the one-shot example and (at the suffix) the whole question. Features are
frozen, so each prompt's are computed once per process and kept (like the teacher cache).
"""
from __future__ import annotations

import copy

import torch

from .llm import FrozenLLM


class Featurizer:
    """texts (template bodies) -> hidden states [B, T, H] float32, mask [B, T], tokens cut."""

    def __init__(self, llm: FrozenLLM, layer: int = -1, max_tokens: int = 1024, batch_size: int = 8):
        self.llm, self.layer, self.max_tokens, self.batch_size = llm, layer, max_tokens, batch_size
        tok = llm.tokenizer
        self.prefix_ids = tok(llm.template.prefix, add_special_tokens=False)["input_ids"]
        self.suffix_ids = tok(llm.template.suffix, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ids = torch.tensor([self.prefix_ids], device=llm.device)
            self.prefix_cache = llm.model(input_ids=ids, use_cache=True).cache
        self.memo: dict[str, tuple[torch.Tensor, int]] = {}

    @property
    def dim(self) -> int:
        return self.llm.model.config.hidden_size

    def ids(self, text: str) -> tuple[list[int], int]:
        """Body tokens (cut to leave room for the suffix) + suffix, and the tokens cut."""
        body = self.llm.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = max(self.max_tokens - len(self.suffix_ids), 1)
        return body[:room] + self.suffix_ids, max(0, len(body) - room)

    @torch.no_grad()
    def compute(self, texts: list[str]) -> None:
        """Fill the memo for texts not seen yet, in right-padded batches."""
        todo = sorted({t for t in texts if t not in self.memo}, key=len)
        pad = self.llm.tokenizer.pad_token_id or 0
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            seqs = [self.ids(t) for t in chunk]
            T = max(len(s) for s, _ in seqs)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros(len(chunk), len(self.prefix_ids) + T, dtype=torch.long)
            mask[:, :len(self.prefix_ids)] = 1
            for j, (s, _) in enumerate(seqs):
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, len(self.prefix_ids):len(self.prefix_ids) + len(s)] = 1
            cache = copy.deepcopy(self.prefix_cache)
            cache.batch_repeat_interleave(len(chunk))
            dev = self.llm.device
            out = self.llm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), cache=cache,
                                 use_cache=True, output_hidden_states=True)
            h = out.hidden_states[self.layer].float().cpu()
            for j, (t, (s, cut)) in enumerate(zip(chunk, seqs)):
                self.memo[t] = (h[j, :len(s)].clone(), cut)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        self.compute(texts)
        rows = [self.memo[t] for t in texts]
        T = max(h.shape[0] for h, _ in rows)
        feats = torch.zeros(len(texts), T, self.dim)
        mask = torch.zeros(len(texts), T, dtype=torch.bool)
        for j, (h, _) in enumerate(rows):
            feats[j, :h.shape[0]], mask[j, :h.shape[0]] = h, True
        return feats, mask, [cut for _, cut in rows]
