"""Clean stops on a scheduler's notice: SIGTERM or SIGUSR1 end the run after the current step's checkpoint.

Inside ``StopSignals`` the two signals only set a flag. The trainer asks ``requested`` once per step (one
small all-reduce when data parallel, so every rank stops after the same step), writes a checkpoint and
raises ``Preempted``; the CLI exits with ``128 + signal`` as a process killed by it would, and
``resume_from_checkpoint: latest`` continues the run exactly.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from .distributed import Ranks

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on ``signum`` after writing ``checkpoint`` at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {checkpoint} holds it: "
                         f"resume with resume_from_checkpoint: latest")


class StopSignals:
    """While entered (in the main thread), SIGTERM and SIGUSR1 are recorded instead of ending the process."""

    def __init__(self):
        self.received = 0
        self._previous: dict[int, object] = {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self, ranks: Ranks) -> int:
        """The signal every rank stops on (the largest number any rank received), or 0 to go on."""
        return int(ranks.max(float(self.received)))
