"""`python -m latentwire plots`: real PNGs (size, not blank) from curve CSVs and the frontier CSV
that evaluate writes; the frontier rows carry the right bytes per variant."""
import csv

import numpy as np
import pytest
from fake_eval import fake_metrics

from latentwire import __main__ as cli
from latentwire import evaluate, plots

CURVE_COLS = ["step", "K", "dev_first_acc", "dev_loss", "hint_acc", "llama/ce", "llama/first_acc",
              "llama/kd", "loss", "lr", "qwen/ce", "qwen/first_acc", "qwen/kd"]  # as train.py writes


def write_curve(path, steps: int, eval_every: int = 4) -> None:
    rng = np.random.default_rng(steps)
    lines = [",".join(CURVE_COLS)]
    for s in range(1, steps + 1):
        dev = s % eval_every == 0 or s == steps
        row = {"step": s, "K": 2 + s // 6, "lr": 1e-3 * (1 - s / steps), "hint_acc": rng.random(),
               "loss": 10 / s + rng.random(), "dev_loss": 9 / s if dev else "", "dev_first_acc": s / 20 if dev else ""}
        for slot in ("llama", "qwen"):
            row |= {f"{slot}/kd": 3 / s, f"{slot}/ce": 7 / s, f"{slot}/first_acc": rng.random() / 2}
        lines.append(",".join(str(row[c]) for c in CURVE_COLS))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "metrics/train").mkdir(parents=True)
    write_curve(tmp_path / "metrics/train/stage1_curve.csv", 16)
    write_curve(tmp_path / "metrics/train/stage2_curve.csv", 9)
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
    assert float(by["llama", "squad", "text"]["bytes"]) == pytest.approx(res["prompt_bytes"])
    assert float(by["llama", "squad", "m_token"]["bytes"]) == pytest.approx(res["m_token"]["bytes"])
    assert float(by["llama", "squad", "equal_byte"]["bytes"]) == 289
    assert [float(by["llama", "squad", f"latent_{p}"]["bytes"]) for p in ("fp16", "int8", "int4")] == [1025, 545, 289]
    assert float(by["llama", "squad", "latent_int8"]["f1"]) == pytest.approx(res["latent_int8"]["f1"])
    assert by["qwen", "nq", "m_token"]["bytes"] == ""  # no byte count: left empty, still plotted as F1


def not_blank(path, shape):
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[:2] == shape, (path.name, img.shape)
    rgb = img[..., :3]
    ink = (rgb < 0.9).any(axis=-1).mean()  # share of non-white pixels
    colour = (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2).mean()  # share of coloured pixels
    assert 0.01 < ink < 0.6, (path.name, ink)
    assert colour > 0.001 and rgb.std() > 0.05, (path.name, colour, rgb.std())


def test_pngs(run_dir, capsys):
    root, _ = run_dir
    out = root / "plots"
    assert cli.main(["plots", "--out", str(out), "--train-dir", str(root / "metrics/train"),
                     "--frontier", str(root / "metrics/frontier.csv")]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["curves_stage1.png", "curves_stage2.png", "f1_bars.png", "frontier.png"]
    assert str(out / "frontier.png") in capsys.readouterr().out
    px = lambda inches: round(inches * plots.DPI)  # noqa: E731  fixed sizes: no tight bbox
    for stage in ("stage1", "stage2"):
        not_blank(out / f"curves_{stage}.png", (px(plots.CURVE_SIZE[1]), px(plots.CURVE_SIZE[0])))
    # 2 models x 3 datasets
    not_blank(out / "frontier.png", (px(2 * plots.FRONTIER_PANEL[1]), px(3 * plots.FRONTIER_PANEL[0])))
    not_blank(out / "f1_bars.png", (px(plots.BARS_PANEL[1]), px(3 * plots.BARS_PANEL[0])))


def test_curves_only_and_nothing_to_plot(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    write_curve(tmp_path / "train/stage3_curve.csv", 5)
    written = plots.main(str(tmp_path / "train"), str(tmp_path / "none.csv"), str(tmp_path / "out"))
    assert [p.name for p in written] == ["curves_stage3.png"]
    assert "none.csv not found" in capsys.readouterr().err
    assert cli.main(["plots", "--train-dir", str(tmp_path / "empty"), "--frontier", str(tmp_path / "none.csv"),
                     "--out", str(tmp_path / "out2")]) == 1
    assert "nothing to plot" in capsys.readouterr().err and not (tmp_path / "out2").exists()
