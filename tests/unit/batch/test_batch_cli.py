"""`scoregate batch …` / `job …` argument parsing and the job body the CLI sends."""

from __future__ import annotations

import argparse
import json

import pytest

from serving.batch.cli import _job_body, register
from serving.client import CliError


def parse(*argv: str) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="scoregate")
    register(parser.add_subparsers(dest="verb", required=True), common)
    return parser.parse_args(list(argv))


def test_verbs_and_their_arguments(tmp_path):
    args = parse("job", "download", "--name", "ep", "--job-id", "j1", "--download-path", str(tmp_path))
    assert (args.batch_command, args.name, args.job_id) == ("job download", "ep", "j1")
    assert args.download_path == str(tmp_path)
    assert parse("job", "list", "-n", "ep").batch_command == "job list"
    assert (parse("job", "logs", "-n", "ep", "-j", "j1").batch_command, args.job_id) == ("job logs", "j1")
    assert parse("job", "cancel", "-n", "ep", "-j", "x", "--state-dir", "s").state_dir == "s"
    assert parse("batch", "list").batch_command == "batch list"
    with pytest.raises(SystemExit):
        parse("job", "show", "--name", "ep")  # --job-id is required


def test_a_local_folder_is_sent_absolute_with_its_kind(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "one.csv").write_text("a\n1\n")
    monkeypatch.chdir(tmp_path)
    body = _job_body(parse("batch", "invoke", "--name", "ep", "--input", "imgs", "--mini-batch-size", "5",
                           "--max-retries", "0", "--timeout", "2.5", "-d", "blue"))
    assert body == {"input": {"type": "uri_folder", "path": str(tmp_path / "imgs")}, "deployment_name": "blue",
                    "settings": {"mini_batch_size": 5, "retry_settings": {"max_retries": 0, "timeout": 2.5}}}
    assert _job_body(parse("batch", "invoke", "-n", "ep", "-i", "one.csv"))["input"]["type"] == "uri_file"
    assert _job_body(parse("batch", "invoke", "-n", "ep", "-i", "one.csv", "--input-type", "tabular"))["input"] == \
        {"type": "tabular", "path": str(tmp_path / "one.csv")}


def test_a_path_not_here_is_left_to_the_gateway_data_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _job_body(parse("batch", "invoke", "-n", "ep", "-i", "images/day1"))["input"] == \
        {"type": "uri_folder", "path": "images/day1"}
    assert _job_body(parse("batch", "invoke", "-n", "ep", "-i", "https://x/y"))["input"]["path"] == "https://x/y"


def test_inline_rows_from_a_json_file(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps({"data": [[1, 2], [3, 4]]}))
    rows = str(tmp_path / "rows.json")
    body = _job_body(parse("batch", "invoke", "-n", "ep", "-i", rows, "--input-type", "inline"))
    assert body == {"input": {"type": "inline", "data": [[1, 2], [3, 4]]}}
    with pytest.raises(CliError) as info:
        _job_body(parse("batch", "invoke", "-n", "ep", "-i", str(tmp_path / "none.json"), "--input-type", "inline"))
    assert info.value.exit_code == 2


def test_a_json_file_without_rows_is_refused_naming_the_file(tmp_path):
    (tmp_path / "online.json").write_text(json.dumps({"input_data": {"data": [[1, 2]]}}))  # an online request
    path = str(tmp_path / "online.json")
    with pytest.raises(CliError) as info:
        _job_body(parse("batch", "invoke", "-n", "ep", "-i", path, "--input-type", "inline"))
    assert info.value.exit_code == 2
    assert str(info.value) == f'{path}: expected a JSON list of rows, or an object with a "data" list'


def refused(capsys, *argv: str) -> str:
    """argv is refused on the command line: exit 2, and the message (stderr) it gave."""
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_job_list_takes_a_limit_from_1_to_1000(capsys):
    assert parse("job", "list", "-n", "ep").limit == 100
    assert parse("job", "list", "-n", "ep", "--limit", "1000").limit == 1000
    for value in ("0", "-1", "1001", "abc", "2.5"):
        error = refused(capsys, "job", "list", "-n", "ep", f"--limit={value}")
        assert "argument --limit: " in error and "1 to 1000" in error, error


@pytest.mark.parametrize("value", ["0", "-5", "0.0"])
def test_a_wait_timeout_that_is_not_positive_is_refused(capsys, value):
    error = refused(capsys, "batch", "invoke", "-n", "ep", "-i", "x", "--wait", f"--wait-timeout={value}")
    assert "argument --wait-timeout: " in error and "more than 0" in error, error
    assert parse("batch", "invoke", "-n", "ep", "-i", "x", "--wait-timeout", "0.5").wait_timeout == 0.5


def test_invoke_help_gives_the_exit_codes_of_wait(capsys):
    with pytest.raises(SystemExit):
        parse("batch", "invoke", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "exit 4" in text and "exit 1" in text, text


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity"])
def test_non_finite_seconds_are_refused_naming_the_flag(capsys, value):
    """--timeout nan made the CLI send `NaN`, which is not JSON: the gateway answered "the
    body is not valid JSON", naming nothing the user typed."""
    for flag in ("--timeout", "--wait-timeout"):
        error = refused(capsys, "batch", "invoke", "-n", "ep", "-i", "x", f"{flag}={value}")
        assert f"argument {flag}: " in error and value in error, error


def test_batch_help_names_every_action(capsys):
    """`batch --help` listed only invoke, although list and show exist (and are documented)."""
    with pytest.raises(SystemExit):
        parse("batch", "--help")
    actions = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert actions == ["list", "show", "invoke"]
