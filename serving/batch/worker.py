"""`python -m serving.batch.worker`: one batch worker process (Azure ML's contract).

Imports the scoring script, calls `init()` once, then answers mini-batches until its
stdin closes: `run(mini_batch)` gets a list of file paths or of rows and returns one
result per item. Protocol: one JSON line per message, requests on stdin, answers on a
private copy of the original stdout — fd 1 itself is pointed at the log (stderr, a pipe
the gateway writes to logs/worker-N.log: serving.batch.workerlog), so a `print()` in
user code can never corrupt the protocol.

    → {"id": 7, "kind": "files" | "rows", "items": [...]}
    ← {"ready": true} | {"ready": false, "error": "..."}          once, after init()
    ← {"id": 7, "ok": true, "results": ["...", ...]} | {"id": 7, "ok": false, "error": "..."}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

EXIT_INIT_FAILED = 3


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 1000 else text[:997] + "..."


def _plain(value):
    """What json cannot write: numpy scalars and arrays (model.predict's) as numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _render(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=_plain, ensure_ascii=False)


def _results(output, count: int) -> list[str]:
    if hasattr(output, "to_dict") and hasattr(output, "columns"):  # a DataFrame, without importing pandas
        output = output.to_dict(orient="records")
    if isinstance(output, (str, bytes, dict)) or not hasattr(output, "__len__"):
        raise TypeError(f"run() must return a list with one result per item, got {type(output).__name__}")
    output = list(output)
    if len(output) != count:
        raise ValueError(f"run() returned {len(output)} results for {count} items")
    return [_render(value) for value in output]


class _Channel:
    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)  # from now on fd 1 (print, C extensions) goes to the log

    def send(self, message: dict) -> None:
        self._out.write(json.dumps(message, ensure_ascii=False).encode("utf-8", "replace") + b"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.batch.worker")
    parser.add_argument("--code", required=True)
    parser.add_argument("--scoring-script", required=True)
    parser.add_argument("--model-dir")
    parser.add_argument("--logging-level", default="info")
    args = parser.parse_args(argv)
    channel = _Channel()
    logging.basicConfig(level=args.logging_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..modelserver.loader import call_init, load_script, prepare_environment

    try:
        code = Path(args.code).resolve()
        prepare_environment(code, Path(args.model_dir) if args.model_dir else None)
        script = load_script(code, args.scoring_script)
        call_init(script)
    except BaseException as exc:  # noqa: BLE001 (user code: report whatever it raised)
        traceback.print_exc()
        channel.send({"ready": False, "error": f"init() failed: {_describe(exc)}"})
        return EXIT_INIT_FAILED
    channel.send({"ready": True, "pid": os.getpid()})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        items = request["items"]
        if request["kind"] == "rows":
            items = [json.loads(item) for item in items]
        try:
            results = _results(script.run(items), len(items))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            channel.send({"id": request["id"], "ok": False, "error": _describe(exc)})
            continue
        channel.send({"id": request["id"], "ok": True, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
