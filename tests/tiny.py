"""Tiny, randomly initialised HF causal LMs with their own offline tokenizer (tests only).

`make_tiny("llama" | "qwen2", folder)` writes a folder that `from_pretrained` loads like a
real checkpoint: config.json + safetensors weights + a byte-level BPE tokenizer trained here
on a few hundred words of inline English, with a ChatML chat template. Nothing is downloaded.
Seeded: the same call writes the same tokenizer and weights.

The two vocabularies differ, as SmolLM2's and Qwen's do: the qwen2 tokenizer is trained on the
lower-cased text, with more special tokens ahead of the rest and fewer merges, so nearly every
string has another id there and many llama tokens (" The", " Paris", " S") take several qwen2
tokens: the ids sender's cross-tokenizer path (adapter.string_table, `slots.split`) runs.
`make_tiny(kind, folder, vocab="llama")` gives a model with the llama vocabulary instead.

The llama tokenizer has no pad token (as real Llama checkpoints), so `load_frozen` must fall
back to eos; the qwen2 one has its own <pad>.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers: tests never reach the hub

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,  # noqa: E402
                          Qwen2Config, Qwen2ForCausalLM)

SPECIALS = ["<pad>", "<eos>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# qwen2: three more special tokens first, so every other token's id moves
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                 "<|fim_suffix|>", "<pad>", "<eos>"]

CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TEXT = """\
Answer the question with a short span copied from the context. Context: Question: Answer:
The Eiffel Tower was completed in 1889 and stands on the Champ de Mars in Paris. When was
the Eiffel Tower completed? Paris is the capital and most populous city of France. It lies
on the river Seine in the north of the country. The city is a major centre of finance,
diplomacy, commerce, fashion, science and the arts. Lyon is the third largest city of France
and lies at the confluence of the rivers Rhone and Saone. The Rhone is a river that rises in
the Alps of Switzerland and flows through Lake Geneva before it reaches the south of France.
Marseille is a port on the Mediterranean Sea. London is the capital of England and of the
United Kingdom. It stands on the river Thames, which flows east into the North Sea. Rome is
the capital of Italy; the Tiber runs through it. Berlin is the capital of Germany and its
largest city. Who wrote the play Hamlet? William Shakespeare wrote Hamlet around the year 1600.
What is the largest planet in the solar system? Jupiter is the largest planet, and Saturn is
the second largest. Water boils at one hundred degrees Celsius at sea level and freezes at
zero degrees. The Amazon is the largest river by discharge of water in the world. The Nile is
often said to be the longest river on Earth. Mount Everest is the highest mountain above sea
level; it is in the Himalayas on the border between Nepal and China. How many legs does a
spider have? A spider has eight legs and an insect has six legs. The first man on the Moon
was Neil Armstrong in July 1969, followed by Buzz Aldrin. The light bulb was improved by
Thomas Edison, and the telephone was patented by Alexander Graham Bell in 1876. In which year
did the Second World War end? It ended in 1945. The Great Wall of China is more than two
thousand years old and was built to protect the northern border. The heart pumps blood
through the body, and the lungs bring oxygen into the blood. Photosynthesis lets plants make
sugar from light, water and carbon dioxide. The French Revolution began in 1789 with the
storming of the Bastille. Isaac Newton described gravity and the laws of motion; Albert
Einstein proposed the theory of relativity in the early twentieth century. The Pacific Ocean
is the largest and deepest ocean. Tokyo is the capital of Japan, and Canberra is the capital
of Australia. Which river flows through Paris? The Seine flows through Paris. A café in Paris
sells crème brûlée, and a street in Köln is called Straße; naïve résumé, 東京, Привет.
"""

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=1024,
             # larger than HF's 0.02 so greedy decoding has clear argmax margins (no near-ties
             # that float noise between batch shapes could flip)
             initializer_range=0.5)


def make_tokenizer(pad: bool, vocab: str = "llama") -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on TEXT (vocab "llama": 400 tokens) or on TEXT lower-cased (vocab
    "qwen2": 360 tokens, other ids): encodes any string, decodes back exactly."""
    if vocab not in ("llama", "qwen2"):
        raise ValueError(f"vocab must be 'llama' or 'qwen2', not {vocab!r}")
    specials, size, text = (SPECIALS, 400, TEXT) if vocab == "llama" else (QWEN_SPECIALS, 360, TEXT.lower())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    extra = [t for t in specials if t not in ("<pad>", "<eos>", "<|endoftext|>")]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                   pad_token="<pad>" if pad else None,
                                   additional_special_tokens=extra)
    fast.chat_template = CHATML
    return fast


def make_tiny(kind: str, folder: Path, vocab: str | None = None) -> Path:
    """Save a tiny random `kind` ("llama" or "qwen2") model + tokenizer into `folder`; the
    tokenizer is `vocab`'s (default: the kind's own)."""
    if kind not in ("llama", "qwen2"):
        raise ValueError(f"kind must be 'llama' or 'qwen2', not {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(pad=kind == "qwen2", vocab=vocab or kind)
    ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "llama":
        config, cls = LlamaConfig(**SIZES, **ids), LlamaForCausalLM
    else:
        config, cls = Qwen2Config(**SIZES, **ids, tie_word_embeddings=True), Qwen2ForCausalLM
    torch.manual_seed(0 if kind == "llama" else 1)
    model = cls(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


FACTS = [("Paris", "France", "Seine"), ("Rome", "Italy", "Tiber"), ("London", "England", "Thames"),
         ("Berlin", "Germany", "Spree"), ("Lyon", "France", "Rhone")]


def qa_rows(n: int, dataset: str, offset: int = 0) -> list[dict]:
    """n QA rows in the mix's schema whose answer (a river) sits in the context's third sentence."""
    out = []
    for i in range(offset, offset + n):
        city, country, river = FACTS[i % len(FACTS)]
        out.append({"id": f"{dataset}-{i}", "dataset": dataset, "title": f"t{i}",
                    "question": f"Which river flows through {city}?",
                    "context": (f"{city} is a large city of {country}. It has many bridges and parks. "
                                f"The river {river} flows through {city}. Number {i} is here."),
                    "answers": [river]})
    return out


def ids_project(root: Path, tiny_models: dict[str, Path], edit=None) -> Path:
    """A project folder for the default sender (encoder.kind ids) on the tiny models: the repo's
    params.yaml made tiny (edit(raw) changes it further) and a train / eval / pool mix of qa_rows."""
    import json

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert raw["encoder"]["kind"] == "ids"  # the default sender
    raw["models"] = {s: {"source": "local", "path": str(tiny_models[s])} for s in ("llama", "qwen")}
    raw["pick"].update(spans=[6], hidden=8, epochs=3)
    raw["kd"] = {"k": 4, "K_max": 3, "batch_size": 4}
    raw["train"].update(batch_size=4, dev_examples=4, eval_every=2, save_every=1, lr=3e-3)
    raw["stage1"] = {"M": 12, "epochs": 1, "K": 1, "kd": 1.0, "ce": 0.0}
    raw["stage2"] = {"M": 10, "epochs": 1, "K": 1, "kd": 1.0, "ce": 1.0}
    raw["stage3"] = {"M": 8, "epochs": 1, "K": 2, "kd": 1.0, "ce": 1.0}
    raw["evaluate"] = {"max_new_tokens": 3, "batch_size": 4, "max_examples": None}
    if edit is not None:
        edit(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "data/mix").mkdir(parents=True)
    splits = {"train": qa_rows(8, "squad") + qa_rows(4, "nq"), "eval": qa_rows(3, "squad", 20) + qa_rows(3, "nq", 30),
              "pool": qa_rows(40, "squad", 100)}
    for split, rs in splits.items():
        (root / f"data/mix/{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return root


def run_ids_pipeline(root: Path) -> tuple[dict, dict]:
    """The whole pipeline in project folder `root`: pick, KD cache, the three stages, the text
    baselines and the latent's evaluation -> (the pick's metrics, the evaluation's)."""
    from latentwire import evaluate, kd, sender, train

    old = os.getcwd()
    os.chdir(root)
    try:
        pm = sender.main("params.yaml")
        kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
        for stage in ("stage1", "stage2", "stage3"):
            train.main(stage, "params.yaml", ".")
        evaluate.main("params.yaml", part="text")
        return pm, evaluate.main("params.yaml", part="latent")
    finally:
        os.chdir(old)


def fit_pick(root: Path, params: str = "params.yaml", n: int = 24) -> dict:
    """The `pick` stage on a small pool of qa_rows, inside project folder `root` (the default
    sender, encoder.kind ids, needs models/pick)."""
    import json

    from latentwire import sender

    (root / "data/mix").mkdir(parents=True, exist_ok=True)
    (root / "data/mix/pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows(n, "squad", 500)))
    return sender.main(str(root / params), str(root / "data/mix/pool.jsonl"),
                       str(root / "data/pick/features.safetensors"), str(root / "models/pick"),
                       str(root / "metrics/pick.json"))


def bench(name: str):
    """bench/<name>.py as a module (the bench scripts are not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass resolves its annotations through its module
    spec.loader.exec_module(module)
    return module
