"""Session ticket keys shared by the processes that serve one port.

Why: OpenSSL gives every server context random ticket keys of its own, so a session
ticket issued by one `serve --workers N` process cannot be opened by another. The kernel
spreads a client's new connections over the workers (SO_REUSEPORT), so without shared
keys (N-1)/N of its resumptions fall back to a full handshake. The main process makes one
set of keys (`new_ticket_keys`) and hands it to every worker, which installs it in its
listener context (`install_ticket_keys`) — as a multi-process web server's master does.
The keys live as long as the main process, as one process's own keys do; they are
never written anywhere.

How: Python's `ssl` module has no call for ticket keys, so this reaches OpenSSL's
`SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS)` through ctypes, in the libssl the
interpreter's `_ssl` module is linked with, on the `SSL_CTX` the `SSLContext` object
holds (its first field). That pointer is checked before use: OpenSSL must report the
context's own options for it, and must give back the keys just set. Anything unexpected
(another interpreter, a libssl without the call) leaves the context's own keys in place
and returns False: resumption then works per process, as before.

`session_cache_off` uses the same access for one more setting Python's `ssl` lacks:
OpenSSL keeps a server-side cache of sessions by id (TLS 1.2 clients that do not use
tickets resume from it) unless told not to. Off, as nginx's default (`ssl_session_cache
none`): resumption is by tickets only, which every process of a port (and every router
pod) can open, and no process keeps up to 20,480 sessions of its own in memory.

The keys set are those of the listener's context; TLS ticket encryption keeps using that
context after the SNI callback switches a connection to a certificate's own context
(OpenSSL keeps the first context as the session context), so every certificate shares them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys

log = logging.getLogger("scoregate.tls.tickets")

TICKET_KEYS_BYTES = 80  # key name (16), HMAC secret (32), AES key (32)
_SET_KEYS, _GET_KEYS = 59, 58  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS, SSL_CTRL_GET_TLSEXT_TICKET_KEYS
_SET_CACHE_MODE, _GET_CACHE_MODE, _CACHE_OFF = 44, 45, 0  # SSL_CTRL_{SET,GET}_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF

_openssl: tuple | None = None  # (SSL_CTX_ctrl, SSL_CTX_get_options), found once


def new_ticket_keys() -> bytes:
    return os.urandom(TICKET_KEYS_BYTES)


def install_ticket_keys(context: ssl.SSLContext, keys: bytes) -> bool:
    """Make `context` encrypt and open session tickets with `keys`; False (and a warning)
    when that cannot be done safely here, leaving the context's own keys."""
    if len(keys) != TICKET_KEYS_BYTES:
        raise ValueError(f"ticket keys are {TICKET_KEYS_BYTES} bytes, not {len(keys)}")
    try:
        ctrl, get_options = _functions()
        pointer = _ssl_ctx(context, get_options)
        given = ctypes.create_string_buffer(keys, TICKET_KEYS_BYTES)
        back = ctypes.create_string_buffer(TICKET_KEYS_BYTES)
        if ctrl(pointer, _SET_KEYS, TICKET_KEYS_BYTES, given) != 1:
            raise OSError("OpenSSL refused the ticket keys")
        if ctrl(pointer, _GET_KEYS, TICKET_KEYS_BYTES, back) != 1 or back.raw != keys:
            raise OSError("OpenSSL does not report the ticket keys just set")
    except (OSError, AttributeError, TypeError, ValueError) as exc:
        log.warning("TLS session tickets stay per process (a client resuming on another worker or router pod "
                    "gets a full handshake): %s", exc)
        return False
    return True


def session_cache_off(context: ssl.SSLContext) -> bool:
    """Turn off OpenSSL's server-side session cache of `context` (see the module
    docstring); False (and a debug line) when that cannot be done safely here."""
    try:
        ctrl, get_options = _functions()
        pointer = _ssl_ctx(context, get_options)
        ctrl(pointer, _SET_CACHE_MODE, _CACHE_OFF, None)
        if ctrl(pointer, _GET_CACHE_MODE, 0, None) != _CACHE_OFF:
            raise OSError("OpenSSL does not report the session cache off")
    except (OSError, AttributeError, TypeError, ValueError) as exc:
        log.debug("the TLS session cache stays on: %s", exc)
        return False
    return True


def _functions() -> tuple:
    global _openssl
    if _openssl is None:
        import _ssl

        library = ctypes.CDLL(getattr(_ssl, "__file__", None))  # None: _ssl is built in
        ctrl = library.SSL_CTX_ctrl
        ctrl.restype, ctrl.argtypes = ctypes.c_long, [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        get_options = library.SSL_CTX_get_options
        get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
        _openssl = (ctrl, get_options)
    return _openssl


def _ssl_ctx(context: ssl.SSLContext, get_options) -> int:
    """The SSL_CTX pointer of `context`, checked against OpenSSL's view of its options."""
    if sys.implementation.name != "cpython" or not isinstance(context, ssl.SSLContext):
        raise TypeError("not a CPython ssl.SSLContext")
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or get_options(pointer) != context.options:
        raise OSError("cannot find the OpenSSL context of this ssl.SSLContext")
    return pointer
