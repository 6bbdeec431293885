"""One entry point per stage: `python -m latentwire <stage> [--help]` (+ report, plots)."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

# stage name -> (module, one-line help); each module exposes add_args(parser) and run(args)
STAGES = {
    "prepare-mix": ("prepare", "read the QA datasets and write data/mix/{train,eval,pool}.jsonl"),
    "pick": ("sender", "fit the sender's pick (encoder.kind ids) on the train-split pool -> models/pick"),
    "teacher-kd-cache": ("kd", "cache the teachers' top-k log-probs on the train mix per model"),
    "train": ("train", "one curriculum stage (stage1 | stage2 | stage3) of the encoder + adapters"),
    "baselines": ("baselines", "F1/EM of the text baselines (full text and its cuts) per model x dataset"),
    "evaluate": ("evaluate", "F1/EM of the latent beside the text baselines per model x dataset"),
    # commands, not DVC stages: review the results
    "report": ("report", "Markdown review table of metrics/eval.json (+ deltas vs --base, worst examples)"),
    "plots": ("plots", "PNGs of the training curves, the F1 vs wire-bytes frontier and F1 bars"),
    # the interlingua across a process boundary (transfer.py: add_<name>_args / run_<name>)
    "send": ("transfer", "question + context -> a payload file (the bytes on the wire)"),
    "receive": ("transfer", "a payload + the question -> one model's answer"),
    # the pick alone, as a prompt compressor for any LLM
    "compress": ("compress", "question + context -> the picked text, within a budget of the reader's tokens"),
}


def main(argv: list[str] | None = None) -> int:
    """Only the chosen command's module is imported (so a stage's DVC deps are its module's
    import closure, plus this file)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m latentwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(f"latentwire.{module}")
            getattr(mod, "add_args" if module != "transfer" else f"add_{name}_args")(p)
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        (mod.run if mod.__name__ != "latentwire.transfer" else getattr(mod, f"run_{args.command}"))(args)
    except (ValueError, RuntimeError, OSError) as e:  # our errors name the file and field
        print(f"latentwire {args.command}: error: {e}", file=sys.stderr)
        return 1
    # stderr: stdout stays clean for what a command prints (report's Markdown)
    print(f"latentwire {args.command}: done in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
