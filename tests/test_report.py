"""`python -m latentwire report`: every number in the Markdown table is the one in eval.json, the
deltas are `dvc metrics diff`'s (a real git + DVC repo with two commits), --worst picks the
examples the latent loses most."""
import json
import shutil
import subprocess
import sys

import pytest
from fake_eval import fake_metrics, prediction

from latentwire import __main__ as cli
from latentwire import report

# header -> metric keys under <model>.<dataset> (written out here, not taken from report.py)
EXPECTED = {
    "n": ["n"],
    "text": ["text.f1", "text.em"],
    "equal-byte": ["equal_byte.f1", "equal_byte.em"],
    "M-token": ["m_token.f1", "m_token.em"],
    "latent fp16": ["latent_fp16.f1", "latent_fp16.em"],
    "latent int8": ["latent_int8.f1", "latent_int8.em"],
    "latent int4": ["latent_int4.f1", "latent_int4.em"],
    "wire B (int4)": ["bytes.int4.per_model"],
    "text/wire (int4)": ["bytes.int4.text_over_wire"],
    "tokens/M": ["tokens_over_M"],
    "distinct (int4)": ["latent_int4.distinct_ratio"],
    "positions text/latent": ["positions.text_over_latent"],
    "Z cos": ["soft_pairwise_cosine"],
}


def get(blob, dotted):
    for k in dotted.split("."):
        blob = blob[k]
    return blob


def tables(md: str) -> list[list[dict]]:
    """Every Markdown table in md as a list of {header: cell} rows."""
    out, lines = [], md.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            header = [c.strip() for c in lines[i].strip("|").split(" | ")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split(" | ")))))
                i += 1
            out.append(rows)
        else:
            i += 1
    return out


def check_cells(row: dict, values: dict) -> None:
    """Each cell 'a / b' holds the values of EXPECTED[header], to the printed precision."""
    for header, keys in EXPECTED.items():
        cells = row[header].split(" / ")
        assert len(cells) == len(keys), (header, row[header])
        for c, k in zip(cells, keys):
            decimals = len(c.split(".")[1]) if "." in c else 0
            assert float(c) == pytest.approx(values[k], abs=0.51 * 10 ** -decimals), (header, k, c)


def write_eval(folder, metrics, predictions=()):
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    (folder / "metrics/eval.json").write_text(json.dumps(metrics, indent=2))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))


def test_table_equals_eval_json(tmp_path):
    metrics = fake_metrics(seed=3, datasets=("hotpotqa", "nq", "squad"))
    write_eval(tmp_path, metrics)
    md = report.build_report(str(tmp_path / "metrics/eval.json"))
    (rows,) = tables(md)
    assert [(r["model"], r["dataset"]) for r in rows] == [
        (m, d) for m in ("llama", "qwen") for d in ("hotpotqa", "nq", "squad")]
    for row in rows:
        res = metrics[row["model"]][row["dataset"]]
        check_cells(row, {k: get(res, k) for keys in EXPECTED.values() for k in keys})
    assert "reported precision **int4**" in md and "int4 289" in md  # wire bytes per model at M=32


def test_reported_precision_follows_reported_bits(tmp_path):
    metrics = fake_metrics(seed=4, models=("llama",), bits=8)
    write_eval(tmp_path, metrics)
    (rows,) = tables(report.build_report(str(tmp_path / "metrics/eval.json")))
    res = metrics["llama"]["nq"]
    assert float(rows[0]["wire B (int8)"]) == res["bytes"]["int8"]["per_model"] == 545
    assert float(rows[0]["distinct (int8)"]) == pytest.approx(res["latent_int8"]["distinct_ratio"], abs=0.006)


def test_worst_examples(tmp_path):
    metrics = fake_metrics(seed=5)
    preds = [prediction("llama", "squad", "a", 1.0, 0.0), prediction("llama", "nq", "b", 1.0, 0.5),
             prediction("llama", "squad", "c", 0.2, 0.0), prediction("llama", "squad", "d", 0.0, 0.0),
             prediction("llama", "nq", "e", 0.5, 1.0), prediction("qwen", "nq", "q1", 0.4, 0.4),
             prediction("qwen", "squad", "q|2", 0.9, 0.1)]
    write_eval(tmp_path, metrics, preds)
    md = report.build_report(str(tmp_path / "metrics/eval.json"), str(tmp_path / "predictions.jsonl"), worst=2)
    _, llama, qwen = tables(md)
    assert [r["id"] for r in llama] == ["a", "b"]  # latent - text F1: -1.0, -0.5 (c: -0.2 is 3rd)
    assert llama[0]["text answer (F1)"] == "text says a (1.00)"
    assert llama[0]["latent int4 answer (F1)"] == "latent says a (0.00)"
    assert llama[0]["gold"] == "gold a" and llama[0]["question"] == "Question a?"
    assert [r["id"] for r in qwen] == ["q\\|2", "q1"]  # a | in a cell is escaped


def test_base_deltas_come_from_dvc_metrics_diff(tmp_path, monkeypatch, capsys):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
    sh(*git, "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/eval.json\n")
    old = fake_metrics(seed=1)
    write_eval(repo, old)
    sh(*git, "add", "-A")
    sh(*git, "commit", "-qm", "base")
    new = fake_metrics(seed=2)
    del new["qwen"]["nq"]  # a row only the base has
    write_eval(repo, new)
    sh(*git, "commit", "-qam", "change")

    assert cli.main(["report", "--base", "HEAD~1"]) == 0
    captured = capsys.readouterr()
    md = captured.out
    assert "done in" not in md and "done in" in captured.err  # stdout is only the Markdown
    table, delta = tables(md)
    assert [(r["model"], r["dataset"]) for r in delta] == [("llama", "nq"), ("llama", "squad"), ("qwen", "squad")]
    for row in table:
        res = new[row["model"]][row["dataset"]]
        check_cells(row, {k: get(res, k) for keys in EXPECTED.values() for k in keys})
    for row in delta:
        o, n = old[row["model"]][row["dataset"]], new[row["model"]][row["dataset"]]
        check_cells(row, {k: get(n, k) - get(o, k) for keys in EXPECTED.values() for k in keys})
        assert row["wire B (int4)"] == "+0" and row["text"].split(" / ")[0][0] in "+-"
    assert "Only in `HEAD~1`: `qwen.nq`" in md

    assert cli.main(["report", "--base", "no-such-rev"]) == 1  # DVC's error, one line, no traceback
    err = capsys.readouterr().err
    assert "dvc metrics diff no-such-rev" in err and "Traceback" not in err


def test_base_without_metrics_is_named(tmp_path, monkeypatch, capsys):
    """--base REV where REV has no eval.json (older than the file): the table, and a line naming REV
    instead of a delta table of `new` cells."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
    for cmd in [(*git, "init", "-q"), (sys.executable, "-m", "dvc", "init", "-q")]:
        subprocess.run(cmd, check=True, capture_output=True)
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics/eval.json\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "no metrics yet"], check=True)
    write_eval(tmp_path, fake_metrics(seed=6))
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "metrics"], check=True)

    assert cli.main(["report", "--base", "HEAD~1"]) == 0
    md = capsys.readouterr().out
    assert len(tables(md)) == 1  # the table of the workspace, no delta table
    assert "`HEAD~1` has no `metrics/eval.json`: no deltas" in md


def test_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["report", "--metrics", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert "missing.json not found: run the pipeline first (`dvc repro`" in err
    assert "Errno" not in err and "Traceback" not in err
    (tmp_path / "bad.json").write_text(json.dumps({"M": 4, "reported_bits": 4, "wire": {}}))
    assert cli.main(["report", "--metrics", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert "no model x dataset results" in err and "Traceback" not in err
