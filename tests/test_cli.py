"""`python -m latentwire <stage>`: every stage is reachable, dispatches its own args, and bad
input exits non-zero with a one-line error instead of a traceback."""
import subprocess
import sys

import pytest

from latentwire import __main__ as cli
from latentwire import baselines, evaluate, kd, prepare, train


@pytest.mark.parametrize("argv,module,expect", [
    (["prepare-mix", "--out", "x"], prepare, {"out": "x"}),
    (["teacher-kd-cache", "--out", "kd"], kd, {"out": "kd"}),
    (["train", "stage2"], train, {"stage": "stage2"}),
    (["baselines", "--out", "x.json"], baselines, {"out": "x.json"}),
    (["evaluate", "--part", "all"], evaluate, {"part": "all"}),
])
def test_dispatch(monkeypatch, argv, module, expect):
    seen = {}
    monkeypatch.setattr(module, "run", lambda args: seen.update(vars(args)))
    assert cli.main(argv) == 0
    for k, v in expect.items():
        assert seen[k] == v


def test_bad_params_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nbogus: 1\n")
    assert cli.main(["prepare-mix", "--params", str(bad), "--out", str(tmp_path / "mix")]) == 1
    err = capsys.readouterr().err
    assert "params.bogus" in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "mix").exists()


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "latentwire", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "stage1" in out and "--params" in out
