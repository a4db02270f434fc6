"""Crash points for tests: kill this process (SIGKILL) at a named place in the job path.

`SCOREGATE_BATCH_FAILPOINT=name:n` kills the process the n-th time `hit("name")` runs.
Unset (always, outside tests) this costs one dict lookup. It exists because "a crash at
any point loses nothing" is only believable when each point has been crashed at.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("SCOREGATE_BATCH_FAILPOINT", "")
_NAME, _, _COUNT = _SPEC.partition(":")
_seen: dict[str, int] = {}


def hit(name: str) -> None:
    if not _NAME or name != _NAME:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(_COUNT or 1):
        os.kill(os.getpid(), signal.SIGKILL)
