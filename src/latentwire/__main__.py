"""One entry point per stage: `python -m latentwire <stage> [--help]` (+ report, plots)."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

# stage name -> (module, one-line help); each module exposes add_args(parser) and run(args)
STAGES = {
    "prepare-mix": ("prepare", "read the QA datasets and write data/mix/{train,eval}.jsonl"),
    "teacher-kd-cache": ("kd", "cache the teachers' top-k log-probs on the train mix per model"),
    "train": ("train", "one curriculum stage (stage1 | stage2 | stage3) of the encoder + adapters"),
    "evaluate": ("evaluate", "F1/EM of the text baselines (and the latent) per model x dataset"),
    # commands, not DVC stages: review the results
    "report": ("report", "Markdown review table of metrics/eval.json (+ deltas vs --base, worst examples)"),
    "plots": ("plots", "PNGs of the training curves, the F1 vs wire-bytes frontier and F1 bars"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    modules = {}
    for name, (module, help_) in STAGES.items():
        modules[name] = importlib.import_module(f"latentwire.{module}")
        modules[name].add_args(sub.add_parser(name, help=help_, description=help_))
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        modules[args.command].run(args)
    except (ValueError, RuntimeError, OSError) as e:  # our errors name the file and field
        print(f"latentwire {args.command}: error: {e}", file=sys.stderr)
        return 1
    # stderr: stdout stays clean for what a command prints (report's Markdown)
    print(f"latentwire {args.command}: done in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
