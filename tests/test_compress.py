"""The pick as a prompt compressor (`Sender.compress`, `python -m latentwire compress`) on the
tiny models: within the budget of any tokenizer, made of the context's own text, led by the
question, the selected_text baseline's context at budget M, and clean errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from latentwire import __main__ as cli
from latentwire import baselines, pick
from latentwire.config import load_params
from latentwire.sender import Sender
from tiny import TEXT, fit_pick

REPO = Path(__file__).resolve().parents[1]
M = 8
# one fact a sentence: each question is about one of them
CONTEXT = ("Paris is a large city of France. The river Seine flows through Paris. "
           "Rome is the capital of Italy. The river Tiber flows through Rome. "
           "London is the capital of England. The river Thames flows through London. "
           "Berlin is the largest city of Germany. The river Spree flows through Berlin.")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_models, one_thread):
    """A project folder with a pick fitted on the tiny models (stage3.M = M)."""
    root = tmp_path_factory.mktemp("compress")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])},
                     "qwen": {"source": "local", "path": str(tiny_models["qwen"])}}
    raw["pick"].update(spans=[6], hidden=8, epochs=3)
    raw["stage3"]["M"] = M
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    fit_pick(root)
    return root


@pytest.fixture(scope="module")
def sender(project) -> Sender:
    return Sender.load(load_params(project / "params.yaml"), project / "models/pick")


@pytest.fixture(scope="module")
def fine(tmp_path_factory) -> Path:
    """Another reader's tokenizer: byte-level BPE with few merges (several tokens a word)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT.splitlines(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("fine_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    return folder


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("budget", [1, 3, M, 20])
def test_within_the_budget_of_any_tokenizer(sender, fine, budget):
    q = "Which river flows through Rome?"
    for tok in (sender.tokenizer, AutoTokenizer.from_pretrained(fine)):
        out = sender.compress(q, CONTEXT, budget, tok)
        assert 0 < n_tokens(tok, out) <= budget
    assert n_tokens(sender.tokenizer, sender.compress(q, CONTEXT)) <= M  # default: the sender's M


def test_a_finer_tokenizer_keeps_less_of_the_same_pick(sender, fine):
    q, reader = "Which river flows through Rome?", AutoTokenizer.from_pretrained(fine)
    full, out = sender.decode(sender.pick(q, CONTEXT, M).ids), sender.compress(q, CONTEXT, M, reader)
    assert n_tokens(reader, full) > M and full.startswith(out) and len(out) < len(full)


def test_made_of_the_picked_spans_in_context_order(sender):
    """The text is (a cut of) the picked spans' own context text, in context order, joined by
    the separator token (whitespace aside: the tiny tokenizer's separator is a space)."""
    sep = sender.tokenizer.decode([sender.sep_id])
    norm = lambda t: " ".join(t.split())  # noqa: E731
    for q in ("Which river flows through Paris?", "Which river flows through Berlin?", "What is it?"):
        p, out = sender.pick(q, CONTEXT, 12), sender.compress(q, CONTEXT, 12)
        assert p.spans == sorted(p.spans) and len(out) > 10
        assert norm(sep.join(p.texts(CONTEXT))).startswith(norm(out)), (out, p.texts(CONTEXT))


def test_the_question_leads_the_pick(sender):
    """Each question keeps the token the pick rates best for it, and here its city's river."""
    outs = {}
    for city, river in (("Paris", "Seine"), ("Rome", "Tiber"), ("London", "Thames"), ("Berlin", "Spree")):
        q = f"Which river flows through {city}?"
        scores = sender.model.score(pick.read(sender.tokenizer, q, CONTEXT))
        best = max(range(len(scores)), key=scores.__getitem__)
        assert any(a <= best < b for a, b in sender.pick(q, CONTEXT, 12).spans)
        outs[city] = sender.compress(q, CONTEXT, 12)
        assert river in outs[city], outs[city]
    assert len(set(outs.values())) == 4, outs


def test_at_budget_M_it_is_the_selected_text_baseline(project, sender, fine):
    """What the text baselines feed a receiver as selected_text: the picked text of
    baselines.send_all, cut by baselines.cut_tokens to M of the receiver's tokens."""
    params = load_params(project / "params.yaml")
    rows = [{"id": "x", "dataset": "squad", "question": "Which river flows through London?",
             "context": CONTEXT, "answers": ["Thames"]}]
    selected = baselines.send_all(params, rows, project / "models/pick").selected["x"]
    for tok in (sender.tokenizer, AutoTokenizer.from_pretrained(fine)):
        want = baselines.cut_tokens(SimpleNamespace(tokenizer=tok), selected, M)
        assert sender.compress(rows[0]["question"], CONTEXT, M, tok) == want


def test_the_command_end_to_end(project, sender, fine):
    """stdin in, the compressed text out, the summary on stderr (defaults: params.yaml, models/pick)."""
    q = "Which river flows through Berlin?"
    got = subprocess.run([sys.executable, "-m", "latentwire", "compress", "-q", q, "--context-file", "-",
                          "--budget", "5", "--tokenizer", str(fine)],
                         cwd=project, input=CONTEXT, capture_output=True, text=True, check=True)
    want = sender.compress(q, CONTEXT, 5, AutoTokenizer.from_pretrained(fine))
    assert got.stdout == want + "\n"
    assert f"{len(CONTEXT.encode())} -> {len(want.encode())} bytes" in got.stderr
    assert "tokens of " + str(fine) in got.stderr


def test_a_context_longer_than_the_pick_reads_is_named(project, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    (tmp_path / "long.txt").write_text(" ".join([CONTEXT] * 40))
    assert cli.main(["compress", "-q", "Which river flows through Rome?", "--context-file",
                     str(tmp_path / "long.txt")]) == 0
    out, err = capsys.readouterr()
    n = load_params(project / "params.yaml").pick.max_tokens
    assert out.strip() and f"the pick read the first {n} tokens of the context" in err


def test_the_api_refuses_an_empty_context_or_budget(sender):
    with pytest.raises(ValueError, match="context is empty"):
        sender.compress("q?", " \n")
    with pytest.raises(ValueError, match="at least 1 token"):
        sender.compress("q?", CONTEXT, 0)


def test_clean_errors(project, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(project)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("Köln liegt am Rhein.".encode("latin-1"))
    (tmp_path / "ok.txt").write_text(CONTEXT)
    old = tmp_path / "old_pick"  # a pick saved before pick.members: one model, no "members" in its meta
    shutil.copytree(project / "models/pick", old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["members"]
    (old / "meta.json").write_text(json.dumps(meta))
    for file, extra, says in [
            ("missing.txt", [], "missing.txt: cannot read it (No such file or directory)"),
            ("empty.txt", [], "empty.txt: the context is empty"),
            ("latin1.txt", [], "latin1.txt: not UTF-8"),
            ("ok.txt", ["--pick", str(tmp_path / "nowhere")], "nowhere: no trained pick"),
            ("ok.txt", ["--pick", str(old)], "old_pick: a pick saved before its members were averaged"),
            ("ok.txt", ["--tokenizer", str(tmp_path / "no_tokenizer")], "no_tokenizer: cannot load it")]:
        assert cli.main(["compress", "-q", "q?", "--context-file", str(tmp_path / file), *extra]) == 1
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        cli.main(["compress", "-q", "q?", "--context-file", str(tmp_path / "ok.txt"), "--budget", "0"])
    assert "--budget: must be at least 1 token, not 0" in capsys.readouterr().err
