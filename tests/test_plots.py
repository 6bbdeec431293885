"""`python -m latentwire plots`: one PNG per plot that dvc.yaml declares, drawn from the spec that
`dvc plots show --json` (`dvc plots diff --json REV` with --base) gives, in a git + DVC repository
with this project's dvc.yaml, templates and metrics (plots_repo.py); the frontier rows that evaluate
writes carry the right bytes per variant."""
import csv

import pytest
from fake_eval import fake_metrics
from plots_repo import declared_plots, make_repo

from latentwire import __main__ as cli
from latentwire import evaluate, plots


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "metrics").mkdir(parents=True)
    metrics = fake_metrics(seed=7, datasets=("hotpotqa", "nq", "squad"))
    del metrics["qwen"]["nq"]["m_token"]["bytes"]  # baselines from before the M-token byte count
    evaluate.write_frontier(tmp_path / "metrics/frontier.csv", metrics, ["llama", "qwen"])
    return tmp_path, metrics


def test_frontier_csv_rows(run_dir):
    root, metrics = run_dir
    with open(root / "metrics/frontier.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "dataset", "variant", "bytes", "f1", "em"]
    assert len(rows) == 2 * 3 * 6
    by = {(r["model"], r["dataset"], r["variant"]): r for r in rows}
    res = metrics["llama"]["squad"]
    assert float(by["llama", "squad", "text"]["bytes"]) == pytest.approx(res["context_bytes"])
    assert float(by["llama", "squad", "m_token"]["bytes"]) == pytest.approx(res["m_token"]["bytes"])
    assert float(by["llama", "squad", "equal_byte"]["bytes"]) == pytest.approx(res["equal_byte"]["bytes"])
    assert float(by["llama", "squad", "latent_ids"]["bytes"]) == pytest.approx(res["bytes"]["ids"]["per_model"])
    assert float(by["llama", "squad", "latent_ids"]["f1"]) == pytest.approx(res["latent_ids"]["f1"])
    assert by["qwen", "nq", "m_token"]["bytes"] == ""  # no byte count: left empty, still plotted as F1


def not_blank(path):
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 200, (path.name, img.shape)
    rgb = img[..., :3]
    ink = (rgb < 0.9).any(axis=-1).mean()  # share of non-white pixels
    colour = (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2).mean()  # share of coloured pixels
    assert 0.01 < ink < 0.6, (path.name, ink)
    assert colour > 0.001 and rgb.std() > 0.05, (path.name, colour, rgb.std())


def test_one_png_per_declared_plot(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    assert cli.main(["plots", "--out", "show"]) == 0
    names = sorted(plots.png_name(p) for p in declared_plots())
    assert len(set(names)) == len(names) and "frontier.png" in names  # metrics/frontier.csv: its stem
    assert sorted(p.name for p in (repo / "show").iterdir()) == names
    assert "show/frontier.png" in capsys.readouterr().out
    for name in names:
        not_blank(repo / "show" / name)

    # --base: DVC's diff spec (HEAD~1 holds half of each CSV, a second colour), a different picture each
    assert cli.main(["plots", "--out", "diff", "--base", "HEAD~1"]) == 0
    assert sorted(p.name for p in (repo / "diff").iterdir()) == names
    same = [n for n in names if (repo / "diff" / n).read_bytes() == (repo / "show" / n).read_bytes()]
    assert same == []


def test_missing_data_is_left_out_and_said(tmp_path, monkeypatch, capsys):
    declared = declared_plots()
    gone = {p for p, files in declared.items() if "metrics/frontier.csv" in files}
    assert gone and len(gone) < len(declared)
    repo = make_repo(tmp_path / "repo", drop=("metrics/frontier.csv",))
    monkeypatch.chdir(repo)
    assert cli.main(["plots", "--out", "pngs"]) == 0
    assert sorted(p.name for p in (repo / "pngs").iterdir()) == sorted(
        plots.png_name(p) for p in declared if p not in gone)
    err = capsys.readouterr().err
    for p in gone:
        assert f"plots: {p} left out: metrics/frontier.csv at workspace: not found" in err


def test_nothing_to_plot(tmp_path, monkeypatch, capsys):
    files = {f for fs in declared_plots().values() for f in fs}
    repo = make_repo(tmp_path / "repo", drop=tuple(files))
    monkeypatch.chdir(repo)
    assert cli.main(["plots", "--out", "pngs"]) == 1
    assert "nothing to plot" in capsys.readouterr().err and not (repo / "pngs").exists()
