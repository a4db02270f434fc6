"""Least outstanding requests, with power of two choices when there are many replicas.

What it does: sends the request to the replica with the fewest requests in flight from
this gateway. With more than `full_scan_limit` candidates it samples two at random and
takes the less loaded one (power of two choices), which keeps the cost constant and
avoids every router herding onto the same "least loaded" replica.
Intent: a slow replica accumulates outstanding requests and so receives less work.
Inputs: the candidates and InFlightCounter; ties are broken at random (injected rng).
"""

from __future__ import annotations

import random
from typing import Sequence

from ..routing_table import Replica
from . import InFlightCounter


class LeastOutstandingPicker:
    __slots__ = ("_rng", "_full_scan_limit")

    def __init__(self, rng: random.Random | None = None, full_scan_limit: int = 8) -> None:
        self._rng = rng or random.Random()
        self._full_scan_limit = full_scan_limit

    def choose(self, candidates: Sequence[Replica], in_flight: InFlightCounter) -> Replica:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        if count > self._full_scan_limit:
            first, second = self._rng.sample(range(count), 2)
            a, b = candidates[first], candidates[second]
            return a if in_flight.get(a.replica_id) <= in_flight.get(b.replica_id) else b
        best: list[Replica] = []
        best_load = None
        for replica in candidates:
            load = in_flight.get(replica.replica_id)
            if best_load is None or load < best_load:
                best, best_load = [replica], load
            elif load == best_load:
                best.append(replica)
        return best[0] if len(best) == 1 else self._rng.choice(best)
