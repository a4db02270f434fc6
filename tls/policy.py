"""The TLS policy of scoregate, as ready-made ssl.SSLContext objects.

One place decides protocol versions and cipher suites so that the HTTPS listener, the
admin port and router-to-replica connections cannot drift apart. The policy: TLS 1.2
or 1.3 only; for TLS 1.2 only forward-secret AEAD suites (ECDHE with AES-GCM or
ChaCha20-Poly1305); no compression, no renegotiation; ALPN "http/1.1" because that
is what the router speaks. TLS 1.3 suites are all AEAD and forward secret already.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import TLSConfigError
from .tickets import session_cache_off
from .pem import (
    Password,
    StrPath,
    check_key_matches,
    check_validity,
    load_certificates,
    load_private_key,
    parse_certificates,
    read_file,
)

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK"
ALPN_PROTOCOLS = ["http/1.1"]


def server_context(
    cert_file: StrPath, key_file: StrPath, *, password: Password = None
) -> ssl.SSLContext:
    """A server context for `cert_file` (leaf first, then its chain) and `key_file`.

    The files are checked with `cryptography` first so that a bad file gives a
    TLSConfigError naming it: missing, not PEM, expired, or key not matching.
    """
    cert_path, key_path = Path(cert_file), Path(key_file)
    certs = load_certificates(cert_path)
    key = load_private_key(key_path, password)
    check_validity(cert_path, certs)
    check_key_matches(cert_path, key_path, certs, key)

    ctx = new_server_context()
    try:
        ctx.load_cert_chain(cert_path, key_path, password=password)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{cert_path}: OpenSSL refused the certificate or key ({exc})"
        ) from None
    return ctx


def new_server_context() -> ssl.SSLContext:
    """A server context with the policy applied and no certificate loaded yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_policy(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # TLS 1.3: one session ticket per connection, not OpenSSL's two. Each ticket is a
    # session serialized, encrypted and sent on every full handshake (~6 % of the
    # handshake's instructions for the second one); a client that resumes gets a fresh
    # ticket on that connection too, so one is what a client needs to resume each time.
    ctx.num_tickets = 1
    # Resumption by tickets only: no server-side cache of sessions by id (tls.tickets).
    session_cache_off(ctx)
    return ctx


def require_client_certificates(ctx: ssl.SSLContext, ca_pem: str | bytes, origin: StrPath) -> None:
    """Make `ctx` refuse, at the handshake, clients without a certificate from `ca_pem`.

    Takes the bundle's bytes (read once by the caller) so what was checked is what is
    loaded; `origin` names the bundle in errors.
    """
    certs = parse_certificates(origin, ca_pem if isinstance(ca_pem, bytes) else ca_pem.encode())
    try:
        ctx.load_verify_locations(cadata="".join(_pem_text(c) for c in certs))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{origin}: OpenSSL refused the client CA bundle ({exc})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED


def mtls_server_context(
    cert_file: StrPath, key_file: StrPath, client_ca_file: StrPath, *, password: Password = None
) -> ssl.SSLContext:
    """server_context that also requires a client certificate issued by `client_ca_file`."""
    ctx = server_context(cert_file, key_file, password=password)
    ca_path = Path(client_ca_file)
    require_client_certificates(ctx, read_file(ca_path, "client CA"), ca_path)
    return ctx


def client_context(
    cafile: StrPath | None = None,
    *,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
    password: Password = None,
) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and hostname.

    With `cafile` only that CA bundle is trusted (e.g. the development CA or the
    internal CA for replicas); without it, the system's trust store is used. With
    `cert_file` and `key_file` it also presents that client certificate (mTLS).
    """
    ca_path = None
    if cafile is not None:
        ca_path = Path(cafile)
        load_certificates(ca_path)  # a clear error for a missing or non-PEM file
    try:
        # With a cafile, create_default_context trusts only that file, not the system store.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_path)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{ca_path}: OpenSSL refused the CA file ({exc})") from None
    _apply_policy(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None:
        cert_path = Path(cert_file)
        key_path = Path(key_file if key_file is not None else cert_file)
        certs = load_certificates(cert_path)
        check_validity(cert_path, certs)
        check_key_matches(cert_path, key_path, certs, load_private_key(key_path, password))
        try:
            ctx.load_cert_chain(cert_path, key_path, password=password)
        except ssl.SSLError as exc:
            raise TLSConfigError(f"{cert_path}: OpenSSL refused the client certificate ({exc})") from None
    return ctx


def _pem_text(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _apply_policy(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN_PROTOCOLS)
