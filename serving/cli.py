"""`scoregate`: the command line, in the style of `az ml` (JSON output by default).

`serve` runs the gateway in this process; every other verb finds the running gateway
through the state dir (`--state-dir`, `SCOREGATE_STATE_DIR`, default ./.scoregate) and
talks to its admin API. Errors are one line on stderr and a non-zero exit code:
1 failed (nothing of that name, a scoring call, rollout or job that failed, the gateway
erred), 2 refused as asked: bad arguments or input, or a change the gateway's rules refuse
(serving.client.exit_code_of), 3 no gateway is running, 4 a `--wait` (`apply`,
`batch invoke`) stopped waiting for work that goes on. The table is in the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .cli_types import budget as _budget, lifetime as _lifetime, line_count as _line_count
from .cli_types import log_level as _log_level, port as _port, retention_days as _retention_days
from .cli_types import seconds as _seconds, share as _share
from .client import EXIT_STILL_RUNNING, AdminClient, CliError, GatewayNotRunning, api_path, score_request
from .statedir import resolve_state_dir


def _print(data, output: str) -> None:
    if isinstance(data, str):  # text (logs) as it is, whatever the format; none is no line at all
        sys.stdout.write(data if not data or data.endswith("\n") else data + "\n")
    elif output == "table":
        _print_table(data)
    else:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _print_table(data) -> None:
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        # A result made of lists (apply: "applied", "deployments"): one table each.
        for index, (title, rows) in enumerate(data.items()):
            sys.stdout.write(("\n" if index else "") + f"{title}:\n")
            _print_table(rows)
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        return  # an empty list: no table (the JSON output says [])
    if not isinstance(rows[0], dict):
        sys.stdout.write(f"{data}\n")
        return
    # What a person scans for; the rest stays in the JSON output.
    noisy = {"openapi_uri", "created_at", "updated_at", "description", "tags", "started_at"}
    keys = dict.fromkeys(k for row in rows for k in row)  # every row's, in order of first use
    columns = [k for k in keys if not any(isinstance(row.get(k), (dict, list)) for row in rows) and k not in noisy
               and any(row.get(k) not in (None, "") for row in rows)]
    if "traffic" in rows[0]:
        columns.append("traffic")
    if any(row.get("mirror_traffic") for row in rows):
        columns.append("mirror_traffic")
    cells = [[_cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    sys.stdout.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _cell(value, column: str = "") -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if column.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        # Times are Unix seconds in JSON (for scripts); a person reads them as UTC.
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value))
    return "" if value is None else str(value)


# -- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="state dir of the gateway (default: $SCOREGATE_STATE_DIR or ./.scoregate)")
    common.add_argument("-o", "--output", choices=("json", "table"), default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="scoregate", description="Inference router and serving gateway.")
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("-o", "--output", choices=("json", "table"), default=None)  # None: json (top: table)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = verbs.add_parser("serve", parents=[common], help="run the gateway (router + controller)")
    serve.add_argument("paths", nargs="*", help="YAML files or folders to apply at start")
    serve.add_argument("--host", default=None, help="default 127.0.0.1")
    serve.add_argument("--port", type=_port, default=None, help="HTTPS port (default 8443)")
    serve.add_argument("--admin-host", default=None, help="default 127.0.0.1")
    serve.add_argument("--admin-port", type=_port, default=None, help="default 8081")
    serve.add_argument("--config", help="YAML settings file (same names as these flags, with _)")
    serve.add_argument("--tls-cert", help="PEM certificate chain (default: a development certificate)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-key-password-file", help="file holding the passphrase of --tls-key")
    serve.add_argument("--tls-key-password-env", help="environment variable holding that passphrase")
    serve.add_argument("--tls-sni-cert", action="append", dest="tls_sni_certs", default=None,
                       metavar="SPEC", help="another certificate chosen by SNI: "
                       "cert=F,key=F[,name=N][,password_file=F][,password_env=V][,server_names=a;*.b]")
    serve.add_argument("--tls-client-ca", help="require client certificates from this CA bundle (mTLS)")
    serve.add_argument("--tls-reload-interval", type=_seconds, dest="tls_reload_interval_s", default=None,
                       help="seconds between checks of the certificate files (0: off; default 10)")
    serve.add_argument("--http-redirect-port", type=_port, help="also listen here for HTTP, redirecting to HTTPS")
    serve.add_argument("--replica-mtls", action="store_true", default=None,
                       help="talk to replicas over mutual TLS with certificates from an internal CA")
    serve.add_argument("--domain", help="also serve endpoints at https://ENDPOINT.DOMAIN/score")
    serve.add_argument("--access-log", default=None, metavar="PATH",
                       help="JSON access log: a file, '-' for stdout, 'off' (default STATE_DIR/logs/access.log)")
    serve.add_argument("--access-log-sample-rate", type=_share, default=None,
                       help="share of successful requests logged (errors always are; default 1.0)")
    serve.add_argument("--otel-exporter", choices=("console", "otlp"), default=None,
                       help="export OpenTelemetry spans (needs the opentelemetry-sdk package; "
                            "otlp also opentelemetry-exporter-otlp)")
    serve.add_argument("--data-root", action="append", dest="data_roots", default=None, metavar="DIR",
                       help="folder batch job inputs may come from (repeatable)")
    serve.add_argument("--job-retention-days", type=_retention_days, dest="job_retention_days", default=None,
                       metavar="DAYS", help="remove an ended batch job (its output, logs and record) this many "
                       "days after it ended; 0 keeps every job (default 30)")
    serve.add_argument("--rollout-timeout", type=_budget, dest="rollout_timeout_s", default=None,
                       help="time budget of a rollout, e.g. 20m, 90s (default 20m)")
    serve.add_argument("--drain-timeout", type=_seconds, dest="drain_timeout_s", default=None,
                       help="seconds in-flight requests get to finish at shutdown")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="router processes on the scoring port, one per core (default 1: the "
                            "router runs in the main process)")
    serve.add_argument("--log-level", type=_log_level, default=None,
                       help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")

    apply = verbs.add_parser("apply", parents=[common], help="create or update resources from YAML")
    apply.add_argument("-f", "--file", action="append", required=True, help="YAML file or folder")
    apply.add_argument("--wait", action="store_true",
                       help="wait until every deployment applied has rolled out or failed (exit 1 if one failed,"
                            " 4 if the wait timed out while rollouts go on)")
    apply.add_argument("--wait-timeout", type=float, default=1800.0,
                       help="seconds to wait with --wait (default 1800: above the 20 min rollout budget)")

    endpoint = verbs.add_parser("endpoint", help="online endpoints").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    endpoint.add_parser("list", parents=[common], help="every endpoint (online and batch)")
    for action, text in (("show", "one endpoint: traffic, URIs, deployments"),
                         ("delete", "delete an endpoint and stop its replicas"),
                         ("get-credentials", "its keys (key endpoints) or an access token (aml_token)")):
        p = endpoint.add_parser(action, parents=[common], help=text)
        p.add_argument("-n", "--name", required=True)
        if action == "delete":
            p.add_argument("-y", "--yes", action="store_true", help="accepted for az compatibility")
    token = endpoint.add_parser("get-token", parents=[common], help="an access token (aml_token endpoints)")
    token.add_argument("-n", "--name", required=True)
    token.add_argument("--lifetime", type=_lifetime, default=3600.0,
                       help="how long the token is valid (default 1h; at most 24h)")
    token.add_argument("--backend", choices=("embedded", "kubernetes"), default="embedded",
                       help="kubernetes: mint it from the cluster's signing key Secret with your kubeconfig")
    token.add_argument("--kubeconfig", default=None, help="(kubernetes) kubeconfig file (default: ~/.kube/config)")
    token.add_argument("--context", default=None, help="(kubernetes) kubeconfig context")
    token.add_argument("--namespace", default=None,
                       help="(kubernetes) the OnlineEndpoint's namespace (default: the kubeconfig context's, "
                            "else default)")
    token.add_argument("--signing-namespace", default=None,
                       help="(kubernetes) namespace of Secret scoregate-secrets: the first --namespace of the "
                            "controller and routers (default: --namespace)")
    update = endpoint.add_parser("update", parents=[common],
                                 help="change an endpoint's traffic or mirrored traffic (as az ml online-endpoint update)")
    update.add_argument("-n", "--name", required=True)
    update.add_argument("--traffic", default=None, metavar='"blue=90 green=10"',
                        help="the whole live traffic split (deployments not named get none)")
    update.add_argument("--mirror-traffic", default=None, metavar='"green=10"',
                        help='the mirrored traffic ("" for none)')
    regen = endpoint.add_parser("regenerate-keys", parents=[common], help="replace the primary or secondary key")
    regen.add_argument("-n", "--name", required=True)
    regen.add_argument("--key-type", choices=("primary", "secondary"), default="primary")
    invoke = endpoint.add_parser("invoke", parents=[common], help="score a request file (-d pins a deployment)")
    invoke.add_argument("-n", "--name", required=True)
    invoke.add_argument("-r", "--request-file", required=True)
    invoke.add_argument("-d", "--deployment-name")

    deployment = verbs.add_parser("deployment", help="online deployments").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    dlist = deployment.add_parser("list", parents=[common], help="an endpoint's deployments")
    dlist.add_argument("-e", "--endpoint-name", required=True)
    for action, text, aliases in (
            ("show", "one deployment: settings, rollout (stage, reason), replicas", []),
            ("delete", "delete a deployment without traffic and stop its replicas", []),
            ("logs", "the last lines of its replicas' logs", ["get-logs"]),
            ("scale", "set its instance count", [])):
        p = deployment.add_parser(action, parents=[common], help=text, aliases=aliases)
        p.add_argument("-n", "--name", required=True)
        p.add_argument("-e", "--endpoint-name", required=True)
        if action == "logs":
            p.add_argument("-l", "--lines", type=_line_count, default=100,
                           help="how many of the last lines (0 to 10000; default 100)")
        if action == "delete":
            p.add_argument("-y", "--yes", action="store_true")
        if action == "scale":
            p.add_argument("--instance-count", type=int, required=True)

    tls = verbs.add_parser("tls", help="certificates").add_subparsers(dest="action", required=True)
    dev_cert = tls.add_parser("dev-cert", help="write a development CA and server certificate")
    dev_cert.add_argument("--hostname", action="append", help="name or IP (repeatable)")
    dev_cert.add_argument("--out", required=True, help="output folder")

    from .batch.cli import register as register_batch

    register_batch(verbs, common)
    verbs.add_parser("controller", help="run the serving controller on a cluster "
                     "(see `scoregate controller -h`)", add_help=False)
    verbs.add_parser("router", help="run a router replica on a cluster (see `scoregate router -h`)",
                     add_help=False)
    verbs.add_parser("batch-runner", help="run the batch runner on a cluster: BatchEndpoint/BatchDeployment "
                     "resources → batch jobs (see `scoregate batch-runner -h`)", add_help=False)
    # Not parents=[common]: its -o has a default of its own (the table), given after `top`.
    top = verbs.add_parser("top", help="live view of endpoints, deployments and batch jobs")
    top.add_argument("--state-dir", default=argparse.SUPPRESS,
                     help="state dir of the gateway (default: $SCOREGATE_STATE_DIR or ./.scoregate)")
    top.add_argument("-o", "--output", dest="top_output", choices=("table", "json"), default=None,
                     help="table: a refreshing screen (default); json: the status snapshot, one JSON "
                          "document per refresh, a line each (JSON lines), for scripts")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=int, default=None, help="stop after this many refreshes")
    verbs.add_parser("loadtest", help="load-test an endpoint or URL (see `scoregate loadtest -h`)",
                     add_help=False)
    return parser


# -- commands ----------------------------------------------------------------------------

_SERVE_DEFAULTS = {"host": "127.0.0.1", "port": 8443, "admin_host": "127.0.0.1", "admin_port": 8081,
                   "tls_reload_interval_s": 10.0, "drain_timeout_s": 30.0, "log_level": "INFO"}

_SERVE_SETTINGS = ("host", "port", "admin_host", "admin_port", "tls_cert", "tls_key",
                   "tls_key_password_file", "tls_key_password_env", "tls_sni_certs", "tls_client_ca",
                   "tls_reload_interval_s", "http_redirect_port", "replica_mtls", "domain",
                   "rollout_timeout_s", "data_roots", "job_retention_days", "access_log", "access_log_sample_rate", "otel_exporter", "workers",
                   "drain_timeout_s", "log_level")


def _kubernetes_running(module: str = "running"):
    # Imported by name: only serving.backends.kubernetes may import the Kubernetes client,
    # and the CLI must not pull it in for every other verb.
    import importlib

    return importlib.import_module(f"serving.backends.kubernetes.{module}")


def _cluster_verb(argv: list[str], verb: str, module: str, run_name: str) -> int:
    """`scoregate controller|router|batch-runner --backend kubernetes ...`: each has its own parser, so
    the Kubernetes client is imported only by these verbs."""
    import asyncio
    import signal

    try:
        running = _kubernetes_running(module)
    except ImportError:
        sys.stderr.write("error: the Kubernetes backend needs kubernetes-asyncio: "
                         "pip install 'scoregate[kubernetes]'\n")
        return 2
    parser = argparse.ArgumentParser(prog=f"scoregate {verb}")
    parser.add_argument("--backend", choices=("kubernetes",), required=True)
    parser.add_argument("--log-level", default="INFO")
    running.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if verb != "router":
            await getattr(running, run_name)(running.settings_from_args(args), stop)
            return
        from .gc_freeze import freeze_once_serving

        serving = asyncio.Event()
        freezing = loop.create_task(freeze_once_serving(serving))
        try:
            await running.run_router(running.settings_from_args(args), stop, serving)
        finally:
            freezing.cancel()

    try:
        asyncio.run(main())
    except Exception as exc:  # a bad kubeconfig, an unreachable API server: one line, not a traceback
        sys.stderr.write(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")
        return 1
    return 0


def _serve(args) -> int:
    from .embedded import ServeOptions, run_serve
    from .settings_file import load_serve_settings

    settings = dict(_SERVE_DEFAULTS)
    if args.config:
        settings.update(load_serve_settings(args.config, _SERVE_SETTINGS))
    for name in _SERVE_SETTINGS:  # flags given on the command line win over the file
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    logging.basicConfig(level=settings.pop("log_level"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.get("access_log") == "off":
        settings["access_log"] = None
    if bool(settings.get("tls_cert")) != bool(settings.get("tls_key")):
        raise CliError(_unpaired_tls(args, settings), 2)
    workers = settings.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
        raise CliError(f"--workers must be a whole number from 1 to 64, not {workers!r}", 2)
    return run_serve(ServeOptions(state_dir=resolve_state_dir(args.state_dir), paths=args.paths, **settings))


def _unpaired_tls(args, settings: dict) -> str:
    """A certificate without its key, or the reverse, said where it was given: in the
    settings file by its keys (tls.cert, tls.key), on the command line by the flags."""
    given, missing = ("cert", "key") if settings.get("tls_cert") else ("key", "cert")
    if args.config and getattr(args, f"tls_{given}", None) is None:
        return f"{args.config}: tls.{missing}: missing (tls.cert and tls.key go together)"
    return "--tls-cert and --tls-key go together"


def _apply(args, client: AdminClient):
    from .manifests import ManifestError, read_documents

    try:
        documents = read_documents(args.file)
    except ManifestError as exc:
        raise CliError(str(exc), 2) from None
    applied = client.post("/apply", {"documents": [
        {"source": d.source, "base_dir": d.base_dir, "body": d.body} for d in documents]})
    if not args.wait:
        return applied
    from .rollout_wait import failures, wait_for_rollouts

    deployments = [a for a in applied.get("applied", []) if a.get("kind") == "deployment"]
    outcomes = wait_for_rollouts(client, [(a["endpoint_name"], a["name"]) for a in deployments], args.wait_timeout,
                                 {(a["endpoint_name"], a["name"]): a["attempt"] for a in deployments
                                  if a.get("new_attempt")})
    result = {**applied, "deployments": outcomes}
    problems = failures(outcomes)
    if problems:
        # Only waits cut short: the rollouts go on (4, as `batch invoke --wait`), not a failure (1).
        unsettled = [o for o in outcomes if o.get("timed_out") or o["provisioning_state"] != "Succeeded"]
        raise CliError(problems, EXIT_STILL_RUNNING if all(o.get("timed_out") for o in unsettled) else 1, result)
    return result


# Flags whose value is an endpoint or deployment name, online or batch.
_NAME_FLAGS = {"name": "--name", "endpoint_name": "--endpoint-name", "deployment_name": "--deployment-name"}


def _check_names(args) -> None:
    """Refuse a name no endpoint or deployment can have before any request: an error of
    the command line (exit 2), not a call that finds nothing — or something else. The rule
    is router.paths.NAME_RULE, the one manifests are read with (serving.field_reader)."""
    given = {flag: getattr(args, attr) for attr, flag in _NAME_FLAGS.items() if getattr(args, attr, None) is not None}
    if not given:
        return
    from router.paths import NAME_RULE  # imported here: it pulls in the router (aiohttp)

    for flag, value in given.items():
        if not NAME_RULE.match(value):
            raise CliError(f"{flag} must be 2-32 letters, digits or '-', starting with a letter; got {value!r}", 2)


def _endpoint(args, client: AdminClient):
    base = api_path("endpoints", args.name) if hasattr(args, "name") else "/endpoints"
    match args.action:
        case "list":
            return client.get("/endpoints")
        case "show":
            return client.get(base)
        case "delete":
            return client.delete(base)
        case "get-credentials":
            return _credentials(client, base)
        case "regenerate-keys":
            return _regenerate_keys(client, base, args.key_type)
        case "get-token":
            return client.post(f"{base}/token", {"lifetime_s": args.lifetime})
        case "invoke":
            return _invoke(args, client)
        case "update":
            return _update_endpoint(args, client)
    raise CliError(f"unknown action {args.action}", 2)


def _credentials(client: AdminClient, base: str):
    """As `az ml online-endpoint get-credentials`: the keys of a key endpoint, an access
    token (valid an hour) for an aml_token one — its keys would not open it. An endpoint
    with auth_mode none checks nothing: its stored keys would mislead (a caller would send
    one and believe it mattered), so the verb says the endpoint takes no credentials and
    fails with exit code 2, as `get-token` does on a key endpoint."""
    try:
        shown = client.get(base)
    except GatewayNotRunning:
        raise
    except CliError:
        shown = None  # a batch endpoint (keys only): the keys route answers for both kinds
    if shown is not None and shown.get("auth_mode") == "aml_token":
        return client.post(f"{base}/token", {"lifetime_s": 3600})
    if shown is not None and shown.get("auth_mode") == "none":
        raise CliError(f"endpoint '{shown.get('name')}' uses auth_mode none: it takes no credentials; score it"
                       " without an Authorization header (set auth_mode: key or aml_token to require one)", 2)
    return client.get(f"{base}/keys")


def _regenerate_keys(client: AdminClient, base: str, key_type: str):
    """New keys for an endpoint that is opened by keys. Keys of an auth_mode none or
    aml_token endpoint open nothing: printing new ones would suggest they protect it, so
    the verb refuses (exit code 2), as get-credentials does for auth_mode none."""
    try:
        shown = client.get(base)
    except GatewayNotRunning:
        raise
    except CliError:
        shown = None  # a batch endpoint (keys only): the route answers for both kinds
    mode = shown.get("auth_mode") if shown is not None else "key"
    if mode in ("none", "aml_token"):
        raise CliError(f"endpoint '{shown.get('name')}' uses auth_mode {mode}: keys do not open it, so there are"
                       " none to regenerate" + (" (its tokens: scoregate endpoint get-token)"
                                                if mode == "aml_token" else ""), 2)
    return client.post(f"{base}/regenerate-keys", {"key_type": key_type})


def _weights(text: str, option: str) -> dict[str, int]:
    """az ml's "blue=90 green=10" (commas too) as {name: percent}."""
    weights: dict[str, int] = {}
    for pair in text.replace(",", " ").split():
        name, sep, value = pair.partition("=")
        if sep and name in weights:  # a split names each deployment once: which of the two was meant?
            raise CliError(f"{option}: deployment '{name}' is given twice ({name}={weights[name]} and {pair})", 2)
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = int(value)
        except ValueError:
            raise CliError(f"{option}: expected \"name=percent ...\", got {pair!r}", 2) from None
    return weights


def _update_endpoint(args, client: AdminClient):
    """Traffic edits go through the same validated apply as YAML: the endpoint as stored,
    with the new split, as one document (every field of an endpoint is in its view)."""
    if args.traffic is None and args.mirror_traffic is None:
        raise CliError("nothing to update: give --traffic and/or --mirror-traffic", 2)
    from .manifests.online import ENDPOINT_FIELDS

    current = _online_endpoint(client, args.name)
    body = {key: current[key] for key in ENDPOINT_FIELDS}
    if args.traffic is not None:
        body["traffic"] = _weights(args.traffic, "--traffic")
    if args.mirror_traffic is not None:
        body["mirror_traffic"] = {k: v for k, v in _weights(args.mirror_traffic, "--mirror-traffic").items() if v}
    client.post("/apply", {"documents": [{"source": "endpoint update", "base_dir": ".", "body": body}]})
    return client.get(api_path("endpoints", args.name))


def _cluster_token(args) -> dict:
    """`endpoint get-token --backend kubernetes`: minted from the cluster's signing key."""
    import asyncio

    try:
        minting = _kubernetes_running("token_minting")
    except ImportError:
        raise CliError("the Kubernetes backend needs kubernetes-asyncio: "
                       "pip install 'scoregate[kubernetes]'", 2) from None
    try:
        return asyncio.run(minting.mint_token(args.name, namespace=args.namespace,
                                              signing_namespace=args.signing_namespace, kubeconfig=args.kubeconfig,
                                              context=args.context, lifetime_s=args.lifetime))
    except minting.MintingError as exc:
        raise CliError(str(exc), exc.exit_code) from None
    except Exception as exc:  # a bad kubeconfig, an unreachable API server: one line
        raise CliError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _online_endpoint(client: AdminClient, name: str) -> dict:
    """The endpoint's view, for verbs that only online endpoints have (`endpoint show` also
    shows batch ones: names are unique across both kinds)."""
    endpoint = client.get(api_path("endpoints", name))
    if endpoint.get("kind") == "batch":
        raise CliError(f"'{name}' is a batch endpoint; this is for online endpoints "
                       f"(submit a job with `scoregate batch invoke --name {name} --input ...`)", 1)
    return endpoint


def _invoke(args, client: AdminClient):
    try:
        body = Path(args.request_file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.request_file}: {exc.strerror}", 2) from None
    endpoint = _online_endpoint(client, args.name)
    headers = {"Content-Type": "application/json"}
    if endpoint["auth_mode"] == "key":
        headers["Authorization"] = f"Bearer {client.get(api_path('endpoints', args.name, 'keys'))['primaryKey']}"
    elif endpoint["auth_mode"] == "aml_token":
        headers["Authorization"] = f"Bearer {client.post(api_path('endpoints', args.name, 'token'), {})['accessToken']}"
    if args.deployment_name:
        headers["azureml-model-deployment"] = args.deployment_name
    status, text = score_request(client.info, endpoint["scoring_uri"], body, headers)
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    if not 200 <= status < 300:
        message = data["message"] if isinstance(data, dict) and "message" in data else text.strip()
        raise CliError(f"scoring failed with HTTP {status}: {message}", 1)
    return data


def _deployment(args, client: AdminClient):
    base = api_path("endpoints", args.endpoint_name, "deployments")
    match args.action:
        case "list":
            return client.get(base)
        case "show":
            return client.get(base + api_path(args.name))
        case "delete":
            return client.delete(base + api_path(args.name))
        case "logs" | "get-logs":
            return client.get_text(base + api_path(args.name, "logs") + f"?lines={args.lines}")
        case "scale":
            return client.post(base + api_path(args.name, "scale"), {"instance_count": args.instance_count})
    raise CliError(f"unknown action {args.action}", 2)


def _dev_cert(args):
    from tls import write_dev_certificates

    names = args.hostname or ["localhost", "127.0.0.1", "::1"]
    try:
        paths = write_dev_certificates(Path(args.out), names)
    except ValueError as exc:  # a --hostname that is neither a DNS name nor an IP address
        raise CliError(f"--hostname: {exc}", 2) from None
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write the certificates: {exc.strerror}", 2) from None
    return {"ca_cert": str(paths.ca_cert), "ca_key": str(paths.ca_key),
            "cert": str(paths.cert), "key": str(paths.key), "hostnames": names}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "controller":
        return _cluster_verb(argv[1:], "controller", "running", "run_controller")
    if argv and argv[0] == "router":
        return _cluster_verb(argv[1:], "router", "router_running", "run_router")
    if argv and argv[0] == "batch-runner":
        return _cluster_verb(argv[1:], "batch-runner", "batch_running", "run_batch")
    if argv and argv[0] == "loadtest":
        from .loadtest_cli import run_loadtest

        return run_loadtest(argv[1:])
    args = build_parser().parse_args(argv)
    output = getattr(args, "output", None) or "json"
    if args.verb == "endpoint" and args.action == "invoke":
        output = "json"  # the model's answer as it is: a table would keep only its flat fields
    try:
        _check_names(args)
        if args.verb == "serve":
            return _serve(args)
        if args.verb == "tls":
            _print(_dev_cert(args), output)
            return 0
        if args.verb == "endpoint" and getattr(args, "backend", "embedded") == "kubernetes":
            _print(_cluster_token(args), output)
            return 0
        client = AdminClient.from_state_dir(resolve_state_dir(args.state_dir))
        if args.verb == "top":
            from .top import run_top

            # `-o` after `top`, else before it (`scoregate -o json top`), else the table
            return run_top(client, args.interval, args.iterations, output=args.top_output or args.output or "table")
        if args.verb in ("batch", "job"):
            from .batch.cli import dispatch

            _print(dispatch(args, client), output)
            return 0
        handler = {"apply": _apply, "endpoint": _endpoint, "deployment": _deployment}[args.verb]
        _print(handler(args, client), output)
        return 0
    except GatewayNotRunning as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 3
    except CliError as exc:
        if exc.result is not None:
            _print(exc.result, output)
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
