"""The batch example's scoring script (examples/iris-batch/code/batch_score.py), run as a
worker runs it: init() with AZUREML_MODEL_DIR, then run(mini_batch)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.support.gateway import REPO

EXAMPLE = REPO / "examples" / "iris-batch"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(EXAMPLE / "code" / ".." / ".." / "iris" / "blue" / "model"))
    spec = importlib.util.spec_from_file_location("example_batch_score", EXAMPLE / "code" / "batch_score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    return module


def test_files_and_rows_are_scored(script, tmp_path) -> None:
    flower = tmp_path / "flower.json"
    flower.write_text(json.dumps({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}))
    first, second = script.run([str(flower), [6.7, 3.0, 5.2, 2.3]])
    assert first.startswith("setosa ") and second.startswith("virginica ")


def test_an_item_it_cannot_score_is_not_echoed_in_the_error(script, tmp_path) -> None:
    """A string sent inline is opened as a file: what the file holds must not come back in the
    job's errors, which whoever submitted the job reads."""
    private = tmp_path / "private.json"
    private.write_text(json.dumps(["db-password-hunter2", 1]))
    with pytest.raises(ValueError) as failure:
        script.run([str(private)])
    assert "hunter2" not in str(failure.value) and "a list of 2 values" in str(failure.value)
    with pytest.raises(ValueError) as failure:
        script.run([{"sepal_length": "hunter2", "sepal_width": 1, "petal_length": 1, "petal_width": 1}])
    assert "hunter2" not in str(failure.value) and "must be numbers" in str(failure.value)
    with pytest.raises(ValueError, match="missing features: sepal_width, petal_width"):
        script.run([{"sepal_length": 1, "petal_length": 1, "hunter2": 1}])
