"""A throwaway git + DVC repository with this project's plot declarations (dvc.yaml, params.yaml,
.dvc/config, .dvc/plots/) and the data of every plot dvc.yaml declares, taken from this checkout
(the committed metrics/ on a fresh clone), for tests of `dvc plots` and `python -m latentwire plots`.

Two commits: HEAD~1 holds the first half of each CSV's rows, HEAD the whole files, so that
`dvc plots diff HEAD~1` has two different revisions to draw. Nothing here names a metric column:
the plots and their files come from dvc.yaml.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
       "-c", "init.defaultBranch=main")


def declared_plots(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, list[str]]:
    """Plot id -> its data files, for every plot that dvc.yaml declares: each entry of the root
    `plots:` list (files: the keys of a `y: {file: columns}`, else the id is the file) and each file
    of a stage's `plots:` (its id is the file; a foreach stage's ${key} expanded)."""
    spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    plots: dict[str, list[str]] = {}
    for entry in spec.get("plots") or []:
        pid, props = (entry, None) if isinstance(entry, str) else next(iter(entry.items()))
        files = [f for axis in ("x", "y") if isinstance((props or {}).get(axis), dict) for f in props[axis]]
        plots[pid] = list(dict.fromkeys(files)) or [pid]
    for name, stage in (spec.get("stages") or {}).items():
        assert "matrix" not in stage, f"stage {name}: matrix stages are not expanded here"
        body = stage.get("do", stage)
        keys = list(stage.get("foreach") or [None])
        for entry in body.get("plots") or []:
            path = entry if isinstance(entry, str) else next(iter(entry))
            for key in keys:
                pid = path.replace("${key}", str(key)) if key is not None else path
                plots[pid] = [pid]
    return plots


def half_csv(text: str) -> str:
    """The header and the first half of the rows (at least one)."""
    lines = text.splitlines(keepends=True)
    rows = lines[1:]
    return "".join(lines[:1] + rows[:max(1, len(rows) // 2)])


def make_repo(dest: Path, drop: tuple[str, ...] = ()) -> Path:
    """The repository at dest (see the module doc); the data files in `drop` are left out."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in ["dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"]:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    shutil.copytree(REPO / ".dvc/plots", dest / ".dvc/plots")
    files = sorted({f for fs in declared_plots().values() for f in fs} - set(drop))
    for rel in files:
        if not (REPO / rel).is_file():
            raise FileNotFoundError(f"{rel}: declared in dvc.yaml, not in this checkout")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def sh(*cmd):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)

    sh(*GIT, "init", "-q")
    for full in (False, True):
        for rel in files:
            text = (REPO / rel).read_text(encoding="utf-8")
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(text if full or not rel.endswith(".csv") else half_csv(text),
                                    encoding="utf-8")
        sh(*GIT, "add", "-A")
        sh(*GIT, "commit", "-q", "--allow-empty", "-m", "whole files" if full else "first half of each CSV")
    return dest


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
