"""Load a user's scoring script and call its ``init()``.

Kept apart from the HTTP code so that "the script failed to load" can be told
from "the server failed" (the controller reports the first as an init failure).
"""

from __future__ import annotations

import importlib.util
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
