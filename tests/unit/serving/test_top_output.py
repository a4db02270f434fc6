"""`scoregate top -o json`: the status snapshot as JSON lines (one document per refresh),
for scripts; it was accepted and printed the table. The table stays the default."""

from __future__ import annotations

import json

import pytest

from serving import cli
from serving.client import AdminClient

SNAPSHOT = {"generated_at": 1.0, "gateway": {"scoring_url": "https://127.0.0.1:8443"},
            "deployments": [{"key": "shop/blue", "provisioning_state": "Succeeded", "traffic_percent": 100,
                             "replicas_ready": 1, "replicas_desired": 1, "live": {"requests_per_s": 2.5}}]}


class FakeClient:
    def __init__(self) -> None:
        self.calls = 0

    def get(self, path: str) -> dict:
        assert path == "/status"
        self.calls += 1
        return {**SNAPSHOT, "generated_at": float(self.calls)}


@pytest.fixture
def client(monkeypatch):
    fake = FakeClient()
    monkeypatch.setattr(AdminClient, "from_state_dir", classmethod(lambda cls, root: fake))
    return fake


def test_top_o_json_prints_one_snapshot_per_refresh_as_json_lines(capsys, client):
    assert cli.main(["top", "--iterations", "2", "--interval", "0", "-o", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["generated_at"] for line in lines] == [1.0, 2.0]
    assert json.loads(lines[0])["deployments"][0]["key"] == "shop/blue"


def test_top_without_o_prints_the_table(capsys, client):
    assert cli.main(["top", "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scoregate top") and "shop/blue" in out


def test_top_help_says_what_o_json_prints(capsys):
    with pytest.raises(SystemExit):
        cli.main(["top", "-h"])
    assert "JSON lines" in capsys.readouterr().out


def test_the_other_verbs_keep_their_output_flag():
    """top's own -o must leave the shared one alone (serve's paths stay paths)."""
    args = cli.build_parser().parse_args(["serve", "examples/", "-o", "table"])
    assert args.paths == ["examples/"] and args.output == "table"
