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
        model = pick.PickModel(meta["hidden"])
        model.load_state_dict(state)
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


# ---------------------------------------------------------------- the `pick` stage

def features_key(pool_path: Path, tokenizer) -> str:
    h = hashlib.sha256(pool_path.read_bytes())
    h.update(Path(pick.__file__).read_bytes())
    h.update(str(payload.fingerprint(tokenizer.get_vocab())).encode())
    return h.hexdigest()[:16]


def pool_features(rows: list[dict], tokenizer, path: Path, key: str, max_tokens: int):
    """(X [tokens, n] with neighbours, y [tokens], lengths [rows]) for the pool, from the
    cache at `path` when its key matches, else computed and saved there."""
    try:
        cached = load_file(str(path))
        if bytes(cached["key"].tolist()).decode() == key:
            print(f"pick: reused features {path}")
            return cached["X"], cached["y"], cached["lengths"]
    except (OSError, ValueError, KeyError):
        pass
    Xs, ys, lengths = [], [], []
    for r in tqdm(rows, desc="pick features", unit="ex", disable=None):
        read = pick.read(tokenizer, r["question"], r["context"], max_tokens)
        Xs.append(pick.with_neighbours(read.features))
        ys.append(pick.answer_labels(read, r["context"], r["answers"]))
        lengths.append(len(read.ids))
    X, y, lengths = torch.cat(Xs), torch.cat(ys), torch.tensor(lengths)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"X": X, "y": y, "lengths": lengths, "key": torch.tensor(list(key.encode()), dtype=torch.uint8)},
                  str(tmp))
    return X, y, lengths


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
    X, y, lengths = pool_features(rows, tokenizer, Path(features_path), key, pp.max_tokens)
    # a tenth of the pool's titles held out to report the pick's recall
    held = [is_eval_title("pick-dev:" + r["title"], 0.1) for r in rows]
    tok_held = torch.repeat_interleave(torch.tensor(held), lengths)
    model = pick.PickModel(pp.hidden)
    loss = pick.fit(model, X[~tok_held], y[~tok_held], pp.epochs, seed=params.seed)
    model.eval()
    sender = Sender(tokenizer, model, params.stage3.M, pp.span, pp.max_tokens)
    dev = [r for r, h in zip(rows, held) if h]
    metrics = {"pool": len(rows), "train_examples": len(rows) - len(dev), "dev_examples": len(dev),
               "answer_tokens": int(y.sum()), "loss": loss, "M": params.stage3.M, "span": pp.span,
               "dev_pick_recall": recall(sender, dev, params.stage3.M)}
    with atomic_dir(Path(out)) as folder:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "pick.safetensors"))
        write_json(folder / "meta.json", {"hidden": pp.hidden, "features": list(pick.FEATURES),
                                          "neighbours": list(pick.NEIGHBOURS), "codebook": sender.codebook})
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
