"""A model server that is not scoregate's: plain stdlib HTTP, its own routes.

Listens on $PORT (or the first argument). GET /healthz → 200; GET /ready → $READY_STATUS
(default 200); POST /predict → {"custom": true, "echo": <body>, "path": ...}.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
        if self.path == "/healthz":
            return self._send(200, {"alive": True})
        if self.path == "/ready":
            return self._send(int(os.environ.get("READY_STATUS", "200")), {"ready": True})
        return self._send(404, {"error": "no route"})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if self.path != "/predict":
            return self._send(404, {"error": "no route"})
        return self._send(200, {"custom": True, "echo": json.loads(body) if body else None, "path": self.path})

    def log_message(self, *_args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT") or sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
