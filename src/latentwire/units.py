"""Resume units of the evaluation stages: each finished piece of work (one model slot's full-text
answers, its cut baselines, its latent answers) is saved at once, atomically, to
data/eval/partial/<part>/<name>-<hash>.json. A killed stage, rerun, reuses the finished units and
redoes only the unfinished one; a unit whose inputs changed has another hash and is redone.

The hash covers the `key` (the params the unit's numbers depend on, and nothing else: the full
text's key has no M and no pick, so a new M reuses it), the bytes of the files it read, and the
sha256 of the code it runs (the full text: the modules in baselines.FULL_TEXT_CODE, so a change
to the pick alone reuses it; every other unit: the whole package).
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from .io import package_sha256, read_jsonl, remove_temp_files, write_json


def unit_path(folder: str | Path, name: str, key: dict, files: list, code: tuple[str, ...] | None = None) -> Path:
    """<folder>/<name>-<hash16>.json. `code`: the modules the unit's numbers depend on (None:
    the whole package), so a change elsewhere keeps it."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    h.update(package_sha256(code).encode())
    return Path(folder) / f"{name}-{h.hexdigest()[:16]}.json"


def load_unit(path: Path) -> dict | None:
    """A finished unit's content, or None if there is none (or it is unreadable)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    print(f"reused finished unit {path}")
    return saved


def save_unit(path: Path, content: dict) -> None:
    """Write the unit atomically; the same name's units for other settings and a killed write's
    temp files go."""
    write_json(path, content)
    remove_temp_files(path.parent)
    name = path.stem.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{name}-*.json"):
        if old != path and old.stem.rsplit("-", 1)[0] == name:
            old.unlink(missing_ok=True)


def load_rows(path: str | Path, max_examples: int | None) -> list[dict]:
    """The eval mix, at most `max_examples` per dataset (evaluate.max_examples)."""
    rows, seen = [], defaultdict(int)
    for r in read_jsonl(path):
        if max_examples is None or seen[r["dataset"]] < max_examples:
            rows.append(r)
            seen[r["dataset"]] += 1
    return rows


def merge_predictions(predictions: list[dict], new: list[dict]) -> None:
    """Fold per-example rows into `predictions`, one row per (model, dataset, id)."""
    at = {(p["model"], p["dataset"], p["id"]): p for p in predictions}
    for p in new:
        key = (p["model"], p["dataset"], p["id"])
        if key in at:
            at[key].update(p)
        else:
            at[key] = dict(p)
            predictions.append(at[key])
