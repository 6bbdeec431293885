"""Atomic writes: a file (or a folder of files) appears whole or not at all (tmp, fsync, rename)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty folder `.<name>.tmp` beside `path`; on success swap it in for `path`.

    The files inside are meant to be written with the helpers here. The old folder is renamed
    to `.<name>.old` first and deleted once the new one is in place, so a kill at any moment
    leaves one whole folder: `path`, or `.<name>.old` (`restore_dir` puts it back). Leftovers of
    a killed write are removed by the next one."""
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # path is whole, so an old copy is stale
        os.replace(path, old)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames themselves survive a power cut
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


def restore_dir(path: str | Path) -> Path:
    """Before reading a folder `atomic_dir` writes: drop a killed write's half-made `.<name>.tmp`
    and, if the kill fell between the two renames, put the previous folder back."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(path.with_name(f".{path.name}.tmp"), ignore_errors=True)
    if not path.exists() and old.exists():
        try:
            os.replace(old, path)
        except FileNotFoundError:
            pass  # another rank put it back first
    return path


def remove_temp_files(folder: str | Path) -> None:
    """Delete what `atomic_path` leaves when a write is SIGKILLed (hidden `.<name>.*.tmp`
    files), e.g. in a persist: true DVC output that would otherwise keep them."""
    for f in Path(folder).glob(".*.tmp"):
        if f.is_file():
            f.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: malformed JSON line: {e}") from None
    return rows


def package_sha256(modules: tuple[str, ...] | None = None) -> str:
    """sha256 of this package's source files (or of the named `modules` only: the code a piece of
    work runs): resumable state saved by other code is not reused."""
    h = hashlib.sha256()
    files = sorted(Path(__file__).parent.glob("*.py"))
    if modules is not None:
        files = [f for f in files if f.stem in modules]
        if missing := set(modules) - {f.stem for f in files}:
            raise ValueError(f"package_sha256: no module {sorted(missing)} in {Path(__file__).parent}")
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def sha256_of(paths) -> str:
    """The sha256 of the concatenated bytes of one file or of several, in order (streamed)."""
    h = hashlib.sha256()
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)
