"""`scoregate serve` refuses options it cannot honour with one clear line and exit code 2,
before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving import embedded
from serving.cli import main
from tests.support.gateway import REPO, _env


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


@pytest.fixture
def served(monkeypatch):
    """The options `serve` would run the gateway with."""
    seen = []
    monkeypatch.setattr(embedded, "run_serve", lambda options: seen.append(options) or 0)
    return seen


def settings_file(tmp_path, text: str) -> str:
    path = tmp_path / "serve.yml"
    path.write_text(text)
    return str(path)


def test_the_settings_file_takes_the_flags_names_and_resolves_its_paths(tmp_path, served):
    """`rollout_timeout`, `data_root`, `drain_timeout`... (the flags' names, as -h says) were
    refused as unknown settings; data_root and access_log were not resolved against the file."""
    config = settings_file(tmp_path, "rollout_timeout: 90s\ntls_reload_interval: 0\ndrain_timeout: 5\n"
                                     "data_root: [inputs]\naccess_log: logs/access.log\nlog_level: warning\n"
                                     "replica_mtls: false\nport: 9443\n")
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--config", config]) == 0
    options = served[0]
    assert options.rollout_timeout_s == 90 and options.tls_reload_interval_s == 0 and options.drain_timeout_s == 5
    assert options.data_roots == [str(tmp_path / "inputs")]
    assert options.access_log == str(tmp_path / "logs" / "access.log")
    assert options.replica_mtls is False and options.port == 9443


def test_flags_win_over_the_settings_file(tmp_path, served):
    config = settings_file(tmp_path, "drain_timeout: 5\nrollout_timeout: 90s\nport: 9443\n")
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--config", config,
                 "--drain-timeout", "7", "--rollout-timeout", "2m", "--port", "9444"]) == 0
    assert (served[0].drain_timeout_s, served[0].rollout_timeout_s, served[0].port) == (7, 120, 9444)


def test_batch_job_retention_comes_from_the_flag_or_the_settings_file(tmp_path, served):
    """Retention (docs/batch.md) was a BatchService parameter only: `serve` always kept 30 days."""
    assert main(["serve", "--state-dir", str(tmp_path / "state")]) == 0
    assert served[-1].job_retention_days == 30
    config = settings_file(tmp_path, "job_retention_days: 7\n")
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--config", config]) == 0
    assert served[-1].job_retention_days == 7
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--config", config,
                 "--job-retention-days", "0"]) == 0
    assert served[-1].job_retention_days == 0


@pytest.mark.parametrize("text, message", [
    ("replica_mtls: 'no'\n", "replica_mtls: must be true or false, not 'no'"),
    ("port: abc\n", "port: must be a port number from 0 to 65535, not 'abc'"),
    ("admin_port: 99999\n", "admin_port: must be a port number from 0 to 65535, not 99999"),
    ("tls_reload_interval_s: x\n", "tls_reload_interval_s: must be a number of at least 0, not 'x'"),
    ("tls:\n  reload_interval: x\n", "tls.reload_interval: must be a number of at least 0, not 'x'"),
    ("rollout_timeout_s: 5x\n", "rollout_timeout_s: not a duration: '5x'"),
    ("rollout_timeout: 0\n", "rollout_timeout: must be more than 0, not 0"),
    ("data_root: {a: 1}\n", "data_root: must be a text or a list of texts"),
    ("access_log_sample_rate: 2\n", "access_log_sample_rate: must be a number from 0 to 1, not 2"),
    ("log_level: loud\n", "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'LOUD'"),
    ("drain_timeout: -1\n", "drain_timeout: must be a number of at least 0, not -1"),
    ("job_retention_days: -2\n", "job_retention_days: must be a number of at least 0, not -2"),
    ("tls:\n  sni:\n    - {cert: a.pem, key: a-key.pem, colour: red}\n",
     "tls.sni[0].colour: unknown setting (expected name, cert, key"),
])
def test_a_setting_of_the_wrong_type_is_refused_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    """A string where a number belongs ended in a TypeError traceback (at start, or at the
    first rollout); `replica_mtls: 'no'` turned mTLS on; `data_root: /x` became four roots."""
    config = settings_file(tmp_path, text)
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--config", config]) == 2
    assert f"error: {config}: {message}" in capsys.readouterr().err


def test_a_certificate_without_its_key_in_the_settings_file_names_the_file_and_the_key(tmp_path, capsys):
    """It named the flags (--tls-cert and --tls-key go together), which the user never gave."""
    config = settings_file(tmp_path, "tls:\n  cert: a.pem\n")
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--config", config]) == 2
    assert f"error: {config}: tls.key: missing (tls.cert and tls.key go together)" in capsys.readouterr().err
    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--tls-key", "k.pem"]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_root_that_is_not_a_folder_stops_the_start(tmp_path, kind):
    """A mistyped --data-root was taken without a word; every job from it was then refused
    as 'outside every data root'."""
    root = tmp_path / "inputs"
    if kind == "file":
        root.write_text("")
    done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(tmp_path / "state"),
                           "--port", "0", "--admin-port", "0", "--data-root", str(root)],
                          capture_output=True, text=True, cwd=str(REPO), env=_env(), timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"--data-root {root}: {'no such folder' if kind == 'missing' else 'not a folder'}" in done.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--rollout-timeout", "0", "must be more than 0: '0'"),
    ("--drain-timeout", "-3", "not a number of seconds: '-3' (0 or more)"),
    ("--tls-reload-interval", "-1", "not a number of seconds: '-1' (0 or more)"),
    ("--access-log-sample-rate", "5", "not a share: '5' (from 0 to 1)"),
    ("--job-retention-days", "-1", "not a number of days: '-1' (0 (keep every job) to 36500)"),
])
def test_a_flag_out_of_its_range_is_refused_as_in_the_settings_file(capsys, flag, value, message):
    """--rollout-timeout 0 failed every rollout at once ("budget of 0s exhausted"), and
    --drain-timeout -3 or --access-log-sample-rate 5 were taken as given."""
    assert f"argument {flag}: {message}" in refused(capsys, flag, value)


def test_a_state_dir_that_is_a_file_is_named(tmp_path):
    """It ended in 'cannot start: [Errno 17] File exists' (exit 1), which does not say what to fix."""
    (tmp_path / "state").write_text("")
    done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(tmp_path / "state"),
                           "--port", "0", "--admin-port", "0"],
                          capture_output=True, text=True, cwd=str(REPO), env=_env(), timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"--state-dir {tmp_path / 'state'}: not a folder" in done.stderr
