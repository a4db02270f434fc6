"""`-o table`: what a person reads from the CLI (the JSON output stays as the API gives it)."""

from __future__ import annotations

from serving.cli import _print


def test_times_read_as_utc_and_nested_values_stay_out(capsys):
    rows = [{"name": "j1", "status": "Completed", "finished_at": 1795947203.18, "created_at": 1795947200.0,
             "duration_s": 0.075, "output": {"ready": True}},
            {"name": "j2", "status": "Running", "finished_at": None, "created_at": 1795947201.0,
             "duration_s": None, "output": {"ready": False}}]
    _print(rows, "table")
    header, rule, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["name", "status", "finished_at", "duration_s"]  # created_at: noisy, output: nested
    assert set(rule) == {"-", " "}
    assert first.split() == ["j1", "Completed", "2026-11-29", "10:13:23Z", "0.075"]
    assert second.split() == ["j2", "Running"]  # no time yet: an empty cell, not "None"


def test_json_keeps_unix_seconds(capsys):
    _print({"finished_at": 1795947203.18}, "json")
    assert '"finished_at": 1795947203.18' in capsys.readouterr().out


def test_traffic_and_mirrored_traffic_are_shown_as_name_percent(capsys):
    rows = [{"name": "iris", "traffic": {"blue": 100, "green": 0}, "mirror_traffic": {"green": 20}},
            {"name": "other", "traffic": {"main": 100}, "mirror_traffic": {}}]
    _print(rows, "table")
    header, _, iris, other = capsys.readouterr().out.splitlines()
    assert header.split() == ["name", "traffic", "mirror_traffic"]
    assert iris.split() == ["iris", "blue=100,green=0", "green=20"]
    assert other.split() == ["other", "main=100"]
    _print(rows[1:], "table")  # nobody mirrors: no empty column
    assert capsys.readouterr().out.splitlines()[0].split() == ["name", "traffic"]


def test_a_result_of_lists_is_one_table_each_with_every_rows_columns(capsys):
    # `apply -o table`: was blank lines (no scalar column in the result itself).
    _print({"applied": [{"kind": "endpoint", "name": "ep"},
                        {"kind": "deployment", "name": "main", "endpoint_name": "ep"}],
            "deployments": [{"name": "main", "provisioning_state": "Failed", "reason": "init() raised"}]}, "table")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "applied:" and lines[1].split() == ["kind", "name", "endpoint_name"]
    assert lines[4].split() == ["deployment", "main", "ep"]
    assert lines[5] == "" and lines[6] == "deployments:"
    assert lines[7].split() == ["name", "provisioning_state", "reason"]
    assert lines[9].split() == ["main", "Failed", "init()", "raised"]


def test_an_empty_list_as_a_table_prints_nothing(capsys):
    """`endpoint list -o table` with no endpoint printed `[]`, the JSON spelling."""
    _print([], "table")
    assert capsys.readouterr().out == ""
    _print([], "json")
    assert capsys.readouterr().out.strip() == "[]"
