"""`scoregate serve --config FILE`: the serve flags as a YAML file.

Keys are the flag names with `_` (`tls_cert`, `admin_port`, ...), plus a `tls:` block
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

from pathlib import Path

import yaml

from .client import CliError

_TLS_KEYS = {"cert": "tls_cert", "key": "tls_key", "key_password_file": "tls_key_password_file",
             "key_password_env": "tls_key_password_env", "client_ca": "tls_client_ca",
             "reload_interval": "tls_reload_interval_s"}
_PATHS = {"tls_cert", "tls_key", "tls_key_password_file", "tls_client_ca"}


def load_serve_settings(path: str, allowed: tuple[str, ...]) -> dict:
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{file}: cannot read settings: {exc}", 2) from None
    if not isinstance(data, dict):
        raise CliError(f"{file}: settings must be a YAML mapping", 2)
    out: dict = {}
    tls = data.pop("tls", None) or {}
    if not isinstance(tls, dict):
        raise CliError(f"{file}: tls: must be a mapping", 2)
    for key, value in tls.items():
        if key == "sni":
            if not isinstance(value, list):
                raise CliError(f"{file}: tls.sni: must be a list", 2)
            out["tls_sni_certs"] = [_sni_spec(entry, file) for entry in value]
        elif key in _TLS_KEYS:
            out[_TLS_KEYS[key]] = value
        else:
            raise CliError(f"{file}: tls.{key}: unknown setting (expected {', '.join(sorted(_TLS_KEYS))}, sni)", 2)
    for key, value in data.items():
        if key not in allowed:
            raise CliError(f"{file}: {key}: unknown setting (expected one of {', '.join(allowed)}, tls)", 2)
        out[key] = value
    for key in _PATHS & set(out):
        out[key] = str((file.parent / str(out[key])).resolve())
    return out


def _sni_spec(entry, file: Path) -> str:
    if not isinstance(entry, dict) or "cert" not in entry or "key" not in entry:
        raise CliError(f"{file}: tls.sni: each entry needs cert and key", 2)
    parts = []
    for key, value in entry.items():
        if key in ("cert", "key", "password_file"):
            value = str((file.parent / str(value)).resolve())
        if key == "server_names":
            value = ";".join(value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={value}")
    return ",".join(parts)
