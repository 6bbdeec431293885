"""Data-parallel training from the same command: `python -m latentwire train stageN` re-runs
itself under `accelerate launch` when there is more than one process to run.

The number of processes is the number of visible GPUs, or `LATENTWIRE_PROCESSES=N` (then, with
fewer than N GPUs, N CPU processes talking over gloo: how the tests check it). The ranks are
started by accelerate's torchrun launcher (`--multi_gpu`; on CPU with ACCELERATE_USE_CPU=true,
since `--cpu` alone starts a single process in accelerate 1.15 unless MPI is set up). A rank
(LATENTWIRE_LAUNCHED set) never re-launches: each trains (train.Stage via accelerate).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch


def num_processes() -> int:
    env = os.environ.get("LATENTWIRE_PROCESSES")
    return int(env) if env else torch.cuda.device_count()


def launch_command(argv: list[str], n: int) -> tuple[list[str], dict]:
    """`accelerate launch` (this interpreter) of `python -m latentwire <argv>` on n processes,
    and the environment to run it in."""
    with socket.socket() as s:  # a free port, so concurrent runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LATENTWIRE_LAUNCHED": "1"}
    if torch.cuda.device_count() < n:
        env["ACCELERATE_USE_CPU"] = "true"  # n CPU ranks over gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "latentwire", *argv]
    return cmd, env


def relaunch(argv: list[str]) -> bool:
    """Run `argv` under accelerate launch and return True, or return False to run it here
    (one process, or already a rank of a launch)."""
    n = num_processes()
    if n < 2 or os.environ.get("LATENTWIRE_LAUNCHED") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    cmd, env = launch_command(argv, n)
    print("latentwire: data-parallel on", n, "processes:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc:
        raise RuntimeError(f"accelerate launch exited with status {rc}: {' '.join(cmd)}")
    return True
