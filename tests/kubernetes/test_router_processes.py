"""Two or three `scoregate router --backend kubernetes` child processes against the emulated
API server, over real sockets: one coordinator Lease holder, take-over after SIGKILL while
the survivors keep answering, the per-replica limit held across the processes (also while
the coordinator is replaced), and a clean, fast hand-over on SIGTERM.

What the processes share is only what pods share: the API server (ApiServerEmulator over
HTTP on 127.0.0.1, in this test process) and the upstream replica (a CountingUpstream in
this test process). Lease holders are read from the emulator; each router's own view from
its admin port's /coordination. Timings: `PROCESS_TIMING` (lease 3 s, reports expire
after 4 s); every wait is bounded and generous for a busy 2-core machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import aiohttp
import pytest

from serving.backends.kubernetes.coordination import (COORDINATOR_LEASE, REPORT_ANNOTATION, SHARES_CONFIG_MAP,
                                                      SHARES_KEY, report_lease_name)
from serving.backends.kubernetes.shares import Report
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import (PROCESS_TIMING, SYSTEM, CountingUpstream, RouterProcess,
                                             put_deployment, put_endpoint, put_replica)

HEADERS = {"Authorization": "Bearer primary-key-1", "Content-Type": "application/json"}
LEASES = ("coordination.k8s.io", "v1", "leases")
KEY = "iris/blue"


@pytest.fixture
async def start_routers(kubeconfig, tmp_path):
    started: list[RouterProcess] = []

    async def start(*identities: str, **timing) -> list[RouterProcess]:
        routers = [RouterProcess(kubeconfig, identity, tmp_path, **timing) for identity in identities]
        started.extend(routers)
        await asyncio.gather(*(router.start() for router in routers))
        return routers

    yield start
    await asyncio.gather(*(router.stop() for router in started), return_exceptions=True)


async def until(check, timeout_s: float, what: str, routers=(), interval_s: float = 0.1):
    """eventually(), failing with the routers' log tails."""
    return await eventually(check, timeout_s, interval_s, what=what, context=lambda: "\n".join(
        f"--- {r.identity}:\n{r.log_tail()}" for r in routers))


def lease_holder(apiserver) -> str | None:
    lease = apiserver.get(LEASES, SYSTEM, COORDINATOR_LEASE)
    return (lease.get("spec") or {}).get("holderIdentity") if lease else None


def shares_doc(apiserver) -> dict:
    config_map = apiserver.get(("", "v1", "configmaps"), SYSTEM, SHARES_CONFIG_MAP)
    return json.loads(config_map["data"][SHARES_KEY]) if config_map else {}


def shares_routers(apiserver) -> set[str]:
    return set(shares_doc(apiserver).get("routers") or ())


def allowing_their_grants(apiserver, routers: list[RouterProcess]) -> bool:
    """Every router's latest report allows it exactly its grant on each replica: no table
    from before the shares (each keeps one for settle_s) counts any more."""
    shares = (shares_doc(apiserver).get("deployments") or {}).get(KEY)
    if shares is None:
        return False
    for router in routers:
        lease = apiserver.get(LEASES, SYSTEM, report_lease_name(router.identity))
        report = Report.from_json(((lease or {}).get("metadata", {}).get("annotations") or {}).get(
            REPORT_ANNOTATION, "{}"))
        allowed = {replica: slots[0] for replica, slots in report.slots.get(KEY, {}).items()}
        if allowed != dict(zip(shares["replicas"], shares["grants"].get(router.identity, ()))):
            return False
    return True


def answered_ok(outcomes: list, since: float = float("-inf")) -> int:
    return sum(1 for t, s in outcomes if s == 200 and t > since)


def sole_holder(apiserver, routers: list[RouterProcess]):
    """The router that holds the Lease and is the only one saying it coordinates, else None."""
    async def check():
        statuses = await asyncio.gather(*(r.coordination() for r in routers))
        claiming = [r for r, s in zip(routers, statuses) if s and s["coordinator"]]
        holder = lease_holder(apiserver)
        return claiming[0] if len(claiming) == 1 and claiming[0].identity == holder else None
    return check


def dealt_among(routers: list[RouterProcess]):
    """Every router applies a shares doc that deals the deployment out among exactly these routers."""
    names = {r.identity for r in routers}

    async def check():
        statuses = await asyncio.gather(*(r.coordination() for r in routers))
        return all(s and set((s["shares"].get(KEY) or {}).get("grants") or {}) == names for s in statuses)
    return check


async def load(client: aiohttp.ClientSession, router: RouterProcess, stop: asyncio.Event, outcomes: list) -> None:
    """Score in a loop until stopped; outcomes get (answered at, status), 0 for no answer."""
    url = f"{router.score_url}/iris/score"
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            async with client.post(url, data=b'{"data": [[1, 2, 3, 4]]}', headers=HEADERS) as response:
                await response.read()
                outcomes.append((loop.time(), response.status))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcomes.append((loop.time(), 0))
        if outcomes[-1][1] != 200:
            await asyncio.sleep(0.02)


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, limit=0),
                                 timeout=aiohttp.ClientTimeout(total=15))


@contextlib.asynccontextmanager
async def loading(routers: list[RouterProcess], per_router: int):
    """`per_router` clients scoring in a loop through each router; yields (outcomes, stops)
    by identity; stops (bounded) every client on the way out."""
    outcomes = {r.identity: [] for r in routers}
    stops = {r.identity: asyncio.Event() for r in routers}
    async with client_session() as client:
        workers = [asyncio.create_task(load(client, r, stops[r.identity], outcomes[r.identity]))
                   for r in routers for _ in range(per_router)]
        try:
            yield outcomes, stops
        finally:
            for stop in stops.values():
                stop.set()
            _, pending = await asyncio.wait(workers, timeout=20)
            for worker in pending:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


def largest_gap(outcomes: list, start: float, end: float) -> float:
    times = [start] + [t for t, s in outcomes if s == 200 and start <= t <= end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


async def test_sigkill_of_the_coordinator_another_takes_over_and_the_others_keep_answering(
        apiserver, start_routers):
    upstream = await CountingUpstream(delay_s=0.02).start()
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=3, max_queue_wait_ms=5000)  # a slot per router: no 429
    put_replica(apiserver, "iris", "blue", "pod-0", upstream.port)
    routers = await start_routers("router-a", "router-b", "router-c")
    first = await until(sole_holder(apiserver, routers), 20, "one coordinator among three", routers)
    await until(dealt_among(routers), 20, "slots dealt out among the three", routers)
    survivors = [r for r in routers if r is not first]

    loop = asyncio.get_running_loop()
    try:
        async with loading(routers, per_router=2) as (outcomes, stops):
            await until(lambda: all(answered_ok(outcomes[r.identity]) > 5 for r in routers), 20,
                        "every router answering", routers)
            stops[first.identity].set()
            killed_at = loop.time()
            first.signal(signal.SIGKILL)  # a crash: no Lease hand-over, its report left to expire
            assert await first.wait(10) == -signal.SIGKILL
            second = await until(sole_holder(apiserver, survivors), 20, "a survivor takes the Lease over", routers)
            took_over_at = loop.time()
            await until(lambda: shares_routers(apiserver) == {r.identity for r in survivors},
                        20, "the crashed router's report expires and its slots are dealt out again", routers)
            await until(dealt_among(survivors), 10, "the survivors apply the new shares", routers)
            dealt_at = loop.time()
            await until(lambda: all(answered_ok(outcomes[r.identity], dealt_at) >= 3 for r in survivors), 10,
                        "the survivors answering under the new shares", routers)
    finally:
        await upstream.close()

    took = took_over_at - killed_at
    assert took <= PROCESS_TIMING["lease_duration"] + 6, f"take-over took {took:.1f} s"
    assert second.identity == lease_holder(apiserver) and second is not first
    for router in survivors:
        answered = outcomes[router.identity]
        refused = [s for _, s in answered if s != 200]
        assert not refused, f"{router.identity}: {len(refused)} of {len(answered)} not answered 200: {refused[:10]}"
        during = sum(1 for t, _ in answered if killed_at <= t <= took_over_at)
        assert during >= 3, f"{router.identity} answered {during} requests while there was no coordinator"
        gap = largest_gap(answered, killed_at, answered[-1][0])
        assert gap < 2.0, f"{router.identity}: no answer for {gap:.1f} s after the crash"
    assert answered_ok(outcomes[first.identity]) > 5  # it served until it died
    assert upstream.peak <= 3


async def test_the_limit_holds_across_router_processes_also_while_the_coordinator_is_replaced(
        apiserver, start_routers):
    """limit 2 < 3 routers: the replica's two slots are dealt out, one router at a time waits
    (and gets 429); the design promises the limit still holds while there is no coordinator
    (every router keeps its last grants) and when the dead router's slot is dealt out again."""
    limit = 2
    upstream = await CountingUpstream(delay_s=0.2).start()  # long: a slot moved too early shows
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=limit, max_queue_wait_ms=300)
    put_replica(apiserver, "iris", "blue", "pod-0", upstream.port)
    routers = await start_routers("router-a", "router-b", "router-c")
    first = await until(sole_holder(apiserver, routers), 20, "one coordinator among three", routers)
    await until(dealt_among(routers), 20, "slots dealt out among the three", routers)
    await until(lambda: allowing_their_grants(apiserver, routers), 10, "reports that allow the grants only", routers)
    survivors = [r for r in routers if r is not first]

    loop = asyncio.get_running_loop()
    upstream.peak = 0
    try:
        async with loading(routers, per_router=4) as (outcomes, stops):
            await asyncio.sleep(2.0)  # the load runs a while on all three: the limit under it is checked
            assert upstream.peak == limit, "all three routers together: the replica used fully, never more"
            stops[first.identity].set()
            killed_at = loop.time()
            first.signal(signal.SIGKILL)  # the coordinator dies under load
            assert await first.wait(10) == -signal.SIGKILL
            await until(sole_holder(apiserver, survivors), 20, "a survivor takes the Lease over", routers)
            await until(lambda: shares_routers(apiserver) == {r.identity for r in survivors},
                        20, "the crashed router's slot is dealt out again", routers)
            await until(dealt_among(survivors), 10, "the survivors apply the new shares", routers)
            dealt_at = loop.time()
            await until(lambda: all(answered_ok(outcomes[r.identity], dealt_at) for r in survivors), 10,
                        "each survivor getting a slot under the new shares", routers)
    finally:
        await upstream.close()

    assert upstream.peak <= limit, f"the replica saw {upstream.peak} requests at once, limit {limit}"
    for router in survivors:
        after = [(t, s) for t, s in outcomes[router.identity] if t > killed_at]
        assert {s for _, s in after} <= {200, 429}, "refused only when every slot was busy"
    assert sum(1 for r in routers for _, s in outcomes[r.identity] if s == 200) > 20


async def test_sigterm_drains_exits_0_and_hands_the_lease_over_at_once(apiserver, start_routers):
    """With a 15 s lease, a take-over within a few seconds can only be the hand-over."""
    upstream = await CountingUpstream(delay_s=1.5).start()
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=2, max_queue_wait_ms=1000)
    put_replica(apiserver, "iris", "blue", "pod-0", upstream.port)
    routers = await start_routers("router-a", "router-b", lease_duration=15, lease_renew_deadline=10.0)
    first = await until(sole_holder(apiserver, routers), 20, "one coordinator of two", routers)
    await until(dealt_among(routers), 20, "slots dealt out among the two", routers)
    (second,) = [r for r in routers if r is not first]
    loop = asyncio.get_running_loop()
    try:
        async with client_session() as client:
            in_flight = asyncio.create_task(client.post(f"{first.score_url}/iris/score",
                                                        data=b'{"data": [[1, 2, 3, 4]]}', headers=HEADERS))
            await until(lambda: upstream.current == 1, 10, "a slow request in flight", routers)
            first.signal(signal.SIGTERM)
            signalled_at = loop.time()
            async with asyncio.timeout(15):
                response = await in_flight
                assert response.status == 200, "the request in flight is drained, not cut"
                response.release()
            assert await first.wait(15) == 0, first.log_tail()
            assert lease_holder(apiserver) in ("", second.identity)  # released, not left to expire
            assert apiserver.get(LEASES, SYSTEM, report_lease_name(first.identity)) is None  # report withdrawn
            await until(sole_holder(apiserver, [second]), 8, "the other router takes the Lease over", routers)
            assert loop.time() - signalled_at < 10  # far sooner than the 15 s lease (drain included)
            async with client.post(f"{second.score_url}/iris/score", data=b'{"data": [[1, 2, 3, 4]]}',
                                   headers=HEADERS) as answer:
                assert answer.status == 200

            second.signal(signal.SIGTERM)  # the last one, holding the Lease: it releases it too
            assert await second.wait(15) == 0, second.log_tail()
            assert lease_holder(apiserver) == ""
            assert apiserver.get(LEASES, SYSTEM, report_lease_name(second.identity)) is None
    finally:
        await upstream.close()


def test_timing_flags_parse_and_wrong_orders_are_refused():
    """The flags the tests above use reach the settings; an order that cannot work (a retry
    period not below the renew deadline, a report interval not below the member timeout) is
    refused at start rather than flapping the Lease."""
    import argparse

    from serving.backends.kubernetes.router_running import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = settings_from_args(parser.parse_args([]))
    assert (defaults.lease_duration_s, defaults.renew_deadline_s, defaults.retry_period_s) == (6, 4.0, 1.0)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in PROCESS_TIMING.items()]
    fast = settings_from_args(parser.parse_args(flags))
    assert (fast.report_interval_s, fast.member_timeout_s, fast.lease_duration_s, fast.renew_deadline_s,
            fast.retry_period_s) == (0.25, 4.0, 3, 2.0, 0.5)
    for wrong in (["--lease-retry-period=2", "--lease-renew-deadline=2"], ["--lease-renew-deadline=6"],
                  ["--report-interval=10"], ["--report-interval=0"]):
        with pytest.raises(ValueError):
            settings_from_args(parser.parse_args(wrong))
