"""SIGTERM / SIGINT as a request to stop cleanly (a scheduler's preemption, Ctrl-C).

    with stop_requests() as stop:
        for step in ...:
            ...one unit of work, then make it durable...
            if stop:
                stop.exit(f"stage1: {stop.name} at step {step}: saved ..., rerun to resume")

Inside the block a signal only sets the flag, so the unit in progress finishes and is saved;
`exit` prints the line and exits with 128 + the signal number (143 for SIGTERM, 130 for
SIGINT). A second signal stops at once (every file is written atomically, so nothing is left
half-written). `at_once=True` skips the flag: the first signal prints `message` and exits,
for work whose units are too long to wait for (evaluate), whose finished units are already
durable. The previous handlers are restored when the block ends. Outside the main thread
(where Python cannot install handlers) the block does nothing.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name  # a rank stopped by another: SIGTERM

    def exit(self, message: str):
        print(message, flush=True)
        raise SystemExit(128 + (self.signum or signal.SIGTERM))


@contextmanager
def stop_requests(at_once: bool = False, message: str = ""):
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum, frame):
        first = not stop
        stop.signum = signum
        if at_once:
            stop.exit(message.format(signal=stop.name))
        if not first:
            stop.exit(f"{stop.name} again: stopping now")

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
