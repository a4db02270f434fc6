"""The Iris demo scoring scripts: right answers, clear refusals."""

import importlib.util
import json
from pathlib import Path

import pytest

IRIS = Path(__file__).resolve().parents[3] / "examples" / "iris"
SAMPLE = (IRIS / "sample-request.json").read_text()


def load_script(deployment: str, monkeypatch):
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(IRIS / deployment / "model"))
    spec = importlib.util.spec_from_file_location(f"iris_{deployment}_score", IRIS / deployment / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    return module


@pytest.fixture(params=["blue", "green"])
def script(request, monkeypatch):
    return load_script(request.param, monkeypatch)


def test_sample_request_gives_the_three_species_in_order(script):
    result = script.run(SAMPLE)
    assert result["predictions"] == ["setosa", "versicolor", "virginica"]
    assert result["model"] in {"logistic-regression", "decision-tree"}
    for probs, predicted in zip(result["probabilities"], range(3)):
        assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-4
        assert max(range(3), key=probs.__getitem__) == predicted


def test_model_names(monkeypatch):
    assert load_script("blue", monkeypatch).run(SAMPLE)["model"] == "logistic-regression"
    assert load_script("green", monkeypatch).run(SAMPLE)["model"] == "decision-tree"


def test_rows_as_objects_match_rows_as_lists(script):
    rows = json.loads(SAMPLE)["data"]
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    as_objects = json.dumps({"data": [dict(zip(names, row)) for row in rows]})
    assert script.run(as_objects) == script.run(SAMPLE)


def test_output_is_json_serializable(script):
    json.dumps(script.run(SAMPLE))


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("not json", "not valid JSON"),
        ("{}", "expected"),
        ('{"data": []}', "at least one row"),
        ('{"data": [[5.1, 3.5, 1.4]]}', "has 3 values"),
        ('{"data": [[5.1, 3.5, 1.4, "wide"]]}', "must be a number"),
        ('{"data": [[5.1, 3.5, 1.4, true]]}', "must be a number"),
        ('{"data": [[5.1, 3.5, 1.4, NaN]]}', "finite"),
        ('{"data": [{"sepal_length": 5.1}]}', "missing sepal_width"),
        ('{"data": ["5.1,3.5,1.4,0.2"]}', "must be a list of 4 numbers"),
    ],
)
def test_invalid_input_raises_value_error(script, raw, fragment):
    with pytest.raises(ValueError, match=fragment):
        script.run(raw)


def test_trained_models_are_accurate_on_the_data_set(script):
    lines = (IRIS / "data" / "iris.csv").read_text().splitlines()
    assert lines[0] == "sepal_length,sepal_width,petal_length,petal_width,species"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 150
    assert {s: sum(r[4] == s for r in rows) for s in ("setosa", "versicolor", "virginica")} == {
        "setosa": 50, "versicolor": 50, "virginica": 50}
    result = script.run(json.dumps({"data": [[float(v) for v in r[:4]] for r in rows]}))
    accuracy = sum(p == r[4] for p, r in zip(result["predictions"], rows)) / len(rows)
    assert accuracy > 0.95
