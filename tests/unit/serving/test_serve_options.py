"""`scoregate serve` refuses options it cannot honour with one clear line and exit code 2,
before anything starts."""

from __future__ import annotations

import pytest

from serving import embedded
from serving.cli import main


@pytest.fixture(autouse=True)
def never_serve(monkeypatch):
    def run_serve(options):
        raise AssertionError(f"the gateway was started with {options}")

    monkeypatch.setattr(embedded, "run_serve", run_serve)


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--state-dir", "/nonexistent/never-created", *argv])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--port", "--admin-port", "--http-redirect-port"])
@pytest.mark.parametrize("value", ["99999", "-1", "https"])
def test_a_port_out_of_range_is_refused_not_wrapped_around(capsys, flag, value):
    """--port 99999 used to serve on 34463 (99999 - 65536) without a word."""
    err = refused(capsys, flag, value)
    assert f"argument {flag}: not a port number: '{value}' (0 to 65535)" in err


def test_an_unknown_log_level_is_refused_with_the_levels_named(capsys):
    """--log-level bogus ended in a ValueError traceback from logging, exit code 1."""
    err = refused(capsys, "--log-level", "bogus")
    assert "argument --log-level: not a log level: 'bogus' (DEBUG, INFO, WARNING, ERROR or CRITICAL)" in err
    assert "Traceback" not in err
