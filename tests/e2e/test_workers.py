"""`scoregate serve --workers 2`: two router processes on one port, one control plane.

What a user relies on: both processes answer on the one scoring port; a replica's
`max_concurrent_requests_per_instance` holds across them (the replica itself counts);
batch jobs submitted through either one work; /metrics shows every worker; a worker
that dies is started again and the slots it held are given back; SIGTERM stops every
process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import socket
import ssl

import aiohttp
import pytest
import yaml
from cryptography import x509

from tests.support.gateway import REPO, GatewayProcess, alive, wait_for
from tls import client_context, write_dev_certificates

COUNTING_SERVER = REPO / "tests" / "fakes" / "models" / "counting" / "server.py"
IRIS, IRIS_BATCH = REPO / "examples" / "iris", REPO / "examples" / "iris-batch"


def counting_deployment(folder, endpoint: str, count_file, *, delay_s: float, limit: int, queue_wait_ms: int,
                        scale_settings: dict | None = None):
    (folder / f"{endpoint}-endpoint.yml").write_text(yaml.safe_dump(
        {"name": endpoint, "auth_mode": "key", "traffic": {"main": 100}}))
    (folder / f"{endpoint}-main.yml").write_text(yaml.safe_dump({
        "name": "main", "endpoint_name": endpoint,
        "environment": {"command": f"{sys.executable} {COUNTING_SERVER} {{port}}",
                        "inference_config": {"liveness_route": {"port": 8000, "path": "/healthz"},
                                             "readiness_route": {"port": 8000, "path": "/healthz"},
                                             "scoring_route": {"port": 8000, "path": "/score"}}},
        "environment_variables": {"COUNT_FILE": str(count_file), "DELAY_S": str(delay_s)},
        "request_settings": {"max_concurrent_requests_per_instance": limit, "max_queue_wait_ms": queue_wait_ms},
        **({"scale_settings": scale_settings} if scale_settings else {}),
    }))


@pytest.fixture(scope="module")
def workers_gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    manifests = root / "manifests"
    manifests.mkdir()
    counting_deployment(manifests, "counted", root / "counted.json", delay_s=0.3, limit=2, queue_wait_ms=400)
    counting_deployment(manifests, "slow", root / "slow.json", delay_s=3.0, limit=1, queue_wait_ms=8000)
    counting_deployment(manifests, "scaled", root / "scaled.json", delay_s=0.2, limit=2, queue_wait_ms=2000,
                        scale_settings={"type": "target_utilization", "min_instances": 1, "max_instances": 2,
                                        "target_utilization_percentage": 70, "polling_interval": 1})
    data = root / "data" / "flowers"
    data.mkdir(parents=True)
    for i in range(20):
        (data / f"f{i:02d}.json").write_text(json.dumps(
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}))
    gw = GatewayProcess(root / "state", [str(manifests), str(IRIS), str(IRIS_BATCH)],
                        ["--workers", "2", "--data-root", str(root / "data")]).start()
    try:
        gw.wait_ready("counted", ["main"])
        gw.wait_ready("slow", ["main"])
        gw.wait_ready("scaled", ["main"])
        gw.wait_ready("iris", ["blue", "green"])
        gw.root = root
        yield gw
    finally:
        gw.kill_everything()


def healthz(gw) -> dict:
    status, body = gw.admin("GET", "/healthz")
    assert status == 200, body
    return body


def metrics(gw) -> str:
    status, body = gw.admin("GET", "/metrics")
    assert status == 200
    return body


def series(text: str, name: str) -> dict[str, float]:
    """{labels text: value} of one metric's samples."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.M)}


def one_connection_per_request(gw) -> aiohttp.ClientSession:
    # A new connection (new source port) for every request, so the kernel spreads them
    # over both workers.
    connector = aiohttp.TCPConnector(ssl=client_context(gw.info.ca_cert), force_close=True, limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def score(session, gw, endpoint: str, key: str) -> int:
    async with session.post(f"{gw.scoring_url}/api/v1/endpoint/{endpoint}/score", json={"data": [1]},
                            headers={"Authorization": f"Bearer {key}"}) as response:
        await response.read()
        return response.status


async def hammer(gw, endpoint: str, *, callers: int, seconds: float, statuses: list[int]) -> None:
    """`callers` clients scoring back to back for `seconds`; each answer's status is kept."""
    key = gw.keys(endpoint)[0]
    until = time.monotonic() + seconds

    async def caller(session) -> None:
        while time.monotonic() < until:
            statuses.append(await score(session, gw, endpoint, key))

    async with one_connection_per_request(gw) as session:
        await asyncio.gather(*(caller(session) for _ in range(callers)))


def test_two_workers_listen_on_the_one_port(workers_gateway):
    shown = healthz(workers_gateway)["workers"]
    assert [w["index"] for w in shown] == [0, 1] and all(w["listening"] for w in shown)
    pids = {w["pid"] for w in shown}
    assert len(pids) == 2 and pids <= workers_gateway.replica_pids()  # children of the gateway
    port = workers_gateway.scoring_url.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    if shutil.which("ss") and listening:
        assert {int(p) for p in re.findall(r"pid=(\d+)", listening)} == pids


async def test_the_replica_limit_holds_across_both_workers(workers_gateway):
    gw = workers_gateway
    statuses: list[int] = []
    await hammer(gw, "counted", callers=12, seconds=3.0, statuses=statuses)
    seen = json.loads((gw.root / "counted.json").read_text())
    assert seen["peak"] == 2, f"the replica saw {seen['peak']} requests at once; its limit is 2 for all workers"
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 10 and statuses.count(429) > 0  # busy, and refused beyond the limit
    served = series(metrics(gw), "scoregate_requests_total")
    per_worker = {w: sum(v for labels, v in served.items()
                         if 'endpoint="counted"' in labels and 'status="200"' in labels and f'worker="{w}"' in labels)
                  for w in "01"}
    # Fair across workers: a freed slot goes to whichever worker's caller waited longest
    # (without that, the worker that first held both slots kept them while the other starved,
    # 0-1 of ~20). The kernel picks each request's worker at random, so even a fair split of
    # ~20 is 3/17 now and then (it failed once at a fifth); a tenth still tells starvation.
    assert min(per_worker.values()) >= sum(per_worker.values()) // 10, f"both workers served: {per_worker}"
    assert sum(per_worker.values()) == statuses.count(200) == seen["served"]
    logs = gw.state.root / "logs"

    def logged() -> list[int]:  # each worker writes its own file, a batch every 0.2 s
        files = [logs / f"access-worker{w}.log" for w in "01"]
        lines = [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]
        return [sum(1 for line in lines if line["endpoint"] == "counted" and line["status"] == status)
                for status in (200, 429)]

    wait_for(lambda: logged() == [statuses.count(200), statuses.count(429)], 5,
             "every answer in the workers' access logs")


async def test_a_batch_job_submitted_to_any_worker_runs(workers_gateway):
    gw = workers_gateway
    key = gw.cli_json("endpoint", "get-credentials", "--name", "iris-batch")["primaryKey"]
    jobs_url = f"{gw.scoring_url}/api/v1/batch/iris-batch/jobs"
    headers = {"Authorization": f"Bearer {key}"}
    async with one_connection_per_request(gw) as session:
        async with session.post(jobs_url, json={"input": {"type": "uri_folder", "path": "flowers"}},
                                headers=headers) as response:
            assert response.status == 202, await response.text()
            job = await response.json()
        for _ in range(300):  # every poll on a new connection: both workers pass it on
            async with session.get(f"{jobs_url}/{job['id']}", headers=headers) as response:
                assert response.status == 200
                view = await response.json()
            if view["status"] in ("Completed", "Failed", "Canceled"):
                break
            await asyncio.sleep(0.1)
        assert view["status"] == "Completed", view
        async with session.get(f"{jobs_url}/{job['id']}/output", headers=headers) as response:
            assert response.status == 200
            assert len((await response.text()).splitlines()) == 20
        async with session.get(jobs_url, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401 and (await response.json())["code"]


async def test_the_autoscaler_reads_the_load_of_every_worker(workers_gateway):
    """6 callers on 2 slots: busy + queued summed over the workers is well above 70% of
    the capacity, so the controller's autoscaler (in the main process) asks for the second
    replica. (Each worker queues at most 2 here, 1/2 of the deployment's queue: some 429s.)"""
    gw = workers_gateway
    statuses: list[int] = []
    assert gw.deployment("scaled", "main")["desired_replicas"] == 1
    load = asyncio.create_task(hammer(gw, "scaled", callers=6, seconds=4.0, statuses=statuses))
    scaled = await asyncio.to_thread(wait_for, lambda: gw.deployment("scaled", "main")["desired_replicas"] == 2,
                                     15, "the autoscaler to ask for a second replica")
    await load
    assert scaled and set(statuses) <= {200, 429} and statuses.count(200) > 10, statuses


def test_metrics_show_each_worker_and_stay_valid(workers_gateway):
    text = metrics(workers_gateway)
    workers = {m for labels in series(text, "scoregate_routing_table_version") for m in re.findall(r'worker="(\d)"', labels)}
    assert workers == {"0", "1"}
    assert "scoregate_workers_listening 2.0" in text
    # The control plane's own series come from the main process: no worker label.
    rollouts = series(text, "scoregate_rollouts_total")
    assert any('outcome="succeeded"' in labels for labels in rollouts), rollouts
    assert not any("worker=" in labels for labels in rollouts)
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _resumed_by_worker(gw) -> dict[str, float]:
    counts = {"0": 0.0, "1": 0.0}
    for labels, value in series(metrics(gw), "scoregate_tls_handshakes_total").items():
        if 'outcome="resumed"' in labels:
            counts[re.search(r'worker="(\d)"', labels).group(1)] += value
    return counts


def _visit(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None):
    """A new TLS connection, one request answered, closed: (session, reused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"POST /api/v1/endpoint/iris/score HTTP/1.1\r\nHost: localhost\r\n"
                        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # no key: refused, and answered
            return tls.session, tls.session_reused


def test_a_tls_session_resumes_on_either_worker(workers_gateway):
    gw = workers_gateway
    port = int(gw.scoring_url.rsplit(":", 1)[1])
    context = client_context(gw.info.ca_cert)
    before = _resumed_by_worker(gw)
    session, reused = _visit(port, context)
    assert session is not None and session.has_ticket and not reused
    # Each new connection goes to either worker (the kernel picks by its ports): a ticket
    # one worker issued must open on both. A handful of rounds makes both take part.
    visits = 0
    for _ in range(4):
        for _ in range(16):
            assert _visit(port, context, session)[1], f"visit {visits + 1}: a full handshake, not resumed"
            visits += 1
        counted = wait_for(lambda: (c := _resumed_by_worker(gw)) and sum(c.values()) - sum(before.values()) >= visits
                           and c, 10, "the resumed handshakes in /metrics")
        if all(counted[w] > before[w] for w in ("0", "1")):
            break
    assert all(counted[w] > before[w] for w in ("0", "1")), (before, counted)


async def test_a_killed_worker_gives_its_slots_back_and_is_started_again(workers_gateway):
    gw = workers_gateway
    key = gw.keys("slow")[0]
    before = {w["index"]: w["pid"] for w in healthz(gw)["workers"]}
    async with one_connection_per_request(gw) as session:
        held = asyncio.create_task(score(session, gw, "slow", key))  # takes the one slot for 3 s

        def holder():
            in_flight = series(metrics(gw), "scoregate_deployment_in_flight_requests")
            busy = [re.search(r'worker="(\d)"', labels).group(1) for labels, value in in_flight.items()
                    if 'endpoint="slow"' in labels and value == 1]
            return busy[0] if busy else None

        index = int(await asyncio.to_thread(wait_for, holder, 10, "the slow request to be in flight"))
        shown = await asyncio.to_thread(wait_for, lambda: (lambda d: d if d["in_flight_requests"] == 1 else None)(
            gw.deployment("slow", "main")), 5, "the admin API to count the request")
        assert shown["queued_requests"] == 0
        os.kill(before[index], signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await held  # its connection died with the worker
        started = time.monotonic()
        # The dead worker's slot is given back: the one slot is free for the next caller
        # (it would wait its 8 s in the queue and get 429 otherwise). A connection the
        # kernel had already queued for the dead worker's listener is reset, as for any
        # SO_REUSEPORT listener that goes away: such a caller connects again.
        for attempt in range(3):
            try:
                assert await score(session, gw, "slow", key) == 200
                break
            except aiohttp.ClientConnectorError:
                if attempt == 2:
                    raise
        assert time.monotonic() - started < 7.0

    def restarted():
        shown = {w["index"]: w for w in healthz(gw)["workers"]}
        return all(w["listening"] for w in shown.values()) and shown[index]["pid"] != before[index]

    await asyncio.to_thread(wait_for, restarted, 30, "the worker to be started again")
    assert not alive(before[index])
    assert "scoregate_worker_restarts_total 1.0" in metrics(gw)
    key = gw.keys("counted")[0]
    async with one_connection_per_request(gw) as session:
        statuses = [await score(session, gw, "counted", key) for _ in range(10)]
    assert statuses == [200] * 10


def _served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only which certificate
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_settings_file_certificates_and_sighup_reach_every_worker(make_gateway, tmp_path):
    first, second = write_dev_certificates(tmp_path / "c1"), write_dev_certificates(tmp_path / "c2")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(first.cert, live / "tls.crt")
    shutil.copy(first.key, live / "tls.key")
    settings = tmp_path / "serve.yml"
    settings.write_text(f"workers: 2\ntls:\n  cert: {live / 'tls.crt'}\n  key: {live / 'tls.key'}\n"
                        f"  reload_interval: 0\n")
    gw = make_gateway([str(IRIS)], ["--config", str(settings)])
    assert len(healthz(gw)["workers"]) == 2
    port = int(gw.scoring_url.rsplit(":", 1)[1])
    serial = lambda path: x509.load_pem_x509_certificate(path.read_bytes()).serial_number  # noqa: E731
    assert {_served_serial(port) for _ in range(12)} == {serial(first.cert)}  # 12 connections: both workers
    shutil.copy(second.cert, live / "tls.crt")
    shutil.copy(second.key, live / "tls.key")
    gw.process.send_signal(signal.SIGHUP)  # to the main process only
    wait_for(lambda: {_served_serial(port) for _ in range(12)} == {serial(second.cert)}, 10,
             "every worker to serve the new certificate")


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_worker_count_out_of_range_is_refused(tmp_path, value):
    done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--workers", value, "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert done.returncode == 2 and "--workers" in done.stderr, done.stderr


def test_sigterm_stops_every_process(workers_gateway):
    gw = workers_gateway
    wait_for(lambda: all(w["listening"] for w in healthz(gw)["workers"]), 30, "both workers listening")
    everything = gw.replica_pids()
    workers = {w["pid"] for w in healthz(gw)["workers"]}
    assert workers <= everything
    assert gw.stop(signal.SIGTERM) == 0
    wait_for(lambda: not any(alive(pid) for pid in everything), 10, "every child process to end")
    assert "stopped" in gw.log()


def test_workers_reach_replicas_over_mtls(make_gateway, tmp_path):
    """--replica-mtls: each worker presents the router's client certificate."""
    gw = make_gateway([str(IRIS)], ["--workers", "2", "--replica-mtls"])
    gw.wait_ready("iris", ["blue", "green"])
    answer = gw.cli_json("endpoint", "invoke", "-n", "iris", "-r", str(IRIS / "sample-request.json"))
    assert answer["predictions"] == ["setosa", "versicolor", "virginica"], answer
    text = metrics(gw)
    assert sum(v for labels, v in series(text, "scoregate_requests_total").items() if 'status="200"' in labels) == 1


def test_a_second_gateway_on_the_port_of_one_with_workers_refuses_to_start(make_gateway, tmp_path):
    """The workers' SO_REUSEPORT let a second `serve --workers` (another state dir, other
    keys) bind the same port: both started, and the kernel split the clients between them."""
    first = make_gateway([], ["--workers", "2"])
    port = int(first.scoring_url.rsplit(":", 1)[1])
    for workers in ("2", "1"):
        done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(tmp_path / "other"),
                               "--port", str(port), "--admin-port", "0", "--workers", workers],
                              capture_output=True, text=True, cwd=str(REPO), timeout=60)
        assert done.returncode == 1, done.stderr
        assert f"cannot start: [Errno 98] error while attempting to bind on address ('127.0.0.1', {port}): " \
               "address already in use; --port and --admin-port choose others (0: any free port)" in done.stderr
        assert "INFO scoregate: stopped" not in done.stderr  # it never served: the error says why
    assert first.process.poll() is None
    assert first.stop() == 0
