"""The sender of encoder.kind "ids", and the `pick` stage that trains its pick.

    python -m latentwire pick --params params.yaml     # data/mix/pool.jsonl -> models/pick/

The sender reads question + context with nothing but its tokenizer (the codebook: the
vocabulary of models.<ids.feature_model>), picks at most M context tokens (`pick.py`) and
packs their ids, 16 bits each, into a payload (`payload.py`). The question is not in the
payload: it travels beside it as text, in every variant alike. With ids.keep (variable-rate
slots, `Sender.slots`) it picks more tokens than M and lays them out in M receiver positions:
the pick's `keep` best-rated tokens one a position, the rest in adjacent pairs (`pair_up`).

The stage computes the pick's features once for the train-split pool (data/pick/features.
safetensors, reused while the pool, tokenizer, pick.max_tokens and pick.py are unchanged), fits
the pick model (pick.members fits from successive seeds, side by side, their ratings averaged) on
all but a title-held-out tenth of the pool, chooses how the pick spends its
positions (span width, run margin, the support head's weight, paragraph coverage) on that tenth at pick.dev_M, and
reports the tenth's pick_recall and support_recall in metrics/pick.json. Nothing here reads the
eval mix.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from . import payload, pick
from .config import Params, PickConfig, load_params
from .data import is_eval_title
from .io import atomic_dir, atomic_path, read_jsonl, write_json
from .llm import model_folder


@dataclass
class Picked:
    """One sent context: the ids on the wire, the spans they came from, the read, (the rating
    channel on) each id's rating bucket (a separator's: 0) and (ids.keep) each id's layout bit
    (1: it shares a receiver position with the next id)."""
    ids: list[int]
    spans: list[tuple[int, int]]
    read: pick.Read
    ratings: list[int] | None = None
    pairs: list[int] | None = None

    def texts(self, context: str) -> list[str]:
        return pick.span_texts(self.read, context, self.spans)


class Sender:
    """question + context -> payload bytes. Load once (`Sender.load`), then `send` per prompt."""

    def __init__(self, tokenizer, model: pick.Ensemble, M: int, span: int, max_tokens: int = 2048,
                 cover: int = 0, grow: float | None = None, whole_words: bool = False,
                 rating_edges: list[float] = (), keep: int | None = None):
        self.tokenizer, self.model, self.M, self.span, self.max_tokens = tokenizer, model, M, span, max_tokens
        self.cover, self.grow = cover, grow
        self.whole_words = whole_words  # spans end between words (pick.spans_for); False: anywhere
        self.rating_edges = list(rating_edges)  # ids.rating_edges: [] sends ids alone (payload kind ids)
        self.keep = keep  # ids.keep: None, one id a position; else variable-rate slots (`slots`)
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
        if meta.get("features") != list(pick.FEATURES):
            raise ValueError(f"{folder}: the pick was fitted on other features than pick.py reads: "
                             "run `dvc repro pick`")
        if "members" not in meta:
            raise ValueError(f"{folder}: a pick saved before its members were averaged: run `dvc repro pick`")
        model = pick.Ensemble([pick.PickModel(meta["hidden"], meta["d_embed"]) for _ in range(meta["members"])],
                              meta["support_weight"])
        model.load_state_dict(state)
        model.set_embeddings(load_embeddings(params))
        model.eval()
        return cls(load_tokenizer(params), model, M or params.stage3.M, meta["span"],
                   params.pick.max_tokens, meta["cover"], meta.get("grow"),  # no "grow": a pick of before it
                   params.pick.whole_words, params.ids.rating_edges, params.ids.keep)

    @property
    def rating_bits(self) -> int:
        return len(self.rating_edges).bit_length()

    def pick(self, question: str, context: str, M: int | None = None) -> Picked:
        """The pick at M tokens (one a receiver position): the picked text of the baselines."""
        r = pick.read(self.tokenizer, question, context, self.max_tokens)
        logits = self.model.logits(r) if r.ids else torch.zeros(0, 2)
        picked = self.spend(r, (logits[:, 0] + self.model.support_weight * logits[:, 1]).tolist(), M or self.M)
        if self.rating_edges:  # the pick's answer probability of each sent token, as its bucket
            buckets = torch.bucketize(torch.sigmoid(logits[:, 0]), torch.tensor(self.rating_edges)).tolist()
            picked.ratings = pick.lay_out(buckets, picked.spans, 0)
        return picked

    def slots(self, question: str, context: str, M: int | None = None) -> Picked:
        """What the latent carries in M receiver positions: the pick at M, or with ids.keep the
        variable-rate layout of the most picked tokens (at most 2M) that fits M positions, the
        pick's `keep` best-rated of them one a position and the rest in pairs (`pair_up`)."""
        M = M or self.M
        if self.keep is None:
            return self.pick(question, context, M)
        r = pick.read(self.tokenizer, question, context, self.max_tokens)
        scores = self.model.score(r)
        for budget in range(min(2 * M, 255), M - 1, -1):  # at most 255 ids (the header's n); at budget M
            # one id a position fits: the loop ends there
            p = self.spend(r, scores, budget)
            p.pairs = pair_up(p.spans, sure(p.spans, scores, self.keep))
            if len(p.ids) - sum(p.pairs) <= M:
                return p
        raise AssertionError("unreachable: the pick at M fits M positions")

    def latent(self, p: Picked) -> payload.Latent:
        """What the payload carries for a pick: the ids (kind ids) and, the rating channel on,
        each one's rating bucket (kind rated ids), or with ids.keep each one's layout bit (kind
        paired ids)."""
        if p.pairs is not None:
            return payload.Latent(payload.KIND_PAIRED_IDS, 16, None, ids=p.ids, pairs=p.pairs)
        if not self.rating_edges:
            return payload.Latent(payload.KIND_IDS, 16, None, ids=p.ids)
        return payload.Latent(payload.KIND_RATED_IDS, 16, None, ids=p.ids, ratings=p.ratings,
                              rating_bits=self.rating_bits)

    def spend(self, r: pick.Read, scores: list[float], M: int) -> Picked:
        """The spans that fill M positions for these token scores, and their ids."""
        spans = pick.spans_for(scores, r.sentence, M, self.span, r.paragraph, self.cover, self.grow,
                               r.word if self.whole_words else None)
        return Picked(pick.picked_ids(r, spans, self.sep_id), spans, r)

    def send(self, question: str, context: str) -> bytes:
        if not context.strip():
            raise ValueError("send: the context is empty")
        return payload.pack(self.latent(self.slots(question, context)), self.codebook, self.limits())

    def decode(self, ids: list[int]) -> str:
        """The picked tokens as plain text (the selected_text baselines)."""
        return self.tokenizer.decode(ids).strip()

    def compress(self, question: str, context: str, budget: int | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> str:
        """The picked text in at most `budget` tokens of `tokenizer` (a receiver's; default: the
        sender's own), for any LLM to read in place of the context. The pick fills `budget`
        positions (default: M) with the spans it rates best for the question, in context order,
        joined by " ..."; the text is then cut to `budget` tokens of `tokenizer`. At budget M it is
        the context of the selected_text baseline. The pick reads the first pick.max_tokens
        tokens of the context."""
        budget = self.M if budget is None else budget
        if budget < 1:
            raise ValueError(f"compress: the budget must be at least 1 token, not {budget}")
        if not context.strip():
            raise ValueError("compress: the context is empty")
        text = self.decode(self.pick(question, context, budget).ids)
        tok = self.tokenizer if tokenizer is None else tokenizer
        return tok.decode(tok(text, add_special_tokens=False)["input_ids"][:budget])

    def limits(self, M: int | None = None) -> payload.Limits:
        """What a receiver of this codebook accepts (payload.unpack): ids in at most M positions,
        each a token of the tokenizer and none of its special or control tokens, rated and laid
        out as this sender rates and lays them out."""
        t = self.tokenizer
        special = set(t.all_special_ids) | {i for i, a in t.added_tokens_decoder.items() if a.special}
        return payload.Limits(len(t), M or self.M, frozenset(special), self.rating_bits, self.keep is not None)


def sure(spans: list[tuple[int, int]], scores: list[float], keep: int) -> frozenset[int]:
    """The `keep` picked tokens (indices into the read) the pick rates highest: the ones it is
    surest hold the answer."""
    idx = [t for a, b in spans for t in range(a, b)]
    return frozenset(sorted(idx, key=lambda t: -scores[t])[:keep])


def pair_up(spans: list[tuple[int, int]], single: frozenset[int] = frozenset()) -> list[int]:
    """The layout bits of the picked ids (`pick.picked_ids`: span after span, a separator between
    two that do not touch): adjacent tokens of one span go in pairs (1 on the first of a pair, 0
    on the second), except a token in `single` (indices into the read), the odd token at a span's
    end and the separator, which take a position alone (0)."""
    out: list[int] = []
    for j, (a, b) in enumerate(spans):
        if j and spans[j - 1][1] < a:
            out.append(0)
        t = a
        while t < b:
            two = t + 1 < b and t not in single and t + 1 not in single
            out += [1, 0] if two else [0]
            t += 2 if two else 1
    return out


def load_tokenizer(params: Params):
    slot = params.ids.feature_model
    return AutoTokenizer.from_pretrained(model_folder(params.models[slot], params.cache_dir))


def load_embeddings(params: Params) -> torch.Tensor:
    """The codebook model's input embedding table [V, H], read from its safetensors files
    without building the model (any other layout: the model is loaded once and dropped)."""
    cfg = params.models[params.ids.feature_model]
    folder = Path(model_folder(cfg, params.cache_dir))
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(f), framework="pt") as st:
            key = next((k for k in st.keys() if k.endswith("embed_tokens.weight")), None)
            if key is not None:
                return st.get_tensor(key).float()
    from .llm import load_frozen
    llm = load_frozen(params.ids.feature_model, cfg, params.prompt, params.cache_dir)
    return llm.model.get_input_embeddings().weight.detach().float().cpu()


# ---------------------------------------------------------------- the `pick` stage

def features_key(pool_path: Path, tokenizer, max_tokens: int) -> str:
    """What the cached features are computed from: the pool, pick.py, the codebook, max_tokens."""
    h = hashlib.sha256(pool_path.read_bytes())
    h.update(Path(pick.__file__).read_bytes())
    h.update(str(payload.fingerprint(tokenizer.get_vocab())).encode())
    h.update(f"max_tokens={max_tokens}".encode())
    return h.hexdigest()[:16]


def pool_features(rows: list[dict], tokenizer, path: Path, key: str, max_tokens: int):
    """(reads, labels) for the pool: from the cache at `path` when its key matches, else
    computed and saved there first (features, token ids, question ids, answer and support
    labels). Either way each read and label is a view into the cache's tensors, the features
    in float16 (a fresh and a reused fit see the same numbers): about 120 bytes a token, and
    no Python object per token."""
    try:
        c = load_file(str(path))
        if bytes(c["key"].tolist()).decode() != key:
            c = None
    except (OSError, ValueError, KeyError):
        c = None
    if c is None:
        c = compute_features(rows, tokenizer, key, max_tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(c, str(tmp))
    else:
        print(f"pick: reused features {path}")
    split = lambda t, n: torch.split(t, n.tolist())  # noqa: E731
    reads = [pick.Read(i, [], [], f, q) for f, i, q in zip(split(c["features"], c["lengths"]),
                                                            split(c["ids"], c["lengths"]),
                                                            split(c["q_ids"], c["q_lengths"]))]
    return reads, list(split(c["y"], c["lengths"]))


FEATURE_CHUNK = 512  # pool rows a worker process reads at a time (compute_features)
_WORKER: tuple | None = None  # a feature worker's (tokenizer, max_tokens): _features_init


def _features_init(tokenizer, max_tokens: int) -> None:
    """A feature worker: one thread (the cores are the processes'), the codebook tokenizer."""
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = (tokenizer, max_tokens)


def _features_of(rows: list[dict], reader: tuple | None = None) -> list[tuple]:
    """(features float16, ids, question ids, [answer, support] labels) per row, as numpy arrays (a
    worker's are pickled whole: torch would pass a tensor's storage as a file descriptor).
    reader: (tokenizer, max_tokens); default: the worker's (`_features_init`)."""
    tokenizer, max_tokens = reader or _WORKER
    out = []
    for r in rows:
        rd = pick.read(tokenizer, r["question"], r["context"], max_tokens)
        y = torch.stack([pick.answer_labels(rd, r["context"], r["answers"]),
                         pick.support_labels(rd, r.get("support", []))], -1)
        out.append((rd.features.half().numpy(), np.asarray(rd.ids, dtype=np.int64),
                    np.asarray(rd.q_ids, dtype=np.int64), y.numpy()))
    return out


def compute_features(rows: list[dict], tokenizer, key: str, max_tokens: int) -> dict[str, torch.Tensor]:
    """The pool's features cache: one tensor a field, the rows end to end (`lengths` cuts them).
    Rows are read in chunks by one worker process a core (the features are Python and numpy work,
    one core each; the 14,329 rows of the default pool take 14 s on 2 cores); a row's features do
    not depend on which process read it, so the cache is the same for any number of cores."""
    from concurrent.futures import ProcessPoolExecutor

    chunks = [rows[i:i + FEATURE_CHUNK] for i in range(0, len(rows), FEATURE_CHUNK)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cores, len(chunks), 8)
    bar = tqdm(total=len(rows), desc="pick features", unit="ex", disable=None)
    parts: dict[str, list[torch.Tensor]] = {"features": [], "ids": [], "q_ids": [], "y": []}

    def collect(done):
        for chunk in done:
            for row in chunk:
                for name, a in zip(parts, row):
                    parts[name].append(torch.from_numpy(a))
            bar.update(len(chunk))
    if workers <= 1:
        collect(_features_of(c, (tokenizer, max_tokens)) for c in chunks)
    else:
        with ProcessPoolExecutor(workers, initializer=_features_init, initargs=(tokenizer, max_tokens)) as pool:
            collect(pool.map(_features_of, chunks))
    bar.close()
    return {"lengths": torch.tensor([len(i) for i in parts["ids"]]),
            "q_lengths": torch.tensor([len(q) for q in parts["q_ids"]]),
            "key": torch.tensor(list(key.encode()), dtype=torch.uint8),
            **{k: torch.cat(parts.pop(k)) for k in list(parts)}}  # each field's pieces freed once joined


def recall(sender: Sender, rows: list[dict], M: int, support_weight: float | None = None,
           cover: int | None = None, scored: list | None = None) -> dict[str, dict[str, float]]:
    """Per dataset: pick_recall (the gold answer wholly inside one picked span) and, where
    the rows have supporting facts, support_recall. support_weight / cover: score and spend
    as these (default: the sender's own; span and grow: the sender's); scored: precomputed
    (read, [answer, support] logits)."""
    w = sender.model.support_weight if support_weight is None else support_weight
    old, sender.cover = sender.cover, sender.cover if cover is None else cover
    hits: dict[str, dict[str, list]] = {}
    try:
        for k, r in enumerate(rows):
            rd, logits = scored[k] if scored else (pick.read(sender.tokenizer, r["question"], r["context"],
                                                             sender.max_tokens), None)
            if logits is None:
                logits = sender.model.logits(rd)
            p = sender.spend(rd, (logits[:, 0] + w * logits[:, 1]).tolist(), M)
            h = hits.setdefault(r["dataset"], {"pick_recall": [], "support_recall": []})
            h["pick_recall"].append(pick.contains_answer(p.texts(r["context"]), r["answers"]))
            sup = pick.touched(rd, p.spans, r.get("support", []))
            if sup is not None:
                h["support_recall"].append(sup)
    finally:
        sender.cover = old
    return {ds: {k: sum(v) / len(v) for k, v in h.items() if v} for ds, h in sorted(hits.items())}


SUPPORT_WEIGHTS, COVERS, GROWS = (0.0, 0.5, 1.0), (0, 2), (None, 1.5, 2.0, 2.5)


def choose_spending(sender: Sender, dev: list[dict], M: int, spans: list[int]) -> tuple[dict, list[dict]]:
    """The span width, support weight, paragraph coverage and run margin (`grow`) with the best
    mean pick_recall over the dev datasets (ties: the first), and the whole grid."""
    reads = [pick.read(sender.tokenizer, r["question"], r["context"], sender.max_tokens) for r in dev]
    scored = list(zip(reads, sender.model.logits_many(reads)))
    grid, span, grow = [], sender.span, sender.grow
    for sender.span in spans:
        for sender.grow in GROWS:
            for w in SUPPORT_WEIGHTS:
                for c in COVERS:
                    res = recall(sender, dev, M, w, c, scored)
                    mean = sum(v["pick_recall"] for v in res.values()) / max(len(res), 1)
                    grid.append({"span": sender.span, "grow": sender.grow, "support_weight": w, "cover": c,
                                 "mean_pick_recall": mean, "per_dataset": res})
    sender.span, sender.grow = span, grow
    best = max(grid, key=lambda g: g["mean_pick_recall"])  # max keeps the first of equals
    return best, grid


def is_pick_dev(row: dict) -> bool:
    """The pick's dev rule: a tenth of the pool's titles, held out of its fit. The stage chooses how
    the pick spends M on them and reports its recall there (never the eval mix: the pool is train-split)."""
    return is_eval_title("pick-dev:" + row["title"], 0.1)


def read_pool(params: Params, pool_path: str | Path, features_path: str | Path):
    """The pick's pool as the `pick` stage reads it (the bench scripts too): (rows, tokenizer, reads,
    labels, held), the features from their cache (`pool_features`), `held` marking the dev rows."""
    rows = read_jsonl(pool_path)
    if not rows:
        raise ValueError(f"{pool_path}: no examples to train the pick on")
    tokenizer = load_tokenizer(params)
    mt = params.pick.max_tokens
    reads, labels = pool_features(rows, tokenizer, Path(features_path), features_key(Path(pool_path), tokenizer, mt), mt)
    return rows, tokenizer, reads, labels, [is_pick_dev(r) for r in rows]


def fit_pick(pp: PickConfig, E: torch.Tensor, reads: list[pick.Read], labels: list[torch.Tensor], seed: int,
             support_weight: float = 0.0) -> tuple[pick.Ensemble, float]:
    """The stage's rater fitted on these reads (its params: pick.members fits, pick.ema, ...), in
    eval mode, and its last-epoch loss. The bench scripts that refit the pick use it too."""
    model = pick.Ensemble([pick.PickModel(pp.hidden, E.shape[1]) for _ in range(pp.members)], support_weight)
    model.set_embeddings(E)
    loss = pick.fit_ensemble(model, reads, labels, pp.epochs, pp.batch_size, pp.lr, seed=seed, ema=pp.ema)
    return model.eval(), loss


def main(params_path: str = "params.yaml", pool_path: str = "data/mix/pool.jsonl",
         features_path: str = "data/pick/features.safetensors", out: str = "models/pick",
         metrics_path: str = "metrics/pick.json") -> dict:
    t0 = time.time()
    params = load_params(params_path)
    pp = params.pick
    rows, tokenizer, reads, labels, held = read_pool(params, pool_path, features_path)
    E = load_embeddings(params)
    model, loss = fit_pick(pp, E, [r for r, h in zip(reads, held) if not h], [y for y, h in zip(labels, held) if not h],
                           params.seed)
    sender = Sender(tokenizer, model, pp.dev_M, pp.spans[0], pp.max_tokens)
    dev = [r for r, h in zip(rows, held) if h]
    best, grid = choose_spending(sender, dev, pp.dev_M, pp.spans)
    model.support_weight, sender.cover, sender.span, sender.grow = (best["support_weight"], best["cover"],
                                                                    best["span"], best["grow"])
    metrics = {"pool": len(rows), "train_examples": len(rows) - len(dev), "dev_examples": len(dev),
               "members": pp.members, "ema": pp.ema,
               "answer_tokens": int(sum((y[:, 0] == 1).sum() for y in labels)),
               "support_tokens": int(sum((y[:, 1] == 1).sum() for y in labels)), "loss": loss,
               "M": pp.dev_M, "span": best["span"], "grow": best["grow"], "support_weight": best["support_weight"],
               "cover": best["cover"],
               "dev_recall": best["per_dataset"], "dev_grid": grid}
    with atomic_dir(Path(out)) as tmp_folder:  # both files swap in together
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_folder / "pick.safetensors"))
        write_json(tmp_folder / "meta.json", {"hidden": pp.hidden, "d_embed": E.shape[1], "members": pp.members,
                                          "features": list(pick.FEATURES), "codebook": sender.codebook,
                                          "span": best["span"], "support_weight": best["support_weight"],
                                          "cover": best["cover"], "grow": best["grow"]})
    metrics["wall_s"] = round(time.time() - t0, 1)
    write_json(metrics_path, metrics)
    print(f"pick: span {best['span']}, grow {best['grow']}, support_weight {best['support_weight']}, cover {best['cover']}: dev recall at M={pp.dev_M} "
          f"{metrics['dev_recall']}, {metrics['wall_s']:.0f}s")
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
