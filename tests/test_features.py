"""The lm encoder: a frozen model's hidden states as the sender's input (features.py), the
pretrained-feature LatentEncoder, quantisation-aware training and the diversity term."""
import json

import pytest
import torch
import yaml

from latentwire import evaluate, kd, train
from latentwire.config import ConfigError, EncoderConfig, PromptConfig, load_params
from latentwire.encoder import LatentEncoder
from latentwire.features import Featurizer
from latentwire.latent import LatentWire
from latentwire.llm import ModelConfig, load_frozen
from latentwire.losses import pairwise_cosine

from test_train import project, run_stage  # noqa: F401  (the tiny curriculum project fixture)


@pytest.fixture(scope="module")
def llm(tiny_models):
    return load_frozen("llama", ModelConfig(source="local", path=str(tiny_models["llama"])), PromptConfig())


def test_features_equal_a_full_forward_of_the_rendered_prompt(llm, one_thread):
    fz = Featurizer(llm, layer=-1, max_tokens=64, batch_size=2)
    texts = [llm.template.body("The river is the city.", "What is the river?"),
             llm.template.body("A much longer context about the king and the war.", "Who?"),
             llm.template.body("x", "y")]
    feats, mask, cut = fz(texts)
    assert feats.shape[:2] == mask.shape and feats.shape[2] == llm.model.config.hidden_size
    assert cut == [0, 0, 0]
    tok = llm.tokenizer
    for i, t in enumerate(texts):  # the prefix cache + right padding change nothing
        ids = tok(llm.template.prefix, add_special_tokens=False)["input_ids"]
        body = tok(t, add_special_tokens=False)["input_ids"] + fz.suffix_ids
        with torch.no_grad():
            h = llm.model(input_ids=torch.tensor([ids + body]), output_hidden_states=True).hidden_states[-1][0]
        n = int(mask[i].sum())
        assert n == len(body) and not mask[i, n:].any()
        torch.testing.assert_close(feats[i, :n], h[len(ids):], atol=1e-4, rtol=1e-4)
    assert len(fz.memo) == 3
    again, _, _ = fz(texts[:1])  # memoised: the same tensor, no second forward
    assert torch.equal(again[0, :int(mask[0].sum())], feats[0, :int(mask[0].sum())])


def test_features_cut_long_prompts_and_count_it(llm, one_thread):
    fz = Featurizer(llm, max_tokens=len(Featurizer(llm).suffix_ids) + 5)
    feats, mask, cut = fz([llm.template.body("word " * 50, "q?")])
    assert mask.sum() == fz.max_tokens and cut[0] > 0


def test_lm_encoder_is_input_dependent_and_validated():
    cfg = EncoderConfig(kind="lm", feature_model="llama", d_z=32, layers=1, heads=4)
    torch.manual_seed(0)
    enc = LatentEncoder(cfg, d_wire=8, M=8, shared_fraction=0.75, slots=["llama", "qwen"], feature_dim=24)
    x, mask = torch.randn(3, 10, 24), torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    z, hint = enc(x, mask)
    assert z.shape == (3, 8 + 2, 8) and hint.shape == (3, cfg.hint_buckets)
    assert not torch.allclose(z[0], z[2])
    z2, _ = enc(torch.cat([x[:, :6], torch.randn(3, 4, 24)], 1), mask)  # row 1's padding is ignored
    torch.testing.assert_close(z2[1], z[1], atol=1e-5, rtol=1e-5)
    assert not hasattr(enc, "byte_emb")
    with pytest.raises(ConfigError, match="feature_model"):
        EncoderConfig(kind="lm")
    with pytest.raises(ConfigError, match="kind"):
        EncoderConfig(kind="words")


def test_pairwise_cosine_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = 2 ** -0.5  # pairs: (0,1) 0, (0,2) c, (1,2) c
    assert pairwise_cosine(z).item() == pytest.approx(2 * c / 3)
    assert pairwise_cosine(torch.ones(4, 3, 2)).item() == pytest.approx(1.0)
    assert pairwise_cosine(torch.ones(1, 3)).item() == 0.0


def test_curriculum_with_the_lm_encoder_qat_and_diversity(project, monkeypatch, one_thread):  # noqa: F811
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["encoder"].update(kind="lm", feature_model="qwen", feature_layer=-2)
    raw["train"].update(qat=True, diversity_weight=0.5)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    m1 = run_stage(project, "stage1", monkeypatch)
    assert m1["steps"] == 4 and 0.0 < m1["final"]["z_cos"] <= 1.0
    meta = json.loads((project / "models/stage1/best/meta.json").read_text())
    assert meta["kind"] == "lm" and meta["feature_model"] == "qwen" and meta["feature_layer"] == -2
    for stage in ("stage2", "stage3"):
        run_stage(project, stage, monkeypatch)
    evaluate.main("params.yaml", part="text")
    metrics = evaluate.main("params.yaml", part="latent")
    for slot in ("llama", "qwen"):
        assert 0.0 <= metrics[slot]["squad"]["latent_int4"]["f1"] <= 1.0
        assert -1.0 <= metrics[slot]["squad"]["z_pairwise_cosine"] <= 1.0
    # a byte-encoder model cannot load the lm checkpoint: the mismatch is named
    params = load_params("params.yaml")
    params.encoder.kind = "bytes"
    lw = LatentWire(params, 4, hidden=meta["hidden"], target_norm={"llama": 1.0, "qwen": 1.0})
    with pytest.raises(ValueError, match=r"kind: checkpoint 'lm' != params 'bytes'"):
        lw.load(project / "models/stage3/best")
    lm = LatentWire(load_params("params.yaml"), 4, hidden=meta["hidden"],
                    target_norm={"llama": 1.0, "qwen": 1.0})
    lm.load(project / "models/stage3/best")
    with pytest.raises(RuntimeError, match="attach"):
        lm.encode(["no feature model attached"])
