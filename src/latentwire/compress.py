"""The pick as a prompt compressor for any LLM: question + context -> the picked text.

    python -m latentwire compress -q "Who ...?" --context-file ctx.txt --budget 64 \\
        --tokenizer meta-llama/Llama-3.1-8B-Instruct > short.txt

prints at most --budget tokens (of --tokenizer; default: the sender's own) of the context, the
spans the fitted pick (models/pick) rates best for the question, in context order, joined by
" ...". Feed them to any LLM in place of the context. The summary (tokens and bytes, in -> out)
goes to stderr. From Python: `Sender.compress(question, context, budget, tokenizer)`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer

from .config import load_params
from .sender import Sender


def read_context(path: str) -> str:
    """The UTF-8 text of `path` (- for stdin)."""
    name = "<stdin>" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        text = data.decode("utf-8")
    except OSError as e:
        raise ValueError(f"--context-file {name}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--context-file {name}: not UTF-8 ({e})") from None
    if not text.strip():
        raise ValueError(f"--context-file {name}: the context is empty")
    return text


def positive(s: str) -> int:
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 token, not {n}")
    return n


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--question", required=True, help="the question the context should answer")
    p.add_argument("--context-file", required=True, help="a UTF-8 file holding the context, - for stdin")
    p.add_argument("--budget", type=positive, help="at most this many tokens of --tokenizer (default: stage3.M)")
    p.add_argument("--tokenizer", help="the reader's tokenizer, a local folder or hub id "
                                       "(default: the sender's own, models.<ids.feature_model>)")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--pick", default="models/pick", help="the fitted pick (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    context = read_context(args.context_file)
    tokenizer = None
    if args.tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except OSError as e:
            raise ValueError(f"--tokenizer {args.tokenizer}: cannot load it ({e})") from None
    sender = Sender.load(load_params(args.params), args.pick)
    text = sender.compress(args.question, context, args.budget, tokenizer)
    print(text)
    if len(sender.tokenizer(context, add_special_tokens=False)["input_ids"]) > sender.max_tokens:
        print(f"compress: the pick read the first {sender.max_tokens} tokens of the context (pick.max_tokens)",
              file=sys.stderr)
    tok = sender.tokenizer if tokenizer is None else tokenizer
    n_in, n_out = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in (context, text))
    b_in, b_out = (len(t.encode("utf-8")) for t in (context, text))
    of = args.tokenizer or "the sender's tokenizer"
    print(f"compress: {n_in} -> {n_out} tokens of {of}, {b_in} -> {b_out} bytes", file=sys.stderr)
