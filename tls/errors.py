"""The one error type of the tls package.

Operators meet it at startup, so its message always names the file and what is wrong
with it ("server.pem: certificate expired on ..."), and callers print it as is.
"""

from __future__ import annotations


class TLSConfigError(Exception):
    """A certificate, key or CA file cannot be used; the message says which and why."""
