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


def expected(prec: str, selected: bool = True) -> dict[str, list[str]]:
    """Table header -> metric keys under <model>.<dataset> (written out here, not taken from
    report.py); `prec` the latent's name (ids, or int4 ... for the bytes sender)."""
    cols = {"n": ["n"], "text": ["text.f1", "text.em"], "equal-byte": ["equal_byte.f1", "equal_byte.em"],
            "M-token": ["m_token.f1", "m_token.em"]}
    if selected:
        cols |= {"selected text": ["selected_text.f1", "selected_text.em"],
                 "selected equal-byte": ["selected_equal_byte.f1", "selected_equal_byte.em"]}
    return cols | {f"latent {prec}": [f"latent_{prec}.f1", f"latent_{prec}.em"],
                   f"wire B ({prec})": [f"bytes.{prec}.per_model"],
                   f"text/wire ({prec})": [f"bytes.{prec}.text_over_wire"],
                   "tokens/M": ["tokens_over_M"],
                   f"distinct ({prec})": [f"latent_{prec}.distinct_ratio"],
                   "positions text/latent": ["positions.text_over_latent"],
                   "Z cos": ["soft_pairwise_cosine"]}


EXPECTED = expected("ids")


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


def check_cells(row: dict, values: dict, cols: dict = EXPECTED) -> None:
    """The row has exactly the columns of `cols`, and each cell 'a / b' holds the values of
    cols[header], to the printed precision."""
    assert list(row) == ["model", "dataset", *cols]
    for header, keys in cols.items():
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
    rows = tables(md)[0]
    assert [(r["model"], r["dataset"]) for r in rows] == [
        (m, d) for m in ("llama", "qwen") for d in ("hotpotqa", "nq", "squad")]
    for row in rows:
        res = metrics[row["model"]][row["dataset"]]
        check_cells(row, {k: get(res, k) for keys in EXPECTED.values() for k in keys})
    assert "reported precision **ids**" in md and f"ids {metrics['wire']['ids']['per_model']:.0f}" in md


def test_reported_precision_follows_reported_bits(tmp_path):
    """The bytes sender at wire.bits 8: the int8 columns, from evaluate's own metrics."""
    metrics = fake_metrics(seed=4, models=("llama",), kind="bytes", bits=8)
    write_eval(tmp_path, metrics)
    md = report.build_report(str(tmp_path / "metrics/eval.json"))
    rows = tables(md)[0]
    cols = expected("int8", selected=False)
    for row in rows:
        res = metrics[row["model"]][row["dataset"]]
        check_cells(row, {k: get(res, k) for keys in cols.values() for k in keys}, cols)
    assert "reported precision **int8**" in md


def test_worst_examples(tmp_path):
    metrics = fake_metrics(seed=5)
    preds = [prediction("llama", "squad", "a", 1.0, 0.0), prediction("llama", "nq", "b", 1.0, 0.5),
             prediction("llama", "squad", "c", 0.2, 0.0), prediction("llama", "squad", "d", 0.0, 0.0),
             prediction("llama", "nq", "e", 0.5, 1.0), prediction("qwen", "nq", "q1", 0.4, 0.4),
             prediction("qwen", "squad", "q|2", 0.9, 0.1)]
    write_eval(tmp_path, metrics, preds)
    md = report.build_report(str(tmp_path / "metrics/eval.json"), str(tmp_path / "predictions.jsonl"), worst=2)
    llama, qwen = tables(md)[-2:]
    assert [r["id"] for r in llama] == ["a", "b"]  # latent - text F1: -1.0, -0.5 (c: -0.2 is 3rd)
    assert llama[0]["text answer (F1)"] == "text says a (1.00)"
    assert llama[0]["latent ids answer (F1)"] == "latent says a (0.00)"
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
    new["llama"]["nq"]["bytes"]["ids"]["per_model"] = old["llama"]["nq"]["bytes"]["ids"]["per_model"]  # unchanged
    write_eval(repo, new)
    sh(*git, "commit", "-qam", "change")

    assert cli.main(["report", "--base", "HEAD~1"]) == 0
    captured = capsys.readouterr()
    md = captured.out
    assert "done in" not in md and "done in" in captured.err  # stdout is only the Markdown
    table, delta = tables(md)[0], tables(md)[-1]
    assert [(r["model"], r["dataset"]) for r in delta] == [("llama", "nq"), ("llama", "squad"), ("qwen", "squad")]
    for row in table:
        res = new[row["model"]][row["dataset"]]
        check_cells(row, {k: get(res, k) for keys in EXPECTED.values() for k in keys})
    for row in delta:
        o, n = old[row["model"]][row["dataset"]], new[row["model"]][row["dataset"]]
        check_cells(row, {k: get(n, k) - get(o, k) for keys in EXPECTED.values() for k in keys})
        assert row["text"].split(" / ")[0][0] in "+-"
    assert delta[0]["wire B (ids)"] == "+0"  # llama nq: the same in both
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
    assert len(tables(md)) == len(tables(report.build_report("metrics/eval.json")))  # no delta table
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


def test_ci_section_prints_each_interval_where_it_is(tmp_path):
    """latent minus each baseline: 'diff [lo, hi]' per model x dataset and pooled per model; '–' where a
    CI is missing; no column for a baseline that has none anywhere."""
    metrics = fake_metrics(seed=8)
    ci = lambda d, lo, hi: {"diff": d, "lo": lo, "hi": hi, "n": 2, "clusters": 2}  # noqa: E731
    for slot in ("llama", "qwen"):
        for key in ("nq", "squad", "pooled"):
            metrics[slot][key]["ci"].pop("selected_equal_byte")
    metrics["llama"]["squad"]["ci"]["text"] = ci(0.1, -0.05, 0.25)
    metrics["llama"]["pooled"]["ci"]["text"] = ci(-0.125, -0.5, 0.0)
    metrics["qwen"]["nq"]["ci"]["m_token"] = ci(0.0, -0.0004, 0.0004)
    del metrics["qwen"]["squad"]["ci"]["equal_byte"]
    del metrics["qwen"]["pooled"]
    md = "\n".join(report.ci_section(metrics, [(s, d) for s in ("llama", "qwen") for d in ("nq", "squad")], "ids"))
    (rows,) = tables(md)
    assert "### Latent ids minus each baseline" in md
    assert list(rows[0]) == ["model", "dataset", "text", "equal-byte", "M-token", "selected text"]
    assert [(r["model"], r["dataset"]) for r in rows] == [
        ("llama", "nq"), ("llama", "squad"), ("qwen", "nq"), ("qwen", "squad"), ("llama", "**pooled**")]
    assert rows[1]["text"] == "+0.100 [-0.050, +0.250]"
    assert rows[4]["text"] == "-0.125 [-0.500, +0.000]"
    assert rows[2]["M-token"] == "+0.000 [-0.000, +0.000]"
    assert rows[3]["equal-byte"] == "–"
    c = metrics["qwen"]["nq"]["ci"]["selected_text"]
    assert rows[2]["selected text"] == f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"
    for slot in ("llama", "qwen"):  # no CI at all: no section
        for key in ("nq", "squad", "pooled"):
            metrics[slot].get(key, {}).pop("ci", None)
    assert report.ci_section(metrics, [("llama", "nq")], "ids") == []


def test_pick_section_prints_each_dataset_recall():
    metrics = fake_metrics(seed=9, datasets=("hotpotqa", "nq", "squad"))
    metrics["pick"]["hotpotqa"].update(n=7, M=64, pick_recall=0.5, support_recall=0.85, lexical=0.1,
                                       answer_in_context=1.0, m_token_cut=0.0, random=0.004)
    del metrics["pick"]["nq"]["M"]  # older metrics: the run's M
    metrics["pick"] = dict(reversed(metrics["pick"].items()))  # rows in dataset order whatever the file's
    md = "\n".join(report.pick_section(metrics))
    (rows,) = tables(md)
    assert list(rows[0]) == ["dataset", "n", "M", "answer in context", "the pick", "supporting facts touched",
                             "first M tokens", "lexical window", "random window"]
    assert [r["dataset"] for r in rows] == ["hotpotqa", "nq", "squad"]
    assert list(rows[0].values())[1:] == ["7", "64", "1.00", "0.50", "0.85", "0.00", "0.10", "0.00"]
    assert rows[1]["M"] == str(metrics["M"]) and rows[1]["supporting facts touched"] == "–"  # no support facts
    squad = metrics["pick"]["squad"]
    assert rows[2]["the pick"] == f"{squad['pick_recall']:.2f}" and rows[2]["random window"] == f"{squad['random']:.2f}"
    del metrics["pick"]
    assert report.pick_section(metrics) == []  # the bytes sender: no pick
