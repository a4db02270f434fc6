"""Worker errors as key holders read them: no server path of a data root (runner.redact_paths)."""

from __future__ import annotations

from serving.batch.runner import redact_paths


def test_paths_under_a_root_become_relative_to_it(tmp_path):
    real = tmp_path / "real"
    (real / "in").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    roots = (str(link),)  # the gateway was given the link; run() gets resolved paths
    error = f"FileNotFoundError: [Errno 2] No such file or directory: '{real}/in/a.json'"
    assert redact_paths(error, roots) == "FileNotFoundError: [Errno 2] No such file or directory: 'in/a.json'"
    assert redact_paths(f"cannot read {link}/in/b.json or {link}", roots) == "cannot read in/b.json or ."
    assert redact_paths(f"IsADirectoryError: '{real}'", roots) == "IsADirectoryError: '.'"


def test_other_paths_and_look_alikes_are_left(tmp_path):
    roots = (str(tmp_path / "data"),)
    text = f"{tmp_path}/data2/x, {tmp_path}/database, /etc/passwd, {tmp_path}/data.csv"
    assert redact_paths(text, roots) == text
    assert redact_paths("no path here", ()) == "no path here"


def test_the_nearest_of_nested_roots_wins(tmp_path):
    roots = (str(tmp_path / "a"), str(tmp_path / "a" / "b"))
    assert redact_paths(f"{tmp_path}/a/b/c.txt and {tmp_path}/a/x.txt", roots) == "c.txt and x.txt"


async def test_errors_an_older_version_stored_whole_are_shown_without_server_paths(tmp_path):
    """Jobs whose errors were stored before redaction (batch.db, job.log) showed the
    server's folders to key holders in `job show` and the logs route."""
    from serving.batch import joblog
    from serving.batch.jobs import FAILED, MiniBatch
    from serving.batch.manifests import parse_batch_all
    from serving.batch.service import BatchService
    from serving.manifests import read_documents
    from tests.unit.batch.batch_support import write_batch_endpoint

    root = write_batch_endpoint(tmp_path / "eps")
    data, state = tmp_path / "data", tmp_path / "state"
    (data / "in").mkdir(parents=True)
    batch = BatchService(state, [data])  # not started: the job below is as an old gateway left it
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    deployment = batch.store.get_deployment("scorer", "main").to_dict()
    code = deployment["code"]
    spec = {"deployment": deployment, "input": {"type": "uri_folder", "path": "in", "kind": "files"}}
    job = batch.jobs.create("batchjob-old", "scorer", "main", spec, ["a.json"], [f"{data}/in/a.json"], 1)
    failure = f"FileNotFoundError: [Errno 2] No such file or directory: '{data}/in/a.json' ({code}/score.py)"
    batch.jobs.record_failure(job.id, MiniBatch(0, 0, 1, 0), failure, True)
    batch.jobs.finish(job.id, FAILED, f"init() failed: OSError: '{code}/labels.txt'; the output could not be"
                      f" written ([Errno 28] No space left on device: '{state}/batch/jobs/{job.id}/predictions.csv')")
    joblog.append(joblog.job_log_path(state / "batch" / "jobs", job.id), f"mini-batch 0 failed: {failure}")
    ended = batch.jobs.get(job.id)
    view, log = batch.view(ended, "https://gw:1"), batch.job_logs(ended, workers=False)
    assert str(tmp_path) not in str(view["error"]) and str(tmp_path) not in log
    assert view["error"]["failed_mini_batches"][0]["error"] == \
        "FileNotFoundError: [Errno 2] No such file or directory: 'in/a.json' (score.py)"
    assert view["error"]["message"].startswith("init() failed: OSError: 'labels.txt'; the output could not be"
                                               f" written ([Errno 28] No space left on device: 'batch/jobs/{job.id}/")
    assert "'in/a.json' (score.py)" in log
    assert view["input"] == {"type": "uri_folder", "path": "in"}  # what the caller gave stays as given
    await batch.close()
