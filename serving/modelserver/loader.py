"""Load a user's scoring script and call its ``init()``.

Kept apart from the HTTP code so that "the script failed to load" can be told
from "the server failed" (the controller reports the first as an init failure).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable


class ScriptLoadError(Exception):
    """The scoring script could not be imported or lacks the contract."""


@dataclass(frozen=True)
class ScoringScript:
    """The loaded module and the ``run`` callable the server calls."""

    path: Path
    module: ModuleType
    run: Callable[[Any], Any]
    # run(raw_data, request_headers): Azure ML's server passes the request's headers too.
    takes_headers: bool = False
    # run() decorated with @input_schema (inference-schema): it takes the fields of the
    # JSON body by name, as Azure ML's server calls it. Each (name, default), the default
    # inspect.Parameter.empty when the body must hold the field. None: run(raw_data).
    named_inputs: tuple[tuple[str, Any], ...] | None = None

    @property
    def name(self) -> str:
        return self.path.stem


def prepare_environment(code_dir: Path, model_dir: Path | None) -> None:
    """Make the code folder importable and expose the model folder, Azure ML style."""
    code = str(code_dir)
    if code not in sys.path:
        sys.path.insert(0, code)
    if model_dir is not None:
        os.environ["AZUREML_MODEL_DIR"] = str(model_dir)


def load_script(code_dir: Path, scoring_script: str) -> ScoringScript:
    """Import the script as a module; user code runs here (module top level)."""
    path = (code_dir / scoring_script).resolve()
    if not path.is_file():
        raise ScriptLoadError(f"scoring script not found: {path}")
    module_name = path.stem
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScriptLoadError(f"cannot import scoring script: {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered first so that the script's own pickles/dataclasses resolve it.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    run = getattr(module, "run", None)
    if not callable(run):
        raise ScriptLoadError(f"scoring script {path.name} has no run(raw_data) function")
    return ScoringScript(path=path, module=module, run=run)


def call_init(script: ScoringScript) -> None:
    """Call ``init()`` once, if the script defines one."""
    init = getattr(script.module, "init", None)
    if init is None:
        return
    if not callable(init):
        raise ScriptLoadError(f"init in {script.path.name} is not callable")
    init()


# Where Azure ML's @rawhttp decorator records that it was used (it returns run() unchanged).
_RAWHTTP_MODULES = ("azureml_inference_server_http.api.aml_request", "azureml.contrib.services.aml_request")
_AZMLINFSRV_HINT = "or serve it with Azure ML's own server (environment: inference_server: azmlinfsrv)"


def _rawhttp_requested() -> bool:
    return any(getattr(sys.modules.get(name), "_rawHttpRequested", False) is True for name in _RAWHTTP_MODULES)


def check_run_signature(script: ScoringScript) -> ScoringScript:
    """Refuse at load, not on every request, a run() this server cannot call.

    The server calls ``run(raw_data)`` with the body as a str, adding
    ``request_headers=`` (a dict, Title-Case names) when run() has that parameter,
    as azureml-inference-server-http does.
    """
    name = script.path.name
    if _schema_decorated(script.run):
        return _named_inputs(script)
    if _rawhttp_requested():
        raise ScriptLoadError(
            f"run() in {name} is decorated with @rawhttp: scoregate's model server passes run() the request "
            f"body as a str, not a request object; take the body as a str, {_AZMLINFSRV_HINT}")
    try:
        parameters = list(inspect.signature(script.run).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin, a C extension): call it as is
        return script
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes_headers = any(p.name == "request_headers" and p.kind in (*positional[1:], inspect.Parameter.KEYWORD_ONLY)
                        for p in parameters)
    others = [p for p in parameters if not (takes_headers and p.name == "request_headers")]
    if not others or others[0].kind not in (*positional, inspect.Parameter.VAR_POSITIONAL):
        raise ScriptLoadError(
            f"run() in {name} takes no argument for the request body: define it as run(raw_data) "
            "or run(raw_data, request_headers)")
    missing = [p.name for p in others[1:]
               if p.default is inspect.Parameter.empty and p.kind in (*positional, inspect.Parameter.KEYWORD_ONLY)]
    if missing:
        raise ScriptLoadError(
            f"run() in {name} requires {', '.join(missing)}, which the model server cannot pass: it calls "
            f"run(raw_data) or run(raw_data, request_headers); give them defaults, {_AZMLINFSRV_HINT}")
    return ScoringScript(path=script.path, module=script.module, run=script.run, takes_headers=takes_headers)


def _schema_decorated(run: Callable) -> bool:
    """run() carries inference-schema's @input_schema (the module is loaded only when the
    script imported it)."""
    schema_util = sys.modules.get("inference_schema.schema_util")
    check = getattr(schema_util, "is_schema_decorated", None)
    try:
        return bool(check(run)) if check is not None else False
    except Exception:  # noqa: BLE001 - another version's internals: treat run() as undecorated
        return False


def _named_inputs(script: ScoringScript) -> ScoringScript:
    """An @input_schema run(): called with the JSON body's fields as keyword arguments."""
    name = script.path.name
    if _rawhttp_requested():
        raise ScriptLoadError(f"run() in {name} is decorated with both @rawhttp and @input_schema: keep one")
    parameters = list(inspect.signature(script.run).parameters.values())
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind not in by_name for p in parameters):
        raise ScriptLoadError(f"run() in {name} is decorated with @input_schema, so it is called with the body's "
                              "fields by name: it cannot take positional-only arguments, *args or **kwargs")
    takes_headers = any(p.name == "request_headers" for p in parameters)
    inputs = tuple((p.name, p.default) for p in parameters if p.name != "request_headers")
    if not inputs:
        raise ScriptLoadError(f"run() in {name} takes no argument for the input: it needs one besides "
                              "request_headers")
    return ScoringScript(path=script.path, module=script.module, run=script.run, takes_headers=takes_headers,
                         named_inputs=inputs)
