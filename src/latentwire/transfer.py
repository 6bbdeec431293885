"""Send and receive across a process boundary: the Python API and the two commands.

    python -m latentwire send --question "Who ...?" --context-file ctx.txt --out msg.lw
    python -m latentwire receive --model qwen --payload msg.lw --question "Who ...?"
    python -m latentwire send -q "..." -c "..." --out - | python -m latentwire receive -m llama -q "..."

From Python (load once, then one call per prompt):

    from latentwire.transfer import load_sender, load_receiver
    sender = load_sender("params.yaml")                # the fitted pick: models/pick
    receiver = load_receiver("params.yaml", "qwen")    # models/stage3/best + the frozen model
    payload = sender.send(question, context)           # bytes: what crosses the wire
    answer = receiver.receive(payload, question)       # the question travels beside it as text

The payload is what `evaluate` decodes its latent answers from: for encoder.kind ids the picked
context's ids (the sender needs only models/pick), for bytes the encoder's quantised values
(the sender needs the checkpoint). The receiver unpacks it, maps it through its adapter to
at most M positions and answers greedily.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import payload
from .config import Params, load_params
from .latent import LatentWire
from .llm import load_frozen
from .receiver import Receiver
from .sender import Sender


class CheckpointSender:
    """A learned sender (encoder.kind bytes): its encoder lives in the curriculum's checkpoint."""

    def __init__(self, lw: LatentWire):
        self.lw = lw

    def send(self, question: str, context: str) -> bytes:
        if not context.strip():
            raise ValueError("send: the context is empty")
        latent = self.lw.codec.latents([{"question": question, "context": context}])[0]
        return payload.pack(latent, self.lw.codec.codebook)


def load_sender(params: str | Params = "params.yaml", pick_dir: str = "models/pick",
                checkpoint: str = "models/stage3/best"):
    """kind ids: the fitted pick alone (models/pick); a learned sender: the checkpoint's encoder."""
    params = params if isinstance(params, Params) else load_params(params)
    if params.encoder.kind == "ids":
        return Sender.load(params, pick_dir)
    return CheckpointSender(LatentWire.from_checkpoint(params, checkpoint, params.stage3.M, pick_dir))


class LatentReceiver:
    """One frozen model slot reading payloads."""

    def __init__(self, params: Params, slot: str, checkpoint: str = "models/stage3/best",
                 pick_dir: str = "models/pick"):
        if slot not in params.models:
            raise ValueError(f"--model {slot!r}: no such model slot {list(params.models)}")
        self.params = params
        self.lw = LatentWire.from_checkpoint(params, checkpoint, params.stage3.M, pick_dir)
        self.llm = load_frozen(slot, params.models[slot], params.prompt, params.cache_dir)
        self.lw.attach(self.llm)
        self.rec = Receiver(self.llm)

    @torch.inference_mode()
    def receive(self, data: bytes, question: str) -> str:
        _, soft = self.rec.read(self.lw.codec, data)
        return self.rec.answer([soft], [question], self.params.evaluate.max_new_tokens)[0]


def load_receiver(params: str | Params = "params.yaml", slot: str = "llama",
                  checkpoint: str = "models/stage3/best", pick_dir: str = "models/pick") -> LatentReceiver:
    params = params if isinstance(params, Params) else load_params(params)
    return LatentReceiver(params, slot, checkpoint, pick_dir)


# ---------------------------------------------------------------- commands

def add_send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--question", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--context", help="the context text")
    src.add_argument("--context-file", help="a UTF-8 file holding the context")
    p.add_argument("--out", default="-", help="payload file, - for stdout (default)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--pick", default="models/pick", help="the fitted pick (default: %(default)s)")
    p.add_argument("--checkpoint", default="models/stage3/best", help="a learned sender's checkpoint (kind bytes)")


def run_send(args: argparse.Namespace) -> None:
    if args.context_file:
        try:
            context = Path(args.context_file).read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.context_file}: not UTF-8 ({e})") from None
    else:
        context = args.context
    data = load_sender(args.params, args.pick, args.checkpoint).send(args.question, context)
    if args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        from .io import atomic_path
        with atomic_path(args.out) as tmp:
            Path(tmp).write_bytes(data)
    print(f"send: {len(data)} bytes on the wire ({len(context.encode('utf-8'))} bytes of context)", file=sys.stderr)


def add_receive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="the receiving model slot (params.yaml models.*)")
    p.add_argument("-q", "--question", required=True, help="the question, sent beside the payload as text")
    p.add_argument("--payload", default="-", help="payload file, - for stdin (default)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--checkpoint", default="models/stage3/best")
    p.add_argument("--pick", default="models/pick", help="the fitted pick (kind ids)")


def run_receive(args: argparse.Namespace) -> None:
    data = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    print(load_receiver(args.params, args.model, args.checkpoint, args.pick).receive(data, args.question))
