"""BatchService as the gateway uses it, in-process: resources, keys, views, submit, delete."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from serving.batch.jobs import TERMINAL
from serving.batch.manifests import parse_batch_all
from serving.batch.requests import JobRequest, RequestError
from serving.batch.service import BatchService
from serving.batch.store import BatchStoreError
from serving.manifests import read_documents
from tests.unit.batch.batch_support import write_batch_endpoint, write_files


@pytest.fixture
async def service(tmp_path):
    root = write_batch_endpoint(tmp_path / "eps", env={"DELAY": "0.2"})
    write_files(tmp_path / "data" / "in", 30)
    batch = BatchService(tmp_path / "state", [tmp_path / "data"], scoring_url="https://gw:1")
    endpoints, deployments = parse_batch_all(read_documents([root]), batch.endpoint_names(), batch.deployment_keys())
    batch.apply(endpoints, deployments)
    await batch.start()
    yield batch
    await batch.close()


async def test_resources_keys_and_views(service):
    assert service.endpoint_names() == {"scorer"} and service.deployment_keys() == {("scorer", "main")}
    primary, secondary = service.keys("scorer")
    assert primary != secondary and service.keys("nope") is None
    assert service.regenerate_key("scorer", "primary")[1] == secondary
    assert service.regenerate_key("nope", "primary") is None
    with pytest.raises(BatchStoreError):
        service.regenerate_key("scorer", "both")
    [view] = service.list_endpoints()
    assert view["kind"] == "batch" and view["scoring_uri"] == "https://gw:1/api/v1/batch/scorer/jobs"
    assert view["deployments"] == ["main"] and view["defaults"] == {"deployment_name": "main"}
    assert service.show_deployment("scorer", "main")["settings"]["mini_batch_size"] == 10
    assert service.list_deployments("nope") is None
    with pytest.raises(BatchStoreError, match="default"):
        service.delete_deployment("scorer", "main")
    routes = {(r.method, r.path) for r in service.routes()}
    assert ("POST", "/api/v1/batch/{endpoint}/jobs") in routes
    assert ("GET", "/api/v1/batch/endpoints/{e}/keys") in {(r.method, r.path) for r in service.admin_routes()}


async def test_submit_refusals_store_nothing(service):
    with pytest.raises(RequestError) as info:
        await service.submit("scorer", JobRequest("uri_folder", path="in", deployment_name="other"))
    assert (info.value.status, info.value.code) == (404, "DeploymentNotFound")
    with pytest.raises(RequestError) as info:
        await service.submit("scorer", JobRequest("uri_folder", path="in", settings={"instance_count": 0}))
    assert info.value.status == 422 and "settings.instance_count" in info.value.message
    assert service.jobs.list("scorer") == []


async def test_delete_endpoint_cancels_its_jobs(service):
    job = await service.submit("scorer", JobRequest("uri_folder", path="in", settings={"mini_batch_size": 2}))
    for _ in range(100):
        if service.jobs.counts(job.id).succeeded:
            break
        await asyncio.sleep(0.05)
    assert service.scheduler.running() == {job.id}
    assert await service.delete_endpoint("scorer")
    assert service.scheduler.running() == set() and service.jobs.get(job.id) is None
    assert service.endpoint_names() == set() and not await service.delete_endpoint("scorer")
    assert not (service.state_dir / "batch" / "jobs" / job.id).exists()


async def test_close_leaves_a_running_job_to_resume(tmp_path, service):
    job = await service.submit("scorer", JobRequest("inline", data=list(range(40)), settings={"mini_batch_size": 5}))
    for _ in range(200):  # running: a mini-batch scored
        if service.jobs.counts(job.id).succeeded:
            break
        await asyncio.sleep(0.05)
    counts = service.jobs.counts(job.id)
    assert counts.succeeded and counts.pending, counts  # closed in the middle of the job
    await service.close()
    again = BatchService(tmp_path / "state", [tmp_path / "data"])
    await again.start()
    try:
        for _ in range(200):
            current = again.jobs.get(job.id)
            if current.status in TERMINAL:
                break
            await asyncio.sleep(0.05)
        assert current.status == "Completed" and again.jobs.counts(job.id).succeeded_items == 40
        view = again.view(current, "https://x")
        assert view["output"]["ready"] and view["url"] == f"https://x/api/v1/batch/scorer/jobs/{job.id}"
    finally:
        await again.close()  # (the fixture's close() of the first service is a no-op now)


async def test_a_canceled_job_whose_output_cannot_be_written_is_written_at_the_next_start(tmp_path):
    root = write_batch_endpoint(tmp_path / "eps")
    state = tmp_path / "state"
    batch = BatchService(state, [], max_running_jobs=1)
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    await batch.scheduler.close()  # no job runs: the one submitted stays Queued until it is canceled
    job = await batch.submit("scorer", JobRequest("inline", data=[1, 2, 3]))
    jobs_dir = state / "batch" / "jobs"
    shutil.rmtree(jobs_dir / job.id)  # (its log, "accepted", went there)
    (jobs_dir / job.id).write_text("")  # the job's folder is taken by a file
    assert await batch.cancel_job(job.id)  # no exception: the cancel stands
    canceled = batch.jobs.get(job.id)
    assert canceled.status == "Canceled" and not canceled.finalized and canceled.finished_at is not None
    assert canceled.error.startswith("canceled by the user; the partial output could not be written (File exists)")
    view = batch.view(canceled, "https://x")
    assert view["status"] == "Canceled" and view["output"]["ready"] is False and view["finished_at"]
    assert view["error"]["message"] == canceled.error
    assert not await batch.cancel_job(job.id)  # it is over: a second cancel is refused (409)
    await batch.close()

    (jobs_dir / job.id).unlink()  # the operator frees the place; the next start writes the output
    again = BatchService(state, [])
    await again.start()
    try:
        done = again.jobs.get(job.id)
        assert (done.status, done.finalized, done.error) == ("Canceled", True, "canceled by the user")
        assert done.finished_at == canceled.finished_at  # when it ended, not when the output was written
        assert (jobs_dir / job.id / "predictions.csv").read_text() == ""
    finally:
        await again.close()
