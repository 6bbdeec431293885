"""The sender of encoder.kind "ids", and the `pick` stage that trains its pick.

    python -m latentwire pick --params params.yaml     # data/mix/pool.jsonl -> models/pick/

The sender reads question + context with nothing but its tokenizer (the codebook: the
vocabulary of models.<encoder.feature_model>), picks at most M context tokens (`pick.py`) and
packs their ids, 16 bits each, into a payload (`payload.py`). The question is not in the
payload: it travels beside it as text, in every variant alike.

The stage computes the pick's features once for the train-split pool (data/pick/features.
safetensors, reused while the pool, tokenizer and pick.py are unchanged), fits the pick model
on all but a title-held-out tenth of the pool, and reports that tenth's pick_recall in
metrics/pick.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from . import payload, pick
from .config import Params, load_params
from .data import is_eval_title
from .io import atomic_dir, atomic_path, read_jsonl, write_json
from .llm import model_folder


@dataclass
class Picked:
    """One sent context: the ids on the wire, the spans they came from, and the read."""
    ids: list[int]
    spans: list[tuple[int, int]]
    read: pick.Read

    def texts(self, context: str) -> list[str]:
        return pick.span_texts(self.read, context, self.spans)


class Sender:
    """question + context -> payload bytes. Load once (`Sender.load`), then `send` per prompt."""

    def __init__(self, tokenizer, model: pick.PickModel, M: int, span: int, max_tokens: int = 1024):
        self.tokenizer, self.model, self.M, self.span, self.max_tokens = tokenizer, model, M, span, max_tokens
        self.codebook = payload.fingerprint(tokenizer.get_vocab())
        sep = tokenizer(pick.SEPARATOR, add_special_tokens=False)["input_ids"]
        self.sep_id = sep[0]

    @classmethod
    def load(cls, params: Params, folder: str | Path = "models/pick", M: int | None = None) -> "Sender":
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            state = load_file(str(folder / "pick.safetensors"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: no trained pick ({e}): run `dvc repro pick`") from None
        model = pick.PickModel(meta["hidden"], meta["d_embed"])
        model.load_state_dict(state)
        model.set_embeddings(load_embeddings(params))
        model.eval()
        return cls(load_tokenizer(params), model, M or params.stage3.M, params.pick.span,
                   params.pick.max_tokens)

    def pick(self, question: str, context: str, M: int | None = None) -> Picked:
        r = pick.read(self.tokenizer, question, context, self.max_tokens)
        spans = pick.spans_for(self.model.score(r), r.sentence, M or self.M, self.span)
        return Picked(pick.picked_ids(r, spans, self.sep_id), spans, r)

    def send(self, question: str, context: str) -> bytes:
        if not context.strip():
            raise ValueError("send: the context is empty")
        return payload.pack(payload.Latent(payload.KIND_IDS, 16, None, ids=self.pick(question, context).ids),
                            self.codebook)

    def decode(self, ids: list[int]) -> str:
        """The picked tokens as plain text (the selected_text baselines)."""
        return self.tokenizer.decode(ids).strip()


def load_tokenizer(params: Params):
    slot = params.encoder.feature_model
    return AutoTokenizer.from_pretrained(model_folder(params.models[slot], params.cache_dir))


def load_embeddings(params: Params) -> torch.Tensor:
    """The codebook model's input embedding table [V, H], read from its safetensors files
    without building the model (any other layout: the model is loaded once and dropped)."""
    cfg = params.models[params.encoder.feature_model]
    folder = Path(model_folder(cfg, params.cache_dir))
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(f), framework="pt") as st:
            key = next((k for k in st.keys() if k.endswith("embed_tokens.weight")), None)
            if key is not None:
                return st.get_tensor(key).float()
    from .llm import load_frozen
    llm = load_frozen(params.encoder.feature_model, cfg, params.prompt, params.cache_dir)
    return llm.model.get_input_embeddings().weight.detach().float().cpu()


# ---------------------------------------------------------------- the `pick` stage

def features_key(pool_path: Path, tokenizer) -> str:
    h = hashlib.sha256(pool_path.read_bytes())
    h.update(Path(pick.__file__).read_bytes())
    h.update(str(payload.fingerprint(tokenizer.get_vocab())).encode())
    return h.hexdigest()[:16]


def pool_features(rows: list[dict], tokenizer, path: Path, key: str, max_tokens: int):
    """(reads, labels) for the pool: from the cache at `path` when its key matches, else
    computed and saved there (features, token ids, question ids and answer labels)."""
    try:
        c = load_file(str(path))
        if bytes(c["key"].tolist()).decode() == key:
            print(f"pick: reused features {path}")
            split = lambda t, n: torch.split(t, n.tolist())  # noqa: E731
            reads = [pick.Read(i.tolist(), [], [], f, q.tolist()) for f, i, q in
                     zip(split(c["features"], c["lengths"]), split(c["ids"], c["lengths"]),
                         split(c["q_ids"], c["q_lengths"]))]
            return reads, list(split(c["y"], c["lengths"]))
    except (OSError, ValueError, KeyError):
        pass
    reads, labels = [], []
    for r in tqdm(rows, desc="pick features", unit="ex", disable=None):
        reads.append(pick.read(tokenizer, r["question"], r["context"], max_tokens))
        labels.append(pick.answer_labels(reads[-1], r["context"], r["answers"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"features": torch.cat([r.features for r in reads]),
            "ids": torch.tensor([i for r in reads for i in r.ids]),
            "lengths": torch.tensor([len(r.ids) for r in reads]),
            "q_ids": torch.tensor([i for r in reads for i in r.q_ids]),
            "q_lengths": torch.tensor([len(r.q_ids) for r in reads]),
            "y": torch.cat(labels), "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}
    with atomic_path(path) as tmp:
        save_file(blob, str(tmp))
    return reads, labels


def recall(sender: Sender, rows: list[dict], M: int) -> dict[str, float]:
    """pick_recall per dataset: the gold answer wholly inside one picked span."""
    hits: dict[str, list[bool]] = {}
    for r in rows:
        p = sender.pick(r["question"], r["context"], M)
        hits.setdefault(r["dataset"], []).append(pick.contains_answer(p.texts(r["context"]), r["answers"]))
    return {ds: sum(h) / len(h) for ds, h in sorted(hits.items())}


def main(params_path: str = "params.yaml", pool_path: str = "data/mix/pool.jsonl",
         features_path: str = "data/pick/features.safetensors", out: str = "models/pick",
         metrics_path: str = "metrics/pick.json") -> dict:
    t0 = time.time()
    params = load_params(params_path)
    pp = params.pick
    rows = read_jsonl(pool_path)
    if not rows:
        raise ValueError(f"{pool_path}: no examples to train the pick on")
    tokenizer = load_tokenizer(params)
    key = features_key(Path(pool_path), tokenizer)
    reads, labels = pool_features(rows, tokenizer, Path(features_path), key, pp.max_tokens)
    # a tenth of the pool's titles held out to report the pick's recall
    held = [is_eval_title("pick-dev:" + r["title"], 0.1) for r in rows]
    E = load_embeddings(params)
    model = pick.PickModel(pp.hidden, E.shape[1])
    model.set_embeddings(E)
    loss = pick.fit(model, [r for r, h in zip(reads, held) if not h], [y for y, h in zip(labels, held) if not h],
                    pp.epochs, pp.batch_size, pp.lr, seed=params.seed)
    model.eval()
    sender = Sender(tokenizer, model, params.stage3.M, pp.span, pp.max_tokens)
    dev = [r for r, h in zip(rows, held) if h]
    metrics = {"pool": len(rows), "train_examples": len(rows) - len(dev), "dev_examples": len(dev),
               "answer_tokens": int(sum(y.sum() for y in labels)), "loss": loss, "M": params.stage3.M, "span": pp.span,
               "dev_pick_recall": recall(sender, dev, params.stage3.M)}
    with atomic_dir(Path(out)) as tmp_folder:  # both files swap in together
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_folder / "pick.safetensors"))
        write_json(tmp_folder / "meta.json", {"hidden": pp.hidden, "d_embed": E.shape[1],
                                          "features": list(pick.FEATURES), "codebook": sender.codebook})
    metrics["wall_s"] = round(time.time() - t0, 1)
    write_json(metrics_path, metrics)
    print(f"pick: dev pick_recall at M={params.stage3.M} {metrics['dev_pick_recall']}, {metrics['wall_s']:.0f}s")
    return metrics


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--pool", default="data/mix/pool.jsonl", help="train-split pool written by prepare-mix")
    p.add_argument("--features", default="data/pick/features.safetensors",
                   help="the pool's features, computed once and reused (default: %(default)s)")
    p.add_argument("--out", default="models/pick", help="the fitted pick (default: %(default)s)")
    p.add_argument("--metrics", default="metrics/pick.json", help="held-out pick recall (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    main(args.params, args.pool, args.features, args.out, args.metrics)
