"""The interlingua end to end: rows -> latents (the payload's content) -> per-model soft tokens
-> a frozen LLM that reads them where the context goes, the question beside them as text.

`LatentWire` holds one codec (encoder.kind) and its learned parts. A checkpoint is a folder with
`model.safetensors` and `meta.json`; loading one at a different M resizes what depends on M
(the adapters' slot positions, the byte encoder's queries) instead of failing.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Params
from .encoder import ByteCodec
from .ids import IdCodec
from .io import atomic_path, write_json
from .llm import BODY, FrozenLLM

ARCH_FIELDS = ("kind", "feature_model", "d_z", "layers", "heads", "max_bytes", "hint_buckets", "d_wire",
               "shared_fraction", "slots", "hidden")


class LatentWire(nn.Module):
    """The learned parts of the trip for every model slot, around one codec (encoder.kind):
    `IdCodec` (ids.py, the default) or `ByteCodec` (encoder.py). Both answer the same calls:

      train_softs(rows, qat) -> ({slot: [soft tokens per row]}, extra loss, logs)   training
      latents(rows) -> [payload.Latent]                                            the sender
      soft(slot, latent) -> soft tokens [n <= M, H]                                a receiver
      attach(llm), resize(M), codebook, limits, selected_text(row), pick_recall(rows, seed), diagnose(...)
    """

    def __init__(self, params: Params, M: int, llms: dict[str, FrozenLLM] | None = None,
                 hidden: dict[str, int] | None = None, target_norm: dict[str, float] | None = None,
                 pick_dir: str | Path = "models/pick"):
        super().__init__()
        e, w = params.encoder, params.wire
        slots = list(params.models)
        hidden = hidden or {s: llms[s].model.config.hidden_size for s in slots}
        target_norm = target_norm or ({s: llms[s].embedding_stats()["mean_norm"] for s in slots} if llms
                                      else {s: 1.0 for s in slots})
        self.arch = {"kind": e.kind, "feature_model": e.feature_model, "d_z": e.d_z, "layers": e.layers,
                     "heads": e.heads, "max_bytes": e.max_bytes, "hint_buckets": e.hint_buckets,
                     "d_wire": w.d_wire, "shared_fraction": w.shared_fraction, "slots": slots, "hidden": hidden}
        self.codec = (IdCodec(params, M, hidden, pick_dir) if e.kind == "ids"
                      else ByteCodec(params, M, hidden, target_norm))
        for llm in (llms or {}).values():
            self.codec.attach(llm)

    @classmethod
    def from_checkpoint(cls, params: Params, folder: str | Path, M: int | None = None,
                        pick_dir: str | Path = "models/pick") -> "LatentWire":
        """A trained LatentWire in eval mode at M (default: the checkpoint's own), without the
        frozen models: `attach(llm)` each receiver before `soft`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: unreadable or missing checkpoint: {e}") from None
        lw = cls(params, M or meta["M"], hidden=meta.get("hidden"), pick_dir=pick_dir)
        lw.load(folder)
        return lw.eval()

    @property
    def M(self) -> int:
        return self.codec.M

    def resize(self, M: int) -> None:
        self.codec.resize(M)

    def attach(self, llm: FrozenLLM) -> None:
        self.codec.attach(llm)

    def forward(self, rows: list[dict], qat: bool = False):
        """The training path in one call (what DistributedDataParallel wraps)."""
        return self.codec.train_softs(rows, qat)

    # ------------------------------------------------------------ checkpoints
    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        write_json(folder / "meta.json", {**self.arch, "M": self.M, **(extra or {})})

    def load(self, folder: str | Path) -> dict:
        """Load weights saved at any M (resized to ours); refuse a different architecture."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            state = load_file(str(folder / "model.safetensors"))
        except (OSError, ValueError, SafetensorError) as e:  # truncated or garbled files
            raise ValueError(f"{folder}: unreadable or corrupted checkpoint: {e}") from None
        bad = [f"{f}: checkpoint {meta.get(f)!r} != params {self.arch[f]!r}"
               for f in ARCH_FIELDS if meta.get(f) != self.arch[f]]
        if bad:
            raise ValueError(f"{folder}: checkpoint does not match params: " + "; ".join(bad))
        M = self.M
        if meta["M"] != M:
            self.resize(meta["M"])
        self.load_state_dict(state)
        if meta["M"] != M:
            self.resize(M)
        return meta


# ---------------------------------------------------------------- the frozen receiver
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
