"""QA data: read SQuAD / HotpotQA / NQ (local files or the HF hub) into one Example type,
cut long contexts around the answer, split by title and build the train/eval mix.

Every reader returns (examples, skipped): `skipped` counts each dropped row by reason.
Every bad input raises DataError naming the file (or hub id) and the field.

Why one file of ~370 lines: the three readers share the field checks (`_get`, `_strs`,
`_example`) and the file sniffing, and the mix is the split those readers feed; apart, each
reader would import the checks back from the others.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import random
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the field."""


@dataclass
class Example:
    id: str
    dataset: str
    title: str        # the split key: no title is on both sides of the train/eval split
    question: str
    context: str
    answers: list[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d]
        if missing:
            raise DataError(f"example {d.get('id', '?')}: missing field(s) {missing}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def _hash(s: str) -> int:
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest()[:8], 16)


def _clean(s: str, where: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: invalid unicode (lone surrogate)") from None
    return s.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n").strip()


def _get(obj, key: str, where: str, typ=str):
    """obj[key], checked: present and of type `typ`; strings come back cleaned."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    v = obj[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
        raise DataError(f"{where}: field '{key}' has type {type(v).__name__}")
    return _clean(v, f"{where}: field '{key}'") if isinstance(v, str) else v


def _strs(v, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise DataError(f"{where}: expected a list of strings")
    return [_clean(s, where) for s in v]


def _example(name, id, title, question, context, answers, where) -> Example | str:
    """Shared checks; returns an Example or the reason it was skipped."""
    if not context:
        raise DataError(f"{where}: field 'context' is empty")
    if not question:
        raise DataError(f"{where}: field 'question' is empty")
    answers = list(dict.fromkeys(a for a in answers if a))  # unique, in order, non-empty
    if not answers:
        return "no_answer"
    return Example(id, name, title, question, context, answers)


def squad_row(row, context: str, title: str, where: str, name: str = "squad") -> Example | str:
    """One SQuAD question: official (answers=[{text}]) or hub (answers={text: [...]})."""
    question = _get(row, "question", where)
    answers = _get(row, "answers", where, (list, dict))
    if isinstance(answers, dict):
        texts = _strs(_get(answers, "text", f"{where}: field 'answers'", list), f"{where}: field 'answers.text'")
    else:
        texts = [_get(a, "text", f"{where}: field 'answers[{i}]'") for i, a in enumerate(answers)]
    if row.get("is_impossible") is True or not texts:
        return "unanswerable"
    return _example(name, _get(row, "id", where), title, question, context, texts, where)


def _paragraphs(items, where: str, field: str) -> list[tuple[str, list[str]]]:
    """[[title, sentences, ...], ...] -> [(title, sentences)], checked."""
    out = []
    for i, p in enumerate(items):
        if not isinstance(p, (list, tuple)) or len(p) < 2 or not isinstance(p[0], str):
            raise DataError(f"{where}: field '{field}[{i}]' is not [title, sentences]")
        out.append((_clean(p[0], where), _strs(p[1], f"{where}: field '{field}[{i}]'")))
    return out


def _hotpot(row, id, gold, pool, distractors, where, name) -> Example | str:
    """Gold paragraphs + the first `distractors` of pool, shuffled by id; title = sorted gold titles."""
    paras = [f"{t}: {' '.join(x for x in s if x)}" for t, s in gold + pool[:distractors]]
    random.Random(_hash(id)).shuffle(paras)
    title = " | ".join(sorted(t for t, _ in gold))
    return _example(name, id, title, _get(row, "question", where), "\n".join(paras), [_get(row, "answer", where)], where)


def hotpot_row(row, where: str, distractors: int = 0, name: str = "hotpotqa") -> Example | str:
    """HotpotQA, official JSON (context=[[title, sents]]) or hub (context={title: [...], sentences: [...]})."""
    id = _get(row, "_id" if isinstance(row, dict) and "_id" in row else "id", where)
    ctx, sf = _get(row, "context", where, (list, dict)), _get(row, "supporting_facts", where, (list, dict))
    if isinstance(ctx, dict):
        titles, sents = _get(ctx, "title", where, list), _get(ctx, "sentences", where, list)
        if len(titles) != len(sents):
            raise DataError(f"{where}: field 'context': {len(titles)} titles but {len(sents)} sentence lists")
        ctx = list(zip(titles, sents))
    if isinstance(sf, dict):
        sf = _get(sf, "title", where, list)
    else:
        sf = [f[0] if isinstance(f, list) and f else None for f in sf]
    paras, gold_titles = _paragraphs(ctx, where, "context"), set(_strs(sf, f"{where}: field 'supporting_facts'"))
    if not gold_titles <= {t for t, _ in paras}:
        raise DataError(f"{where}: field 'supporting_facts' names titles not in 'context'")
    gold = [p for p in paras if p[0] in gold_titles]
    return _hotpot(row, id, gold, [p for p in paras if p[0] not in gold_titles], distractors, where, name)


def hotpot_sample_row(row, where: str, distractors: int = 0, name: str = "hotpotqa") -> Example | str:
    """The HotpotQA explorer sample: title_a/para_a, title_b/para_b (gold) and distractors."""
    gold = [(_get(row, f"title_{k}", where), _strs(_get(row, f"para_{k}", where, list), f"{where}: field 'para_{k}'"))
            for k in "ab"]
    pool = _paragraphs(_get(row, "distractors", where, list), where, "distractors")
    return _hotpot(row, _get(row, "_id", where), gold, pool, distractors, where, name)


def nq_row(row, where: str, name: str = "nq") -> Example | str:
    """NQ with an oracle passage: `ctxs` (lost-in-the-middle) or a hub row with a `context`."""
    question = _get(row, "question", where)
    key = "answers" if isinstance(row, dict) and "answers" in row else "answer"
    answers = _strs(_get(row, key, where, list), f"{where}: field '{key}'")
    id = _get(row, "id", where) if "id" in row else "nq-" + hashlib.sha256(question.encode()).hexdigest()[:16]
    if "ctxs" in row:
        ctxs = _get(row, "ctxs", where, list)
        if not ctxs:
            raise DataError(f"{where}: field 'ctxs' is empty")
        i = next((i for i, c in enumerate(ctxs) if isinstance(c, dict) and c.get("isgold") is True), 0)
        context, title = _get(ctxs[i], "text", f"{where}: ctxs[{i}]"), _get(ctxs[i], "title", f"{where}: ctxs[{i}]")
    elif "context" in row:
        context, title = _get(row, "context", where), _get(row, "title", where) if "title" in row else id
    else:
        raise DataError(f"{where}: no 'ctxs' or 'context' field: the nq reader needs an oracle context "
                        "(closed-book rows such as nq_open cannot be used)")
    return _example(name, id, title, question, context, answers, where)


def read_json_text(path: Path) -> str:
    """File text (gunzipped if .gz), strict UTF-8, BOM stripped, newlines normalised."""
    try:
        raw = Path(path).read_bytes()
        if str(path).endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte offset {e.start}"
                        + (" (of the decompressed data)" if str(path).endswith(".gz") else "")) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _loads(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer too long, nesting too deep
        raise DataError(f"{where}: unreadable JSON: {type(e).__name__}: {e}") from None


def _collect(items, skipped: Counter) -> list[Example]:
    """Keep the Examples; count the rest (skip reasons) in `skipped`."""
    out = []
    for x in items:
        if isinstance(x, Example):
            out.append(x)
        else:
            skipped[x] += 1
    return out


def sniff(path: Path, obj) -> str:
    """Format of a parsed JSON file (.jsonl / .jsonl.gz files are nq-oracle, decided by name)."""
    if isinstance(obj, dict) and "data" in obj:
        return "squad"
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        if "para_a" in obj[0]:
            return "hotpot-sample"
        if "context" in obj[0]:
            return "hotpot"
    raise DataError(f"{path}: cannot detect the format (squad, hotpot, hotpot-sample, nq-oracle); set 'format'")


def read_file(path, fmt: str = "auto", name: str = "", distractors: int = 0) -> tuple[list[Example], Counter]:
    """Read one local file in any supported format; returns (examples, skipped)."""
    path, skipped = Path(path), Counter()
    text = read_json_text(path)
    if fmt == "nq-oracle" or (fmt == "auto" and path.name.endswith((".jsonl", ".jsonl.gz"))):
        rows = ((f"{path}: line {i}", line) for i, line in enumerate(text.split("\n"), 1) if line.strip())
        return _collect((nq_row(_loads(line, w), w, name or "nq") for w, line in rows), skipped), skipped
    obj = _loads(text, str(path))
    fmt = sniff(path, obj) if fmt == "auto" else fmt
    if fmt == "squad":
        return _collect(_squad_file(obj, path, name or "squad"), skipped), skipped
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of {fmt} examples, got {type(obj).__name__}")
    row_fn = hotpot_row if fmt == "hotpot" else hotpot_sample_row
    return _collect((row_fn(r, f"{path}: [{i}]", distractors, name or "hotpotqa") for i, r in enumerate(obj)),
                    skipped), skipped


def _squad_file(obj, path, name):
    for i, art in enumerate(_get(obj, "data", str(path), list)):
        title = _get(art, "title", f"{path}: data[{i}]")
        for j, par in enumerate(_get(art, "paragraphs", f"{path}: data[{i}]", list)):
            w = f"{path}: data[{i}].paragraphs[{j}]"
            context = _get(par, "context", w)
            if not context:
                raise DataError(f"{w}: field 'context' is empty")
            for k, qa in enumerate(_get(par, "qas", w, list)):
                yield squad_row(qa, context, title, f"{w}.qas[{k}]", name)


def load_hub(cfg, name: str = "") -> tuple[list[Example], Counter]:
    """datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.hub_split) through the row normalisers."""
    import datasets
    ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.hub_split)
    src, skipped, out = f"hub {cfg.hub_id}[{cfg.hub_split}]", Counter(), []
    for i, row in enumerate(ds):
        w, fmt = f"{src}: row {i}", cfg.format
        if fmt == "auto":
            ctx = row.get("context")
            fmt = ("hotpot" if isinstance(ctx, dict) else "squad" if isinstance(row.get("answers"), dict)
                   else "hotpot-sample" if "para_a" in row else "nq-oracle")
        if fmt == "squad":
            x = squad_row(row, _get(row, "context", w), _get(row, "title", w), w, name or "squad")
        elif fmt in ("hotpot", "hotpot-sample"):
            x = (hotpot_row if fmt == "hotpot" else hotpot_sample_row)(row, w, cfg.distractors, name or "hotpotqa")
        else:
            x = nq_row(row, w, name or "nq")
        out += _collect([x], skipped)
    return out, skipped


def cut_context(ex: Example, max_chars: int) -> Example:
    """Keep a max_chars window holding the first answer found; the window's start is drawn from the id."""
    c = ex.context
    if len(c) <= max_chars:
        return ex
    found = [(c.find(a), len(a)) for a in ex.answers if a in c and len(a) <= max_chars]
    start = 0
    if found:
        pos, n = found[0]
        lo, hi = max(0, pos + n - max_chars), min(pos, len(c) - max_chars)
        start = lo + _hash(ex.id) % (hi - lo + 1)
        space = c.rfind(" ", lo, start)  # start on a word if the window allows
        start = space + 1 if space >= 0 else start
    return dataclasses.replace(ex, context=c[start:start + max_chars])


def load(name: str, cfg, root: Path, max_context_chars: int) -> tuple[list[Example], dict]:
    """One configured dataset -> (examples, stats) with stats = skipped, context_cut, answer_in_context, source."""
    if cfg.source == "hub":
        examples, skipped = load_hub(cfg, name)
        source = f"hub:{cfg.hub_id}" + (f"/{cfg.hub_config}" if cfg.hub_config else "") + f"[{cfg.hub_split}]"
    else:
        examples, skipped = read_file(Path(root) / cfg.path, cfg.format, name, cfg.distractors)
        source = cfg.path
    out, seen, cut = [], set(), 0
    for ex in examples:
        if ex.id in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(ex.id)
        short = cut_context(ex, max_context_chars)
        cut += short is not ex
        out.append(short)
    in_ctx = sum(any(a in ex.context for a in ex.answers) for ex in out)
    return out, {"skipped": dict(skipped), "context_cut": cut, "answer_in_context": in_ctx, "source": source}


def is_eval_title(title: str, eval_fraction: float) -> bool:
    return _hash(title) / 2**32 < eval_fraction


def split_by_title(examples: list[Example], eval_fraction: float) -> tuple[list[Example], list[Example]]:
    train = [ex for ex in examples if not is_eval_title(ex.title, eval_fraction)]
    return train, [ex for ex in examples if is_eval_title(ex.title, eval_fraction)]


def sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A deterministic sample of n: sort by id, shuffle with Random(seed), take the first n."""
    pool = sorted(examples, key=lambda ex: ex.id)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def shares(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` by weight, largest remainder (ties by name)."""
    wsum = sum(weights.values())
    if wsum <= 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / wsum for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:total - sum(out.values())]:
        out[k] += 1
    return out


def make_mix(data_cfg, loaded: dict[str, list[Example]], seed: int = 0, max_examples: int | None = None):
    """-> (train, eval, info): info[name] = {train, eval, total, eval_only, train_shortfall}; notes list."""
    info, notes, pools = {}, [], {}
    for name, examples in loaded.items():
        cfg = data_cfg.datasets[name]
        eval_only = len(examples) < cfg.min_train_pool
        train_pool, eval_pool = ([], examples) if eval_only else split_by_title(examples, data_cfg.eval_fraction)
        n_eval = cfg.max_eval if max_examples is None else min(cfg.max_eval, max_examples)
        pools[name] = (train_pool, sample(eval_pool, n_eval, seed))
        info[name] = {"total": len(examples), "eval_only": eval_only}
        if eval_only:
            notes.append(f"{name}: eval_only: {len(examples)} < min_train_pool ({cfg.min_train_pool})")
    want = shares(data_cfg.train_examples,
                  {n: data_cfg.datasets[n].weight for n in loaded if not info[n]["eval_only"]})
    train, evals = [], []
    for name, (train_pool, ev) in pools.items():
        tr = sample(train_pool, want.get(name, 0), seed)
        short = want.get(name, 0) - len(tr)
        if short:
            notes.append(f"{name}: train shortfall {short}: only {len(tr)} train examples for a share of {want[name]}")
        info[name].update(train=len(tr), eval=len(ev), train_shortfall=short)
        train += tr
        evals += ev
    return train, evals, {"datasets": info, "notes": notes}


def pick_pool(data_cfg, loaded: dict[str, list[Example]], seed: int = 0) -> list[Example]:
    """Up to data.pick_pool train-split examples, shared out by weight, for fitting the pick
    (eval-only datasets and eval titles give none)."""
    pools = {}
    for name, examples in loaded.items():
        cfg = data_cfg.datasets[name]
        pools[name] = [] if len(examples) < cfg.min_train_pool else split_by_title(examples, data_cfg.eval_fraction)[0]
    want = shares(data_cfg.pick_pool, {n: data_cfg.datasets[n].weight for n in loaded if pools[n]})
    # a share a dataset cannot fill goes to the others
    short = sum(max(0, k - len(pools[n])) for n, k in want.items())
    out = []
    for name in sorted(want, key=lambda n: len(pools[n])):
        k = min(len(pools[name]), want[name] + short)
        short -= max(0, k - want[name])
        out += sample(pools[name], k, seed)
    return out
