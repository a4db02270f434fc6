"""The CLI's side of batch jobs: keys from the admin port, jobs over HTTPS.

Jobs are driven through the same scoring-port routes users call (with the endpoint's
key), so the CLI exercises the real path; only the key comes from the admin API.
Synchronous urllib, as in serving.client.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..client import AdminClient, CliError, api_path, exit_code_of, gateway_tls

TIMEOUT_S = 120.0


class BatchClient:
    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin
        self._context = gateway_tls(admin.info)
        self._keys: dict[str, str | None] = {}

    def _key(self, endpoint: str) -> str | None:
        if endpoint not in self._keys:
            base = api_path("batch", "endpoints", endpoint)
            view = self.admin.get(base)
            self._keys[endpoint] = None if view.get("auth_mode") == "none" else \
                self.admin.get(f"{base}/keys")["primaryKey"]
        return self._keys[endpoint]

    def _open(self, method: str, endpoint: str, tail: str = "", body: dict | None = None):
        url = f"{self.admin.info.scoring_url}/api/v1{api_path('batch', endpoint, 'jobs')}{tail}"
        headers = {"Content-Type": "application/json"}
        key = self._key(endpoint)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self._context)
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                message = json.loads(payload).get("message") or payload.decode(errors="replace")
            except (ValueError, AttributeError):
                message = payload.decode(errors="replace")
            raise CliError(f"HTTP {exc.code}: {message}", exit_code_of(exc.code)) from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach {url}: {exc.reason}") from None

    def _json(self, method: str, endpoint: str, tail: str = "", body: dict | None = None):
        with self._open(method, endpoint, tail, body) as response:
            return json.loads(response.read())

    def submit(self, endpoint: str, body: dict) -> dict:
        return self._json("POST", endpoint, "", body)

    def list_jobs(self, endpoint: str, limit: int = 100) -> list:
        return self._json("GET", endpoint, f"?limit={limit}")

    def show(self, endpoint: str, job_id: str) -> dict:
        return self._json("GET", endpoint, api_path(job_id))

    def cancel(self, endpoint: str, job_id: str) -> dict:
        return self._json("POST", endpoint, api_path(job_id, "cancel"))

    def download(self, endpoint: str, job_id: str, folder: Path) -> dict:
        """Save the job's output under folder/JOB_ID/ (temp file + rename: never half a file)."""
        job = self.show(endpoint, job_id)
        name = job["output"]["file_name"] if job["output"]["action"] == "append_row" else "summary.json"
        target = Path(folder) / job_id / name
        tmp = target.with_name(f".{name}.part")
        size = 0
        with self._open("GET", endpoint, api_path(job_id, "output")) as response:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)  # only once there is an output to save
                with open(tmp, "wb") as handle:
                    while chunk := response.read(1 << 20):
                        handle.write(chunk)
                        size += len(chunk)
                os.replace(tmp, target)
            except OSError as exc:
                raise CliError(f"cannot save the output to {target}: {exc.strerror or exc}") from None
        return {"job_id": job_id, "status": job["status"], "path": str(target.resolve()), "bytes": size}
