"""`scoregate serve --config FILE`: the serve flags as a YAML file.

Keys are the flag names with `_` (`tls_cert`, `admin_port`, `rollout_timeout: 20m`, `data_root`
as a list, ...), each checked for its type, plus a `tls:` block
for IT operations who keep certificate settings together:

    port: 8443
    tls:
      cert: /etc/scoregate/tls.crt
      key: /etc/scoregate/tls.key
      key_password_file: /etc/scoregate/key-pass
      client_ca: /etc/scoregate/clients-ca.pem
      reload_interval: 10
      sni:
        - {name: api, cert: api.crt, key: api.key, server_names: ["api.example.com"]}
Relative paths are resolved against the file's folder. Flags given on the command line
win over the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .client import CliError

_TLS_KEYS = {"cert": "tls_cert", "key": "tls_key", "key_password_file": "tls_key_password_file",
             "key_password_env": "tls_key_password_env", "client_ca": "tls_client_ca",
             "reload_interval": "tls_reload_interval_s"}
_PATHS = {"tls_cert", "tls_key", "tls_key_password_file", "tls_client_ca"}
# The flags' names with `_` (and the names of their values, as earlier files used them).
_NAMES = {"rollout_timeout": "rollout_timeout_s", "tls_reload_interval": "tls_reload_interval_s",
          "data_root": "data_roots", "tls_sni_cert": "tls_sni_certs", "drain_timeout": "drain_timeout_s"}


def _text(value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a text, not {value!r}")
    return value


def _number(low: float, high: float | None = None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low \
                or (high is not None and value > high):
            bounds = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
            raise ValueError(f"must be a number {bounds}, not {value!r}")
        return float(value)
    return check


def _port(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"must be a port number from 0 to 65535, not {value!r}")
    return value


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _texts(value):
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ValueError(f"must be a text or a list of texts, not {value!r}")
    return [_text(v) for v in values]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_duration(text: str) -> float:
    """"20m", "90s", "1h", "1h30m" or plain seconds → seconds; ValueError otherwise."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or parts is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 20m, 90s, 1h30m)")
    hours, minutes, seconds = parts.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _duration(value):
    if isinstance(value, str):
        value = parse_duration(value)
    if _number(0)(value) <= 0:
        raise ValueError(f"must be more than 0, not {value!r}")
    return float(value)


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value
    return check


_CHECKS = {"host": _text, "admin_host": _text, "port": _port, "admin_port": _port, "http_redirect_port": _port,
           "tls_cert": _text, "tls_key": _text, "tls_key_password_file": _text, "tls_key_password_env": _text,
           "tls_client_ca": _text, "tls_reload_interval_s": _number(0), "tls_sni_certs": _texts,
           "replica_mtls": _flag, "domain": _text, "rollout_timeout_s": _duration, "data_roots": _texts,
           "job_retention_days": _number(0),
           "access_log": _text, "access_log_sample_rate": _number(0, 1), "otel_exporter": _choice("console", "otlp"),
           "drain_timeout_s": _number(0), "log_level": lambda value: _choice(*LOG_LEVELS)(str(value).upper()),
           "workers": lambda value: value}  # checked with --workers


def load_serve_settings(path: str, allowed: tuple[str, ...]) -> dict:
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{file}: cannot read settings: {exc}", 2) from None
    if not isinstance(data, dict):
        raise CliError(f"{file}: settings must be a YAML mapping", 2)
    out: dict = {}
    where: dict = {}
    tls = data.pop("tls", None) or {}
    if not isinstance(tls, dict):
        raise CliError(f"{file}: tls: must be a mapping", 2)
    for key, value in tls.items():
        if key == "sni":
            if not isinstance(value, list):
                raise CliError(f"{file}: tls.sni: must be a list", 2)
            out["tls_sni_certs"] = [_sni_spec(entry, file, i) for i, entry in enumerate(value)]
        elif key in _TLS_KEYS:
            out[_TLS_KEYS[key]], where[_TLS_KEYS[key]] = value, f"tls.{key}"
        else:
            raise CliError(f"{file}: tls.{key}: unknown setting (expected {', '.join(sorted(_TLS_KEYS))}, sni)", 2)
    names = {name: name for name in allowed} | {flag: name for flag, name in _NAMES.items() if name in allowed}
    for key, value in data.items():
        if key not in names:
            flags = {name: flag for flag, name in _NAMES.items()}
            expected = [flags.get(name, name) for name in allowed]
            raise CliError(f"{file}: {key}: unknown setting (expected one of {', '.join(expected)}, tls)", 2)
        out[names[key]], where[names[key]] = value, key
    for key, value in list(out.items()):
        if key in where:
            try:
                out[key] = _CHECKS[key](value)
            except ValueError as exc:
                raise CliError(f"{file}: {where[key]}: {exc}", 2) from None
    for key in _PATHS & set(out):
        out[key] = str((file.parent / out[key]).resolve())
    if "data_roots" in out:
        out["data_roots"] = [str((file.parent / p).resolve()) for p in out["data_roots"]]
    if out.get("access_log") not in (None, "-", "off"):
        out["access_log"] = str((file.parent / out["access_log"]).resolve())
    return out


_SNI_KEYS = ("name", "cert", "key", "password_file", "password_env", "server_names")


def _sni_spec(entry, file: Path, index: int) -> str:
    if not isinstance(entry, dict) or "cert" not in entry or "key" not in entry:
        raise CliError(f"{file}: tls.sni: each entry needs cert and key", 2)
    parts = []
    for key, value in entry.items():
        if key not in _SNI_KEYS:
            raise CliError(f"{file}: tls.sni[{index}].{key}: unknown setting (expected {', '.join(_SNI_KEYS)})", 2)
        if key in ("cert", "key", "password_file"):
            value = str((file.parent / str(value)).resolve())
        if key == "server_names":
            value = ";".join(value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={value}")
    return ",".join(parts)
