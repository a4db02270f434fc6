"""nginx as the C reverse proxy to compare with: same job, same core, same replica.

The config the benchmark writes makes nginx do what scoregate does on this
path: terminate TLS with the gateway's own development certificate, refuse
a wrong bearer key with 401, add a request id and the deployment header,
and forward over a pool of HTTP/1.1 keep-alive connections to the same
replica, with one worker process (`worker_processes 1`).  Everything nginx
writes (pid, logs, temp files) stays in the benchmark's temp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .procs import BenchError, Child, free_port, wait_port

CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream replica {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {cert_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_conf_command NumTickets 1;  # as scoregate: one TLS 1.3 ticket per connection

        location = /api/v1/endpoint/{endpoint}/score {{
            if ($http_authorization != "Bearer {key}") {{
                return 401 '{{"code": "Unauthorized", "message": "missing or wrong key"}}';
            }}
            proxy_pass http://replica/score;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-request-id $request_id;
            add_header x-request-id $request_id always;
            add_header azureml-model-deployment {deployment} always;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def install_nginx(log: Path) -> str | None:
    """apt-get install nginx (updating the package lists first if needed); its path or None."""
    if not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(log, "ab") as out:
        for cmd in (["apt-get", "install", "-y", "-q", "nginx"],
                    ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "nginx"]):
            try:
                done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      timeout=900, check=False)
            except (OSError, subprocess.TimeoutExpired):
                return None
            if cmd[1] == "install" and done.returncode == 0:
                return find_nginx()
    return None


def render_conf(workdir: Path, port: int, upstream_port: int, cert: str, cert_key: str,
                key: str, endpoint: str, deployment: str) -> str:
    if any(c in key for c in '"\\\n$; '):
        raise BenchError("the endpoint key has characters the nginx config cannot hold")
    user = "user root root;" if os.geteuid() == 0 else ""
    return CONF.format(dir=workdir, user=user, key=key, upstream_port=upstream_port, port=port,
                       cert=cert, cert_key=cert_key, endpoint=endpoint, deployment=deployment)


def start_nginx(nginx: str, workdir: Path, cpu: int | None, **conf) -> tuple[Child, int]:
    """Write nginx.conf into workdir, start nginx on `cpu`; (child, port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = workdir / "nginx.conf"
    path.write_text(render_conf(workdir, port, **conf))
    child = Child("nginx", [nginx, "-p", str(workdir), "-c", str(path), "-e",
                            str(workdir / "error.log")], workdir / "nginx.out", cpu)
    try:
        wait_port(port, 15.0, child)
    except BaseException:
        child.stop(timeout=5.0)
        raise
    return child, port


def nginx_version(nginx: str) -> str:
    try:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stderr or done.stdout).strip().replace("nginx version: ", "")
