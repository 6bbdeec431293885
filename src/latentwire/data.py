"""QA data: read SQuAD / HotpotQA / NQ (local files or the HF hub) into one Example type,
cap long contexts by an answer-blind rule, split by title and build the train/eval mix.

No model input is built from an answer: `cut_context` sees the context text alone (whole
paragraphs from the start, then a sentence boundary), and `answers` serve losses, KD targets,
pick labels and scoring only. HotpotQA records keep their supporting-fact sentences as char
spans (`Example.support`), a pick label, never an input.

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
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .metrics import contains_answer


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
    support: list[list[int]] = dataclasses.field(default_factory=list)  # [start, end) chars of the
    #                 supporting-fact sentences (HotpotQA): the pick's label and support_recall only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.name != "support"]
        if missing:
            raise DataError(f"example {d.get('id', '?')}: missing field(s) {missing}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


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


def _example(name, id, title, question, context, answers, where, support=()) -> Example | str:
    """Shared checks; returns an Example or the reason it was skipped."""
    if not context:
        raise DataError(f"{where}: field 'context' is empty")
    if not question:
        raise DataError(f"{where}: field 'question' is empty")
    answers = list(dict.fromkeys(a for a in answers if a))  # unique, in order, non-empty
    if not answers:
        return "no_answer"
    return Example(id, name, title, question, context, answers, [list(sp) for sp in support])


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


def _hotpot(row, id, gold, pool, distractors, where, name, facts=frozenset()) -> Example | str:
    """Gold paragraphs + the first `distractors` of pool, shuffled by id, one "title: text" line
    each; title = sorted gold titles; support = the char spans of the `facts` (title, sentence
    index) sentences. With distractors the id gets "/d<n>" (the gold-only record keeps its id)."""
    paras = gold + pool[:distractors]
    random.Random(_hash(id)).shuffle(paras)
    lines, support, at = [], [], 0
    for t, sents in paras:
        line = f"{t}:"
        for k, x in enumerate(sents):
            if x:
                if (t, k) in facts:
                    support.append((at + len(line) + 1, at + len(line) + 1 + len(x)))
                line += " " + x
        lines.append(line)
        at += len(line) + 1
    title = " | ".join(sorted(t for t, _ in gold))
    id = f"{id}/d{distractors}" if distractors else id
    return _example(name, id, title, _get(row, "question", where), "\n".join(lines),
                    [_get(row, "answer", where)], where, support)


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
        sf = list(zip(_get(sf, "title", where, list), _get(sf, "sent_id", where, list)))
    bad = [f for f in sf if not (isinstance(f, (list, tuple)) and len(f) == 2 and isinstance(f[0], str)
                                 and isinstance(f[1], int) and not isinstance(f[1], bool))]
    if bad:
        raise DataError(f"{where}: field 'supporting_facts': expected [title, sentence index] pairs, got {bad[0]!r}")
    paras = _paragraphs(ctx, where, "context")
    facts = {(_clean(t, where), k) for t, k in sf}
    gold_titles = {t for t, _ in facts}
    if not gold_titles <= {t for t, _ in paras}:
        raise DataError(f"{where}: field 'supporting_facts' names titles not in 'context'")
    gold = [p for p in paras if p[0] in gold_titles]
    return _hotpot(row, id, gold, [p for p in paras if p[0] not in gold_titles], distractors, where, name, facts)


def hotpot_sample_row(row, where: str, distractors: int = 0, name: str = "hotpotqa") -> Example | str:
    """The HotpotQA explorer sample: title_a/para_a, title_b/para_b (gold) and distractors."""
    gold = [(_get(row, f"title_{k}", where), _strs(_get(row, f"para_{k}", where, list), f"{where}: field 'para_{k}'"))
            for k in "ab"]
    sf = _get(row, "supporting_facts", where, list) if "supporting_facts" in row else [[], []]
    if len(sf) != 2 or not all(isinstance(f, list) and all(isinstance(k, int) for k in f) for f in sf):
        raise DataError(f"{where}: field 'supporting_facts': expected two lists of sentence indices (para_a, para_b)")
    facts = {(t, k) for (t, _), f in zip(gold, sf) for k in f}
    pool = _paragraphs(_get(row, "distractors", where, list), where, "distractors")
    return _hotpot(row, _get(row, "_id", where), gold, pool, distractors, where, name, facts)


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


SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


def cut_context(context: str, max_chars: int) -> str:
    """An answer-blind cap (it sees the text alone): the whole paragraphs (lines) from the start
    that fit in max_chars; if not even the first fits, the first paragraph up to its last
    sentence end within max_chars (else its last space, else max_chars)."""
    if len(context) <= max_chars:
        return context
    keep = ""
    for para in context.split("\n"):
        if len(keep) + bool(keep) + len(para) > max_chars:
            break
        keep += ("\n" if keep else "") + para
    if keep:
        return keep
    head = context[:max_chars + 1]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    end = ends[-1] if ends else head.rfind(" ") if head.rfind(" ") > 0 else max_chars
    return context[:end].rstrip()


def capped(ex: Example, max_chars: int) -> Example:
    """ex with its context cut by `cut_context` and its support spans clipped to what is left."""
    c = cut_context(ex.context, max_chars)
    if c is ex.context:
        return ex
    return dataclasses.replace(ex, context=c, support=[sp for sp in ex.support if sp[1] <= len(c)])


def group_titles(examples: list[Example]) -> list[Example]:
    """Records whose gold titles overlap ("A | B" and "B | C") share one split title (the
    smallest in their connected group), so that a split by title assigns whole groups."""
    parent: dict[str, str] = {}

    def root(t):
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for ex in examples:
        first, *rest = ex.title.split(" | ")
        for t in rest:
            a, b = root(first), root(t)
            parent[max(a, b)] = min(a, b)
    return [dataclasses.replace(ex, title=root(ex.title.split(" | ")[0])) for ex in examples]


def _read(cfg, root: Path, name: str, train: bool) -> tuple[list[Example], Counter, str]:
    """The configured source (train: its train-only part) -> (examples, skipped, source)."""
    if cfg.source == "hub":
        split = cfg.hub_train_split if train else cfg.hub_split
        hub = dataclasses.replace(cfg, hub_split=split, distractors=cfg.train_distractors if train else cfg.distractors)
        examples, skipped = load_hub(hub, name)
        return examples, skipped, f"hub:{cfg.hub_id}" + (f"/{cfg.hub_config}" if cfg.hub_config else "") + f"[{split}]"
    path = cfg.train_path if train else cfg.path
    examples, skipped = read_file(Path(root) / path, cfg.format if not train else "auto", name,
                                  cfg.train_distractors if train else cfg.distractors)
    return examples, skipped, path


def load(name: str, cfg, root: Path, max_context_chars: int, train: bool = False,
         avoid_titles: frozenset = frozenset()) -> tuple[list[Example], dict]:
    """One configured dataset -> (examples, stats): stats = skipped, context_cut,
    answer_in_context (questions whose answer is still in the capped context, as whole words), source.
    train: its train-only source (train_path / hub_train_split), minus records sharing a
    gold title with `avoid_titles` (the eval part's). Titles of overlapping gold sets are
    grouped (`group_titles`). cfg.max_context_chars, where set, overrides max_context_chars."""
    examples, skipped, source = _read(cfg, root, name, train)
    cap = cfg.max_context_chars or max_context_chars
    out, seen, cut = [], set(), 0
    for ex in examples:
        if ex.id in seen:
            skipped["duplicate_id"] += 1
            continue
        if avoid_titles & set(ex.title.split(" | ")):
            skipped["gold_title_in_eval"] += 1
            continue
        seen.add(ex.id)
        short = capped(ex, cap)
        cut += short is not ex
        out.append(short)
    if train or len(out) >= cfg.min_train_pool:  # to be split by title: whole groups to one side
        out = group_titles(out)
    in_ctx = sum(contains_answer(ex.context, ex.answers) for ex in out)
    return out, {"skipped": dict(skipped), "context_cut": cut, "answer_in_context": in_ctx,
                 "answer_in_context_share": in_ctx / max(len(out), 1), "source": source}


def gold_titles(examples: list[Example]) -> frozenset:
    """Every gold title named in the examples' titles (before `group_titles`: "A | B")."""
    return frozenset(t for ex in examples for t in ex.title.split(" | "))


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


def split_dev(rows: list[dict], n_dev: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed dev slice of the train mix (rows as dicts) for adaptive K and best-checkpoint
    selection; prepare-mix keeps these rows out of the pick's pool."""
    order = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(order)
    return order[n_dev:], order[:n_dev]


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


def pools(data_cfg, loaded: dict[str, tuple[list[Example], list[Example] | None]]) -> dict[str, tuple[list, list]]:
    """name -> (train pool, eval pool). loaded[name] = (examples, train-only examples or None).
    With a train-only source the examples are all eval; else a dataset of fewer than
    min_train_pool examples is eval-only, and a larger one is split by title."""
    out = {}
    for name, (examples, train_only) in loaded.items():
        if train_only is not None:
            out[name] = (train_only, examples)
        elif len(examples) < data_cfg.datasets[name].min_train_pool:
            out[name] = ([], examples)
        else:
            out[name] = split_by_title(examples, data_cfg.eval_fraction)
    return out


def make_mix(data_cfg, loaded: dict, seed: int = 0, max_examples: int | None = None):
    """-> (train, eval, info): info[name] = {train, eval, total, eval_only, train_shortfall}; notes list.
    loaded: as for `pools`."""
    info, notes, sampled = {}, [], {}
    for name, (train_pool, eval_pool) in pools(data_cfg, loaded).items():
        cfg = data_cfg.datasets[name]
        n_eval = cfg.max_eval if max_examples is None else min(cfg.max_eval, max_examples)
        sampled[name] = (train_pool, sample(eval_pool, n_eval, seed))
        examples, train_only = loaded[name]
        info[name] = {"total": len(examples) + len(train_only or []), "eval_only": not train_pool}
        if not train_pool:
            notes.append(f"{name}: eval_only: {len(examples)} < min_train_pool ({cfg.min_train_pool})"
                         if train_only is None else f"{name}: eval_only: its train source gave no example")
    want = shares(data_cfg.train_examples,
                  {n: data_cfg.datasets[n].weight for n in loaded if not info[n]["eval_only"]})
    train, evals = [], []
    for name, (train_pool, ev) in sampled.items():
        tr = sample(train_pool, want.get(name, 0), seed)
        short = want.get(name, 0) - len(tr)
        if short:
            notes.append(f"{name}: train shortfall {short}: only {len(tr)} train examples for a share of {want[name]}")
        info[name].update(train=len(tr), eval=len(ev), train_shortfall=short)
        train += tr
        evals += ev
    return train, evals, {"datasets": info, "notes": notes}


def share_out(groups: dict[str, list], n: int, weights: dict[str, float], seed: int) -> list:
    """n examples (anything with an .id) shared out by weight over the groups: a deterministic
    sample of each group's share, and a share a group cannot fill goes to the others."""
    want = shares(n, {g: weights[g] for g in groups if groups[g]})
    short = sum(max(0, k - len(groups[g])) for g, k in want.items())
    out = []
    for g in sorted(want, key=lambda g: len(groups[g])):
        k = min(len(groups[g]), want[g] + short)
        short -= max(0, k - want[g])
        out += sample(groups[g], k, seed)
    return out


def pick_pool(data_cfg, loaded: dict, seed: int = 0, exclude: frozenset = frozenset()) -> list[Example]:
    """Up to data.pick_pool train-split examples, shared out by weight, for fitting the pick
    (eval-only datasets and eval titles give none; ids in `exclude`, the curriculum's dev
    rows, neither)."""
    train_pools = {n: [ex for ex in tr if ex.id not in exclude] for n, (tr, _) in pools(data_cfg, loaded).items()}
    return share_out(train_pools, data_cfg.pick_pool, {n: data_cfg.datasets[n].weight for n in loaded}, seed)
