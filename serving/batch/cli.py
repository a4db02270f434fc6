"""`scoregate batch …` and `scoregate job …`: the batch verbs of the CLI.

serving.cli calls register(verbs, common) while building its parser and, for these
verbs, dispatch(args, client) → the JSON-able result it prints. Errors are CliError
(exit 2 for bad input or a refusal — a finished job canceled —, 1 for a failed request or
an unknown endpoint or job), as for every other verb; `batch invoke --wait` adds
EXIT_STILL_RUNNING for a job it stopped waiting for.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from ..cli_types import within
from ..client import EXIT_STILL_RUNNING, AdminClient, CliError, api_path
from .client import BatchClient

VERBS = ("batch", "job")
_TERMINAL = ("Completed", "Failed", "Canceled")
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 100, 1000  # as the job list route (serving.batch.http)


# json.dumps would write nan and inf as NaN / Infinity, which is not JSON, and the
# gateway's refusal then named no flag: only finite numbers pass.
_seconds = within(float, -sys.float_info.max, sys.float_info.max, "a number of seconds", "a finite number")
_positive_seconds = within(float, math.ulp(0.0), sys.float_info.max, "a number of seconds", "more than 0")


def _list_limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_LIST_LIMIT}, got {text!r}")
    return int(text)


def register(subparsers, common_parent: argparse.ArgumentParser) -> None:
    """Add the `batch` and `job` verbs to the top-level subparsers."""
    common = [common_parent]
    batch = subparsers.add_parser("batch", help="batch endpoints: invoke (submit a job), list, show")
    actions = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=common, help="every batch endpoint").set_defaults(batch_command="batch list")
    show = actions.add_parser("show", parents=common, help="one batch endpoint: its deployments, scoring URI")
    show.add_argument("-n", "--name", required=True)
    show.set_defaults(batch_command="batch show")
    invoke = actions.add_parser("invoke", parents=common, help="submit a batch job")
    invoke.add_argument("-n", "--name", required=True, help="batch endpoint")
    invoke.add_argument("-i", "--input", required=True,
                        help="file or folder (under a data root of the gateway), or a JSON file of rows"
                             " with --input-type inline")
    invoke.add_argument("--input-type", choices=("uri_folder", "uri_file", "tabular", "inline"))
    invoke.add_argument("-d", "--deployment-name")
    invoke.add_argument("--mini-batch-size", type=int)
    invoke.add_argument("--instance-count", type=int)
    invoke.add_argument("--max-concurrency-per-instance", type=int)
    invoke.add_argument("--error-threshold", type=int)
    invoke.add_argument("--max-retries", type=int)
    invoke.add_argument("--timeout", type=_seconds, help="seconds per mini-batch")
    invoke.add_argument("--output-file-name")
    invoke.add_argument("--wait", action="store_true",
                        help="wait until the job has finished, then print it: exit 0 if it completed, exit 1 if"
                             f" it failed or was canceled, exit {EXIT_STILL_RUNNING} if it is still running after"
                             " --wait-timeout (it goes on)")
    invoke.add_argument("--wait-timeout", type=_positive_seconds, default=3600.0, metavar="SECONDS",
                        help="how long --wait waits, more than 0 (default 3600)")
    invoke.set_defaults(batch_command="batch invoke")

    job = subparsers.add_parser("job", help="batch jobs: list, show, cancel, download, logs")
    jobs = job.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = jobs.add_parser("list", parents=common, help="an endpoint's jobs, newest first")
    listing.add_argument("-n", "--name", required=True, help="batch endpoint")
    listing.add_argument("--limit", type=_list_limit, default=DEFAULT_LIST_LIMIT, metavar="N",
                         help=f"the newest N jobs, 1 to {MAX_LIST_LIMIT} (default {DEFAULT_LIST_LIMIT})")
    listing.set_defaults(batch_command="job list")
    helps = {"show": "one job: status, counts, errors", "cancel": "cancel a queued or running job",
             "download": "save the job's output file",
             "logs": "the job's log (what the runner did, failed items with their errors)"
                     " and its workers' logs (the scoring script's output)"}
    for action, text in helps.items():
        p = jobs.add_parser(action, parents=common, help=text)
        p.add_argument("-n", "--name", required=True, help="batch endpoint")
        p.add_argument("-j", "--job-id", required=True)
        if action == "download":
            p.add_argument("-p", "--download-path", default=".")
        p.set_defaults(batch_command=f"job {action}")


def dispatch(args: argparse.Namespace, client: AdminClient):
    """Run a `batch` / `job` verb; returns what the CLI prints."""
    batch = BatchClient(client)
    match getattr(args, "batch_command", None):
        case "batch list":
            return _listing(args, client.get("/batch/endpoints"))
        case "batch show":
            return client.get(api_path("batch", "endpoints", args.name))
        case "batch invoke":
            job = batch.submit(args.name, _job_body(args))
            return _wait(batch, args.name, job, args.wait_timeout) if args.wait else job
        case "job list":
            return _listing(args, _jobs(batch, args.name, args.limit))
        case "job show":
            return batch.show(args.name, args.job_id)
        case "job cancel":
            return batch.cancel(args.name, args.job_id)
        case "job download":
            return batch.download(args.name, args.job_id, Path(args.download_path))
        case "job logs":
            return client.get_text(api_path("batch", "endpoints", args.name, "jobs", args.job_id, "logs"))
    raise CliError(f"unknown batch command {getattr(args, 'batch_command', None)!r}", 2)


def _jobs(batch: BatchClient, endpoint: str, limit: int) -> list:
    """The newest `limit` jobs; a full page says, on stderr, that there may be more."""
    jobs = batch.list_jobs(endpoint, limit)
    if len(jobs) >= limit:
        sys.stderr.write(f"note: the newest {limit} jobs are shown; there may be more"
                         f" (--limit N, up to {MAX_LIST_LIMIT})\n")
    return jobs


def _listing(args: argparse.Namespace, rows: list):
    """An empty list as a table is no line at all (not `[]`); JSON stays a list, for scripts."""
    return "" if not rows and getattr(args, "output", "json") == "table" else rows


def _job_body(args: argparse.Namespace) -> dict:
    kind, given = args.input_type, args.input
    if kind == "inline":
        try:
            data = json.loads(Path(given).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read rows from {given}: {exc}", 2) from None
        rows = data.get("data") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise CliError(f"{given}: expected a JSON list of rows, or an object with a \"data\" list", 2)
        job_input: dict = {"type": "inline", "data": rows}
    else:
        local = Path(given)
        if "://" not in given and local.exists():  # a local path: send it absolute
            kind = kind or ("uri_folder" if local.is_dir() else "uri_file")
            given = str(local.resolve())
        job_input = {"type": kind or "uri_folder", "path": given}
    settings: dict = {}
    for name in ("mini_batch_size", "instance_count", "max_concurrency_per_instance", "error_threshold",
                 "output_file_name"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    retry = {k: v for k, v in (("max_retries", args.max_retries), ("timeout", args.timeout)) if v is not None}
    if retry:
        settings["retry_settings"] = retry
    body: dict = {"input": job_input}
    if args.deployment_name:
        body["deployment_name"] = args.deployment_name
    if settings:
        body["settings"] = settings
    return body


def _wait(batch: BatchClient, endpoint: str, job: dict, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while job["status"] not in _TERMINAL:
        if time.monotonic() > deadline:  # the job is still printed: the caller needs its id
            raise CliError(f"job {job['id']} is still {job['status']} after {timeout_s:g} s (it goes on running)",
                           EXIT_STILL_RUNNING, job)
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
        job = batch.show(endpoint, job["id"])
    if job["status"] != "Completed":  # a script's `invoke --wait && next step` must not go on
        reason = (job.get("error") or {}).get("message") or job["status"].lower()
        raise CliError(f"job {job['id']} {job['status']}: {reason}", 1, job)
    return job
