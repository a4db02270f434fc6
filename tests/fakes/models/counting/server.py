"""A model server that records how many requests it serves at once.

Listens on the first argument. POST /score sleeps $DELAY_S (default 0.2) and answers
{"ok": true}; GET /healthz → 200. The highest number of scoring requests in progress
at one moment, and how many were served, are written to $COUNT_FILE as JSON after every
change, so a test can read what the replica saw without going through the gateway.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY_S = float(os.environ.get("DELAY_S", "0.2"))
COUNT_FILE = os.environ["COUNT_FILE"]
_lock = threading.Lock()
_state = {"inside": 0, "peak": 0, "served": 0}


def _record(change: int) -> None:
    with _lock:
        _state["inside"] += change
        _state["peak"] = max(_state["peak"], _state["inside"])
        if change < 0:
            _state["served"] += 1
        text = json.dumps(_state)
        temporary = f"{COUNT_FILE}.{os.getpid()}.tmp"  # replicas of one deployment share COUNT_FILE
        with open(temporary, "w") as handle:
            handle.write(text)
        os.replace(temporary, COUNT_FILE)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        return self._send(200 if self.path == "/healthz" else 404, {"alive": True})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        _record(+1)
        try:
            time.sleep(DELAY_S)
        finally:
            _record(-1)
        return self._send(200, {"ok": True, "pid": os.getpid()})

    def log_message(self, *_args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
