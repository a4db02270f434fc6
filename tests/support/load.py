"""A bounded open-loop load for tests: a fixed request rate for a fixed time, counting
every answer by status (and by deployment), so a test can assert "zero failed requests"."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from tests.support.clients import scoring_session


@dataclass
class LoadResult:
    statuses: Counter = field(default_factory=Counter)
    deployments: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)  # error codes of refusals
    last_deployments: list = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses.get(200, 0)


class SteadyLoad:
    """Start with start(); stop() waits for the requests in flight (bounded) and returns."""

    def __init__(self, ca_cert: str, url: str, headers: dict, rate: float, *, max_duration_s: float = 60.0,
                 max_in_flight: int = 200) -> None:
        self._ca, self._url, self._headers = ca_cert, url, headers
        self._rate, self._max_duration_s, self._max_in_flight = rate, max_duration_s, max_in_flight
        self.result = LoadResult()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> "SteadyLoad":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> LoadResult:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)
        return self.result

    async def _run(self) -> None:
        pending: set[asyncio.Task] = set()
        async with scoring_session(self._ca, connections=self._max_in_flight) as session:
            started = time.monotonic()
            n = 0
            while not self._stop.is_set() and time.monotonic() - started < self._max_duration_s:
                due = started + n / self._rate
                delay = due - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                        break
                    except asyncio.TimeoutError:
                        pass
                n += 1
                if len(pending) >= self._max_in_flight:
                    self.result.errors["generator-overloaded"] += 1
                    continue
                task = asyncio.create_task(self._one(session, n))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=20)

    async def _one(self, session: aiohttp.ClientSession, n: int) -> None:
        try:
            async with session.post(self._url, json={"n": n}, headers=self._headers) as response:
                body = await response.read()
                self.result.statuses[response.status] += 1
                if response.status != 200 and body.startswith(b"{"):
                    import json
                    self.result.codes[json.loads(body).get("code")] += 1
                deployment = response.headers.get("azureml-model-deployment")
                self.result.deployments[deployment] += 1
                self.result.last_deployments.append(deployment)
                del self.result.last_deployments[:-50]
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.result.errors[type(exc).__name__] += 1
