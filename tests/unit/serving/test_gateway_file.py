"""gateway.json names the redirect listener too, and files written before it did still read."""

from __future__ import annotations

import orjson
import pytest

from serving.statedir import GatewayInfo, StateDir

OLD = {"admin_url": "http://127.0.0.1:8081", "admin_token": "t", "scoring_url": "https://127.0.0.1:8443",
       "ca_cert": "/x/ca.pem", "pid": 42}


def test_the_redirect_url_is_written_and_read(tmp_path):
    state = StateDir(tmp_path)
    state.write_gateway(GatewayInfo(**OLD, redirect_url="http://127.0.0.1:8080"))
    assert orjson.loads(state.gateway_file.read_bytes())["redirect_url"] == "http://127.0.0.1:8080"
    assert state.read_gateway().redirect_url == "http://127.0.0.1:8080"


def test_a_file_of_an_earlier_release_still_reads(tmp_path):
    state = StateDir(tmp_path)
    state.gateway_file.write_bytes(orjson.dumps(OLD))
    assert state.read_gateway() == GatewayInfo(**OLD, redirect_url=None)


def test_a_file_without_a_required_field_is_still_refused(tmp_path):
    state = StateDir(tmp_path)
    state.gateway_file.write_bytes(orjson.dumps({k: v for k, v in OLD.items() if k != "pid"}))
    with pytest.raises(KeyError):
        state.read_gateway()
