"""The interlingua end to end: rows -> latents (the payload's content) -> per-model soft tokens
-> a frozen LLM that reads them where the context goes, the question beside them as text.

`LatentWire` holds one codec (encoder.kind) and its learned parts. A checkpoint is a folder with
`model.safetensors` and `meta.json`; loading one at a different M resizes what depends on M
(the adapters' slot positions, the byte encoder's queries) instead of failing.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Params
from .encoder import ByteCodec
from .ids import IdCodec
from .io import atomic_path, write_json
from .llm import FrozenLLM

# what a checkpoint must match to load, per sender (the rest of its meta.json is informative):
# the sender's own knobs (read from its params section) and what every checkpoint records
SENDER_FIELDS = {"ids": ("feature_model", "rating_edges", "keep"),
                 "bytes": ("d_z", "layers", "heads", "max_bytes", "hint_buckets", "d_wire", "shared_fraction")}
ARCH_FIELDS = {kind: ("kind", *fields, "slots", "hidden") for kind, fields in SENDER_FIELDS.items()}
ARCH_ABSENT = {"rating_edges": [], "keep": None}  # what a checkpoint saved before a field was recorded had


class LatentWire(nn.Module):
    """The learned parts of the trip for every model slot, around one codec (encoder.kind):
    `IdCodec` (ids.py, the default) or `ByteCodec` (encoder.py). Both answer the same calls:

      train_softs(rows, qat) -> ({slot: [soft tokens per row]}, extra loss, logs)   training
      latents(rows) -> [payload.Latent]                                            the sender
      soft(slot, latent) -> soft tokens [n <= M, H]                                a receiver
      attach(llm), resize(M), codebook, limits, diagnose(...)
    """

    def __init__(self, params: Params, M: int, llms: dict[str, FrozenLLM] | None = None,
                 hidden: dict[str, int] | None = None, target_norm: dict[str, float] | None = None,
                 pick_dir: str | Path = "models/pick"):
        super().__init__()
        kind, slots = params.encoder.kind, list(params.models)
        hidden = hidden or {s: llms[s].model.config.hidden_size for s in slots}
        target_norm = target_norm or ({s: llms[s].embedding_stats()["mean_norm"] for s in slots} if llms
                                      else {s: 1.0 for s in slots})
        section = params.ids if kind == "ids" else params.bytes
        self.arch = {"kind": kind, **{f: getattr(section, f) for f in SENDER_FIELDS[kind]},
                     "slots": slots, "hidden": hidden}
        self.codec = (IdCodec(params, M, hidden, pick_dir) if kind == "ids"
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
        bad = [f"{f}: checkpoint {meta.get(f, ARCH_ABSENT.get(f))!r} != params {self.arch[f]!r}"
               for f in ARCH_FIELDS[self.arch["kind"]] if meta.get(f, ARCH_ABSENT.get(f)) != self.arch[f]]
        if bad:
            raise ValueError(f"{folder}: checkpoint does not match params: " + "; ".join(bad))
        M = self.M
        if meta["M"] != M:
            self.resize(meta["M"])
        self.load_state_dict(state)
        if meta["M"] != M:
            self.resize(M)
        return meta
