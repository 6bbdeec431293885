"""encoder.kind ids, the default, end to end: rows -> the sender's pick (sender.py, fitted by the
`pick` stage) -> codebook ids (payload kind ids, 16 bits a slot) -> each model's TokenAdapter.

Nothing on the sender's side is trained by the curriculum: it trains the adapters only. Each
adapter's base is the receiver's own embedding of the id's string (`attach` builds it from
the receiver), so a receiver that shares the codebook's tokenizer reads the ids exactly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import pick
from .adapter import TokenAdapter, string_table
from .payload import KIND_IDS, Latent, Limits
from .sender import Sender


class IdCodec(nn.Module):
    def __init__(self, params, M: int, hidden: dict[str, int], pick_dir: str | Path = "models/pick"):
        super().__init__()
        self.params, self.pick_dir, self._M = params, Path(pick_dir), M
        self.adapters = nn.ModuleDict({s: TokenAdapter(hidden[s], M, params.train.adapter_rank)
                                       for s in params.models})
        self._sender: Sender | None = None
        self.split: dict[str, torch.Tensor] = {}   # slot -> receiver tokens per codebook string
        self.memo: dict[str, list[int]] = {}       # row id -> picked ids (training rows only)

    @property
    def M(self) -> int:
        return self._M

    def M_for(self, row: dict) -> int:
        """The positions this row's latent may take: its dataset's own M, else M."""
        return self.params.positions(row.get("dataset"), self._M)

    def pick(self, row: dict):
        return self.sender.pick(row["question"], row["context"], self.M_for(row))

    @property
    def sender(self) -> Sender:
        """The fitted pick, loaded on first use (models/pick)."""
        if self._sender is None:
            self._sender = Sender.load(self.params, self.pick_dir, self._M)
        return self._sender

    @property
    def codebook(self) -> int:
        return self.sender.codebook

    @property
    def limits(self) -> Limits:
        """What an unpacked payload's ids must satisfy here: the codebook's tokens, at most M
        (or a dataset's own larger M)."""
        return self.sender.limits(max(self.params.positions(n, self._M) for n in [None, *self.params.data.datasets]))

    def resize(self, M: int) -> None:
        self._M, self.memo = M, {}
        if self._sender is not None:
            self._sender.M = M
        for a in self.adapters.values():
            a.resize(M)

    def attach(self, llm) -> None:
        """Build the frozen string mapping codebook id -> llm's embedding (never saved)."""
        table, self.split[llm.slot] = string_table(self.sender.tokenizer, llm)
        self.adapters[llm.slot].set_table(table)

    def ids(self, row: dict) -> list[int]:
        if row["id"] not in self.memo:
            self.memo[row["id"]] = self.pick(row).ids
        return self.memo[row["id"]]

    def train_softs(self, rows: list[dict], qat: bool):
        """Per slot the soft tokens of every row's picked ids (exact: no quantisation to train
        through); no extra loss."""
        ids = [torch.tensor(self.ids(r), dtype=torch.long) for r in rows]
        return {s: [a(i) for i in ids] for s, a in self.adapters.items()}, 0.0, {}

    def latents(self, rows: list[dict]) -> list[Latent]:
        return [Latent(KIND_IDS, 16, None, ids=self.pick(r).ids) for r in rows]

    def soft(self, slot: str, latent: Latent) -> torch.Tensor:
        return self.adapters[slot](torch.tensor(latent.ids, dtype=torch.long))

    @torch.no_grad()
    def diagnose(self, slot: str, llm, latent: Latent, sent: Latent, soft: torch.Tensor) -> dict:
        """Per slot counts: exact (the unpacked id is the sent one), readable (the model's
        nearest token to the soft token spells the id's string), split (the string takes more
        than one of the model's tokens: it still takes one position)."""
        if not hasattr(self, "_unit") or self._unit[0] != slot:
            E = llm.model.get_input_embeddings().weight.detach().float()
            strings = [self.sender.tokenizer.decode([i]) for i in range(len(self.sender.tokenizer))]
            self._unit = (slot, torch.nn.functional.normalize(E, dim=-1), strings)
        _, E, strings = self._unit
        near = (torch.nn.functional.normalize(soft.float(), dim=-1) @ E.T).argmax(-1).tolist() if latent.ids else []
        return {"slots": len(latent.ids), "exact": sum(a == b for a, b in zip(latent.ids, sent.ids)),
                "readable": sum(llm.tokenizer.decode([n]) == strings[i] for n, i in zip(near, latent.ids)),
                "split": int((self.split[slot][torch.tensor(latent.ids, dtype=torch.long)] > 1).sum())}
