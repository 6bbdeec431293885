"""The interlingua end to end: bytes -> Z (on the wire) -> per-model soft tokens -> frozen LLM.

`LatentWire` bundles the shared encoder and one adapter per model slot. A checkpoint is a
folder with `model.safetensors` and `meta.json`; loading one at a different M resizes the
pooler's queries and the adapters' positional tables instead of failing.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import Adapter, TokenAdapter, string_table
from .config import Params
from .encoder import LatentEncoder, encode_bytes
from .features import Featurizer
from .tokens import TokenSender
from .io import atomic_path, write_json
from .llm import BODY, FrozenLLM
from .wire import quantize

ARCH_FIELDS = ("kind", "feature_model", "feature_layer", "d_z", "layers", "heads", "max_bytes",
               "hint_buckets", "d_wire", "shared_fraction", "slots", "hidden")


class LatentWire(nn.Module):
    def __init__(self, params: Params, M: int, llms: dict[str, FrozenLLM] | None = None,
                 hidden: dict[str, int] | None = None, target_norm: dict[str, float] | None = None):
        super().__init__()
        e, w = params.encoder, params.wire
        slots = list(params.models)
        hidden = hidden or {s: llms[s].model.config.hidden_size for s in slots}
        target_norm = target_norm or {s: llms[s].embedding_stats()["mean_norm"] for s in slots}
        self.arch = {"kind": e.kind, "feature_model": e.feature_model,
                     "feature_layer": e.feature_layer, "d_z": e.d_z, "layers": e.layers, "heads": e.heads, "max_bytes": e.max_bytes,
                     "hint_buckets": e.hint_buckets, "d_wire": w.d_wire,
                     "shared_fraction": w.shared_fraction, "slots": slots, "hidden": hidden}
        self.group_size, self.bits = w.group_size, w.bits
        self.featurizer = None  # kind "lm": a features.Featurizer (not a module: never trained or saved)
        if e.kind == "ids":  # the sender (sender.py) is fitted by the pick stage, not here
            self.encoder = IdSlots(M)
            self.adapters = nn.ModuleDict({s: TokenAdapter(hidden[s], M) for s in slots})
            self.split = {}
            if llms is not None:
                for s in slots:
                    self.set_table(llms[e.feature_model].tokenizer, llms[s])
            return
        if e.kind == "tokens":
            self.encoder = TokenSender(e, w.d_wire, M, hidden[e.feature_model])
        else:
            self.encoder = LatentEncoder(e, w.d_wire, M, w.shared_fraction, slots,
                                         hidden.get(e.feature_model) if e.kind == "lm" else None)
        self.adapters = nn.ModuleDict({s: Adapter(w.d_wire, hidden[s], M, e.hint_buckets, target_norm[s])
                                       for s in slots})

    @property
    def M(self) -> int:
        return self.encoder.M

    def resize(self, M: int) -> None:
        self.encoder.resize(M)
        for a in self.adapters.values():
            a.resize(M)

    def attach(self, llm: FrozenLLM) -> None:
        """kinds "lm" and "tokens": the frozen feature model (models.<encoder.feature_model>)."""
        if self.arch["kind"] == "tokens":
            self.encoder.llm = llm
        else:
            self.featurizer = Featurizer(llm, self.arch["feature_layer"], self.arch["max_bytes"])

    def set_table(self, codebook_tokenizer, llm: FrozenLLM) -> None:
        """kind ids: the frozen string mapping codebook id -> llm's embedding (not saved), and
        how many of llm's tokens each codebook string takes (self.split[slot])."""
        table, self.split[llm.slot] = string_table(codebook_tokenizer, llm)
        self.adapters[llm.slot].set_table(table)

    def quantize_codes(self, z, qat: bool = False):
        """Codes [N, d_wire] through the wire's quantisation, as one block (group scales)."""
        return quantize(z[None], self.bits, self.group_size, qat)[0]

    def encode(self, texts: list[str], with_scores: bool = False):
        """Z [B, S+n*P, d_wire], hint logits, and bytes (lm, tokens: tokens) cut per text
        (with_scores, kind "tokens": also the scorer's logits per text)."""
        if self.arch["kind"] == "tokens":
            if self.encoder.llm is None:
                raise RuntimeError("the tokens encoder needs its feature model: call attach(llm) first")
            z, hint_logits, n_cut, scores = self.encoder(texts)
            return (z, hint_logits, n_cut, scores) if with_scores else (z, hint_logits, n_cut)
        if self.arch["kind"] == "lm":
            if self.featurizer is None:
                raise RuntimeError("the lm encoder needs its feature model: call attach(llm) first")
            x, mask, n_cut = self.featurizer(texts)
        else:
            x, mask, n_cut = encode_bytes(texts, self.arch["max_bytes"])
        dev = next(self.parameters()).device
        z, hint_logits = self.encoder(x.to(dev), mask.to(dev))
        return z, hint_logits, n_cut

    def soft_tokens(self, z, hint, slot: str, bits: int | None = None, qat: bool = False):
        """The soft tokens model `slot` reads; `bits` quantises the shared and private blocks
        separately, as wire.wire_bytes counts them."""
        view = self.encoder.slot_view(z, slot)
        if bits is not None:
            S = self.encoder.S
            blocks = [view[:, :S], view[:, S:]] if S < view.shape[1] else [view]
            view = torch.cat([quantize(b, bits, self.group_size, qat) for b in blocks], dim=1)
        return self.adapters[slot](view, hint)

    def forward(self, texts: list, qat: bool = False):
        """The training path in one call (what DistributedDataParallel wraps): Z, hint logits
        and every slot's soft tokens, fed the sender's own predicted hint (and, kind "tokens",
        the scorer's logits). qat: through the wire's quantisation at wire.bits, with
        straight-through gradients."""
        if self.arch["kind"] == "ids":  # texts: the picked ids per example; no Z, hint or scores
            ids = texts
            return None, None, {s: [a(i) for i in ids] for s, a in self.adapters.items()}, None
        z, hint_logits, _, *scores = self.encode(texts, with_scores=True)
        hint = hint_logits.argmax(-1)
        bits = self.bits if qat else None
        softs = {s: self.soft_tokens(z, hint, s, bits, qat) for s in self.adapters}
        return z, hint_logits, softs, (scores[0] if scores else None)

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


class IdSlots(nn.Module):
    """kind ids: the wire side of the model holds nothing learned, only the budget M (the
    ids come from sender.Sender, which the pick stage fits)."""
    S, P = property(lambda self: self.M), 0

    def __init__(self, M: int):
        super().__init__()
        self.M = M

    def resize(self, M: int) -> None:
        self.M = M


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
        tok, model = llm.tokenizer, llm.model
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

    def rests(self, soft) -> list:
        """A [B, M, H] batch of soft tokens (the learned senders) -> rests with the suffix."""
        if isinstance(soft, (list, tuple)):
            return list(soft)
        suffix = self.embed(self.suffix_ids)
        return [torch.cat([self.to_llm(s), suffix]) for s in soft]

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

    def answer_logits(self, soft, answer_ids):
        """Logits predicting each answer token j (teacher-forced), [B, K, V] float32, on the
        soft tokens' device. soft: [B, M, H] (learned senders) or a list of rests (kind ids)."""
        rests = self.rests(soft)
        back = rests[0].device if isinstance(soft, (list, tuple)) else soft.device
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
    def generate(self, soft, max_new_tokens: int) -> list[str]:
        """Greedy answers: soft [B, M, H] (learned senders) or a list of rests (kind ids)."""
        rests = [self.to_llm(r) for r in self.rests(soft)]
        B = len(rests)
        x, mask = self.pad(rests)
        x = torch.cat([self.embed(self.prefix_ids).expand(B, -1, -1), x], 1)
        tok = self.llm.tokenizer
        gen = self.llm.model.generate(inputs_embeds=x, attention_mask=mask, cache=self.cache(B),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.llm.stop_ids(), pad_token_id=tok.pad_token_id)
        return tok.batch_decode(gen, skip_special_tokens=True)
