"""Bad input and faults: every reader and the params loader under random mutation, corrupted
checkpoints, no pickles, a full disk, and bit-identical reruns on the tiny pipeline."""
import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire import data
from latentwire.config import ConfigError, load_params
from latentwire.data import DataError, Example

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

SEEDS = {  # one small valid file per reader format
    "squad.json": json.dumps({"version": "1.1", "data": [{"title": "Paris", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [
            {"id": "q1", "question": "Capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}),
    "hotpot.json": json.dumps([{"_id": "h1", "question": "Which river?", "answer": "Seine",
                                "supporting_facts": [["Seine", 0]],
                                "context": [["Seine", ["The Seine is a river."]], ["Lyon", ["Lyon."]]]}]),
    "sample.json": json.dumps([{"_id": "s1", "question": "What type?", "answer": "video game",
                                "title_a": "A", "para_a": ["A is a video game."], "title_b": "B",
                                "para_b": ["B is a console."], "supporting_facts": [[0], [0]],
                                "distractors": [["C", ["C is a film."]]]}]),
    "nq.jsonl": json.dumps({"question": "who won", "answers": ["Ann"],
                            "ctxs": [{"title": "T", "text": "Ann won the race.", "hasanswer": True,
                                      "isgold": True}]}) + "\n",
}

mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.sampled_from(
        [b"\xef\xbb\xbf", b"\r\n", b"\xff\xfe", b"null", b'""', b"[]", b"{}", b"1e999", b'"x"' * 2000]))),
)


def mutate(raw: bytes, m) -> bytes:
    kind, arg = m
    if kind == "truncate":
        return raw[:int(len(raw) * arg)]
    if kind == "flip":
        out = bytearray(raw)
        for pos, val in arg:
            out[min(int(pos * len(out)), len(out) - 1)] = val
        return bytes(out)
    pos, blob = arg
    i = int(pos * len(raw))
    return raw[:i] + blob + raw[i:]


@pytest.mark.parametrize("name", list(SEEDS))
@pytest.mark.parametrize("gz", [False, True])
@FUZZ
@given(m=mutations)
def test_every_reader_gives_examples_or_a_named_error(tmp_path_factory, name, gz, m):
    if gz and not name.endswith(".jsonl"):
        return
    path = tmp_path_factory.mktemp("fuzz") / (name + (".gz" if gz else ""))
    raw = mutate(SEEDS[name].encode("utf-8"), m)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    fmt = {"squad.json": "squad", "hotpot.json": "hotpot", "sample.json": "hotpot-sample",
           "nq.jsonl": "nq-oracle"}[name]
    try:
        exs, skipped = data.read_file(path, fmt, name="x")
    except DataError as e:
        assert path.name in str(e)  # the message names the file
        return
    for ex in exs:  # otherwise every example is valid, and every drop has a counted reason
        assert isinstance(ex, Example) and ex.question and ex.context and ex.answers
        assert all(isinstance(a, str) and a.strip() for a in ex.answers)
    assert all(isinstance(k, str) and n > 0 for k, n in skipped.items())


@FUZZ
@given(m=mutations)
def test_params_loader_gives_params_or_a_named_error(tmp_path_factory, m):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_bytes(mutate((REPO / "params.yaml").read_bytes(), m))
    try:
        load_params(path)
    except ConfigError as e:
        assert str(path) in str(e)


def test_no_pickle_anywhere():
    """Checkpoints and caches are safetensors + JSON: no torch.load, no pickle in the code."""
    src = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.py"))
    assert not re.search(r"torch\.load\(|import pickle|pickle\.load", src)


def test_corrupted_checkpoint_is_refused(tmp_path):
    from latentwire.latent import LatentWire
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["bytes"].update(d_z=32, layers=1, heads=2, max_bytes=64)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "p.yaml")
    kw = dict(hidden={"llama": 16, "qwen": 24}, target_norm={"llama": 1.0, "qwen": 2.0})
    LatentWire(params, 8, **kw).save(tmp_path / "ckpt")
    LatentWire(params, 8, **kw).load(tmp_path / "ckpt")  # whole: loads
    with pytest.raises(ValueError, match=r"hidden: checkpoint"):
        LatentWire(params, 8, hidden={"llama": 16, "qwen": 32}, target_norm=kw["target_norm"]).load(tmp_path / "ckpt")
    f = tmp_path / "ckpt/model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"ckpt: unreadable or corrupted checkpoint"):
        LatentWire(params, 8, **kw).load(tmp_path / "ckpt")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_full_keeps_previous_outputs(small_disk, shared_data, tmp_path):
    """prepare-mix on a full disk fails with a clear error and leaves the last good mix intact."""
    from latentwire import __main__ as cli
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(root=str(shared_data), train_examples=8, pick_pool=8)
    for ds in raw["data"]["datasets"].values():
        ds["max_eval"] = 2
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(raw))
    args = ["prepare-mix", "--out", str(small_disk / "mix"), "--metrics", str(small_disk / "data.json")]
    assert cli.main([*args, "--params", str(tmp_path / "small.yaml")]) == 0
    before = {p.name: p.read_bytes() for p in (small_disk / "mix").iterdir()}
    raw["data"]["train_examples"] = 2000  # ~1 MB of JSONL: does not fit in 256 KiB
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main([*args, "--params", str(tmp_path / "big.yaml")]) == 1
    after = {p.name: p.read_bytes() for p in (small_disk / "mix").iterdir()}
    assert after == before  # no temp file left behind, the previous outputs untouched


def test_same_seed_same_bytes(tmp_path, tiny_models, monkeypatch):
    """The tiny pipeline twice with one seed: identical mix, KD cache and checkpoint on CPU."""
    import torch
    from safetensors import safe_open
    from test_train import rows
    from tiny import fit_pick
    from latentwire import kd, train

    def run(where: Path) -> dict[str, bytes]:
        raw = yaml.safe_load((REPO / "params.yaml").read_text())  # the default sender (ids)
        raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])}}
        raw["pick"].update(spans=[4], hidden=8, epochs=2)
        raw["kd"] = {"k": 4, "K_max": 3, "batch_size": 4}
        raw["train"] = {"batch_size": 4, "dev_examples": 4, "eval_every": 2, "save_every": 2}
        raw["stage1"] = {"M": 8, "epochs": 1, "K": 1}
        (where / "data/mix").mkdir(parents=True)
        (where / "params.yaml").write_text(yaml.safe_dump(raw))
        (where / "data/mix/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(12, "squad")))
        monkeypatch.chdir(where)
        fit_pick(where)
        kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
        train.main("stage1", "params.yaml", ".")
        out = {"curve": (where / "metrics/train/stage1_curve.csv").read_bytes()}
        for name in ("models/pick/pick.safetensors", "data/kd/llama.safetensors",
                     "models/stage1/best/model.safetensors"):
            with safe_open(str(where / name), "pt") as f:  # the header's key order may vary
                out[name] = (f.metadata(), {k: f.get_tensor(k) for k in f.keys()})
        return out

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a["curve"] == b["curve"]
    for name in ("models/pick/pick.safetensors", "data/kd/llama.safetensors", "models/stage1/best/model.safetensors"):
        (meta_a, ta), (meta_b, tb) = a[name], b[name]
        assert meta_a == meta_b and ta.keys() == tb.keys(), name
        assert all(torch.equal(ta[k], tb[k]) for k in ta), f"{name} differs between two runs"


def test_atomic_dir_leaves_one_whole_folder(tmp_path):
    from latentwire.io import atomic_dir, restore_dir, write_text
    last = tmp_path / "last"
    with atomic_dir(last) as d:
        write_text(d / "a", "1")
        write_text(d / "b", "1")
    with pytest.raises(RuntimeError):  # a writer that dies half-way: the old folder stays
        with atomic_dir(last) as d:
            write_text(d / "a", "2")
            raise RuntimeError("killed")
    assert {p.name: p.read_text() for p in last.iterdir()} == {"a": "1", "b": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    last.rename(tmp_path / ".last.old")  # a kill between the two renames: the old one comes back
    assert restore_dir(last) == last and (last / "a").read_text() == "1"
    last.rename(tmp_path / ".last.old")  # ... or the next write replaces it
    with atomic_dir(last) as d:
        write_text(d / "a", "3")
    assert (last / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_stop_requests_flag_exit_code_and_handlers_restored():
    import signal
    from latentwire.signals import stop_requests
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert not stop
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: only the flag
        assert stop and stop.name == "SIGINT"
        with pytest.raises(SystemExit) as e:
            stop.exit("stage1: SIGINT at step 3: saved models/stage1/last, rerun to resume")
        assert e.value.code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(SystemExit) as e:
        with stop_requests(at_once=True, message="evaluate: {signal}: rerun to resume"):
            signal.raise_signal(signal.SIGTERM)
    assert e.value.code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_every_write_goes_through_an_atomic_temp_file():
    """Outside io.py, every file write in src/ targets a temporary path (io.atomic_path /
    atomic_dir, or a temp folder renamed into place), so a kill never leaves a half-written file."""
    write = re.compile(r"save_file\(|savefig\(|\.write_text\(|\.write_bytes\(|to_csv\(|save_pretrained\(|"
                       r"open\([^)]*[\"'][wax]b?\+?[\"']")
    bad = [f"{p.name}:{i}: {line.strip()}" for p in sorted((REPO / "src").rglob("*.py")) if p.name != "io.py"
           for i, line in enumerate(p.read_text().splitlines(), 1) if write.search(line) and "tmp" not in line]
    assert not bad, bad
