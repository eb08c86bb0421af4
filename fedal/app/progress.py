"""One progress line per round: round k/N, labels so far, test accuracy, elapsed, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class RoundProgress:
    """Prints a line per completed round to ``stream`` (stdout by default)."""

    def __init__(
        self, total_rounds: int, stream: TextIO | None = None, first_round: int = 0
    ) -> None:
        self.total_rounds = total_rounds
        self.first_round = first_round  # rounds done before this process (a resumed run)
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def line(self, server_round: int, labels: int, accuracy: float) -> str:
        """The progress line for a finished round (round 0 is the initial evaluation)."""
        elapsed = self.elapsed()
        done = server_round - self.first_round
        eta = elapsed / done * (self.total_rounds - server_round) if done > 0 else 0.0
        return (
            f"round {server_round:>3}/{self.total_rounds} | labels {labels:>6} | "
            f"test acc {accuracy:6.2%} | elapsed {_clock(elapsed)} | ETA {_clock(eta)}"
        )

    def report(self, server_round: int, labels: int, accuracy: float) -> None:
        """Print the progress line and flush."""
        print(self.line(server_round, labels, accuracy), file=self.stream, flush=True)
