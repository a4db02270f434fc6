"""The one-line-per-second progress report written to stderr during a run.

It reads only cumulative counters (sent, completed, failed, dropped, in
flight), which worker processes publish into shared memory, so the same line
works for one process or many without sending per-request events anywhere.
"""

from __future__ import annotations

from typing import Callable, TextIO


class Progress:
    """Turns successive counter snapshots into 'per second' lines."""

    def __init__(self, stream: TextIO | None, label: str, duration: float,
                 target_rate: Callable[[float], float] | None = None) -> None:
        self.stream = stream
        self.label = label
        self.duration = duration
        self.target_rate = target_rate  # rate(t) of the open-loop profile
        self._last = (0.0, 0, 0)

    def line(self, elapsed: float, counts: tuple) -> str:
        sent, completed, failed, dropped, in_flight = (int(c) for c in counts)
        t_prev, sent_prev, done_prev = self._last
        dt = max(elapsed - t_prev, 1e-9)
        self._last = (elapsed, sent, completed)
        send_rate = (sent - sent_prev) / dt
        done_rate = (completed - done_prev) / dt
        target = ""
        if self.target_rate is not None:
            target = f", target {self.target_rate(min(elapsed, self.duration) - dt / 2):.0f}/s"
        return (f"[{self.label}] {elapsed:5.1f}s/{self.duration:g}s  "
                f"sent {sent} ({send_rate:.0f}/s{target})  done {completed} "
                f"({done_rate:.0f}/s)  failed {failed}  dropped {dropped}  "
                f"in-flight {in_flight}")

    def tick(self, elapsed: float, counts: tuple) -> None:
        if self._last[0] and elapsed - self._last[0] < 0.1:
            return  # the final line right after a regular one would repeat it
        text = self.line(elapsed, counts)
        if self.stream is not None:
            print(text, file=self.stream, flush=True)
