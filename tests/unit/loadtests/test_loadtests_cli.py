"""Argument parsing and error classification (no traffic)."""

import asyncio
import errno

import aiohttp
import pytest

from loadtests.cli import build_parser, run_cli, spec_from_args
from loadtests.generators.http import classify_error
from loadtests.runner import RunSpec
from loadtests.generators.http import Target


def parse(*argv):
    return build_parser().parse_args(["run", *argv])


def test_open_loop_arguments_become_a_spec(tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(b'{"data": [1, 2]}')
    args = parse("--url", "https://127.0.0.1:8443/api/v1/endpoint/e/score", "--method", "post",
                 "-H", "Authorization: Bearer k:with:colons", "--header", "X-A:1",
                 "--body-file", str(body), "--cafile", "ca.pem", "--rate", "250",
                 "--duration", "3", "--timeout", "2", "--processes", "2", "--label", "gw")
    spec = spec_from_args(args)
    assert spec.mode == "open" and spec.profile == "constant:250"
    assert spec.target.method == "POST"
    assert spec.target.headers == (("Authorization", "Bearer k:with:colons"), ("X-A", "1"))
    assert spec.target.body == b'{"data": [1, 2]}'
    assert spec.target.cafile == "ca.pem" and spec.target.timeout == 2
    assert spec.processes == 2 and spec.label == "gw" and spec.total_connections == 256


def test_closed_loop_and_profile():
    spec = spec_from_args(parse("--url", "http://127.0.0.1:1/", "--closed-loop",
                                "--connections", "4", "--duration", "1"))
    assert spec.mode == "closed" and spec.total_connections == 4 and spec.profile is None
    assert spec.label == "127.0.0.1:1"
    spec = spec_from_args(parse("--url", "http://x/", "--profile", "step:100,200,400@2s",
                                "--duration", "6"))
    assert spec.profile == "step:100,200,400@2s"
    assert spec.config()["profile"] == "step:100,200,400@2s"


@pytest.mark.parametrize("argv", [
    ["--url", "http://x/", "--duration", "1"],                               # no load shape
    ["--url", "http://x/", "--rate", "1", "--closed-loop", "--duration", "1"],
    ["--url", "http://x/", "--rate", "-1", "--duration", "1"],
    ["--url", "http://x/", "--rate", "10", "--duration", "0"],
    ["--url", "http://x/", "--profile", "zigzag:1@1s", "--duration", "1"],
    ["--url", "http://x/", "--rate", "10", "--duration", "1", "--header", "no-colon"],
    ["--rate", "10", "--duration", "1"],                                      # no url
    ["--url", "http://x/", "--rate", "1", "--duration", "1", "--warmup", "-3"],
    ["--url", "http://x/", "--rate", "1", "--duration", "1", "--warmup", "5000"],
    ["--url", "http://x/", "--rate", "1", "--duration", "1", "--warmup", "nan"],
    ["--url", "http://x/", "--rate", "1", "--duration", "100000"],
    ["--url", "http://x/", "--rate", "1", "--duration", "1", "--processes", "300"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_compare_needs_output():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "a", "b"])
    args = build_parser().parse_args(["compare", "a", "b", "--output", "o"])
    assert [str(d) for d in args.dirs] == ["a", "b"]


def test_compare_of_missing_dirs_is_a_clear_error(tmp_path, capsys):
    assert run_cli(["compare", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 1
    assert "cannot read results" in capsys.readouterr().err


def test_runspec_validates():
    t = Target("http://127.0.0.1:1/")
    with pytest.raises(ValueError):
        RunSpec(t, duration=1, mode="open", profile="bad")
    with pytest.raises(ValueError):
        RunSpec(t, duration=1, mode="sideways")
    with pytest.raises(ValueError):
        RunSpec(t, duration=0, mode="closed")


class _Key:
    def __init__(self):
        self.ssl = None
        self.host, self.port = "127.0.0.1", 1


@pytest.mark.parametrize("exc,kind", [
    (asyncio.TimeoutError(), "timeout"),
    (aiohttp.ServerTimeoutError("read"), "timeout"),
    (aiohttp.ClientConnectorError(_Key(), OSError(errno.ECONNREFUSED, "refused")), "connect"),
    (ConnectionRefusedError(), "connect"),
    (aiohttp.ServerDisconnectedError(), "reset"),
    (aiohttp.ClientPayloadError("truncated"), "reset"),
    (ConnectionResetError(), "reset"),
    (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), "reset"),
    (ValueError("bad"), "other"),
])
def test_classify_error(exc, kind):
    assert classify_error(exc) == kind


@pytest.mark.parametrize("profile,duration,says", [
    # the 100 req/s step would start at 0.5 s and be held 0.1 s instead of 0.5 s
    ("step:50,100@0.5s", "0.6", "shorter than the profile step:50,100@0.5s (1 s)"),
    ("ramp:10,100@2s", "1", "shorter than the profile ramp:10,100@2s (2 s)"),
    ("burst:10,100@1s+0.5s", "1", "shorter than the profile burst:10,100@1s+0.5s (1.5 s)"),
    ("step:0,10@1s", "1", "shorter than the profile"),
    ("step:0,0@0.5s", "1", "sends no request in 1 s"),
    ("constant:0", "1", "sends no request in 1 s"),
])
def test_a_profile_the_duration_cannot_hold_is_refused(profile, duration, says, tmp_path, capsys):
    code = run_cli(["run", "--url", "http://127.0.0.1:1/", "--profile", profile,
                    "--duration", duration, "-q", "--no-plots", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and says in err, err
    assert not (tmp_path / "results.json").exists()


def test_a_profile_that_fits_is_accepted():
    for profile, duration in (("step:50,100,200@2s", "6"), ("ramp:10,100@2s", "2"),
                              ("burst:10,100@1s+0.5s/2s", "1.5"), ("step:1,2,3@0.1s", "0.3")):
        spec = spec_from_args(parse("--url", "http://x/", "--profile", profile,
                                    "--duration", duration))
        assert spec.profile == profile


def test_a_run_where_no_request_succeeded_exits_1(tmp_path, capsys):
    code = run_cli(["run", "--url", "http://127.0.0.1:1/", "--rate", "5", "--duration", "0.4",
                    "-q", "--no-plots", "--output", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "loadtests: error: no request succeeded (2 of 2 failed)" in captured.err
    assert "| latency (ms) |" in captured.out and (tmp_path / "results.json").exists()


@pytest.mark.parametrize("value", ["-0.1", "1.5", "x"])
def test_max_failure_rate_is_a_share(value, capsys):
    assert parse("--url", "http://x/", "--rate", "1", "--duration", "1",
                 "--max-failure-rate", "0.25").max_failure_rate == 0.25
    with pytest.raises(SystemExit) as exc:
        parse("--url", "http://x/", "--rate", "1", "--duration", "1", "--max-failure-rate", value)
    assert exc.value.code == 2 and "--max-failure-rate" in capsys.readouterr().err


def test_failure_verdict():
    from loadtests.cli import failure_verdict
    from loadtests.results import RunResult

    def result(ok, failed):
        return RunResult("r", {"mode": "open"}, completed=ok + failed, ok=ok, failed=failed)

    assert failure_verdict(result(10, 0)) is None
    assert failure_verdict(result(1, 9)) is None  # without --max-failure-rate: one ok is enough
    assert failure_verdict(result(0, 3)) == "no request succeeded (3 of 3 failed)"
    assert failure_verdict(result(0, 0)) == "no request succeeded (0 of 0 failed)"
    assert failure_verdict(result(9, 1), 0.1) is None  # at the limit: not more
    assert failure_verdict(result(8, 2), 0.1) == (
        "2 of 10 requests failed (20.0 %), more than --max-failure-rate 0.1")
    assert failure_verdict(result(10, 0), 0) is None
    assert failure_verdict(result(99, 1), 0) is not None


def test_compare_tells_runs_with_the_same_label_apart(tmp_path, capsys):
    from loadtests.recorder import Recorder
    from loadtests.results import RunResult

    config = {"mode": "open", "profile": "constant:10", "duration_s": 1.0}
    for name, label in (("r1", "gateway:iris"), ("r4", "gateway:iris"), ("r2", "gateway:iris"),
                        ("d", "direct")):
        rec = Recorder(0.0)
        rec.on_scheduled(0.0)
        rec.on_start(0.0, 0.0)
        rec.on_done(0.0, 0.002, 200, None)
        RunResult.from_recorder(rec, label, config).write(tmp_path / name)
    code = run_cli(["compare", *(str(tmp_path / n) for n in ("r1", "r4", "r2", "d")),
                    "--output", str(tmp_path / "cmp"), "--no-plots"])
    out = capsys.readouterr().out
    assert code == 0
    for row in ("| gateway:iris (r1) | open |", "| gateway:iris (r4) | open |",
                "| gateway:iris (r2) | open |", "| direct | open |"):
        assert row in out
    assert "over `gateway:iris (r1)`" in out


def test_distinct_labels():
    from loadtests.cli import distinct_labels

    assert distinct_labels(["a", "b"], ["x", "y"]) == ["a", "b"]
    assert distinct_labels(["a", "a", "b"], ["x", "y", "z"]) == ["a (x)", "a (y)", "b"]
    # the same directory name twice (a/run, b/run): numbered
    assert distinct_labels(["a", "a"], ["run", "run"]) == ["a (run) #1", "a (run) #2"]
