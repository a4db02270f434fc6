"""Iris scoring script, green deployment: a depth-3 decision tree.

Azure ML contract: init() once at startup, run(raw_data) per request. Pure
standard library (json + math) so the replica needs no extra packages.
"""

import json
import math
import os

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
model = None


def init():
    # The tree is nested JSON: inner nodes split on row[feature] <= threshold, leaves hold counts.
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json")
    with open(path, encoding="utf-8") as f:
        model = json.load(f)


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value}")
    return float(value)


def _row(item, index):
    if isinstance(item, dict):
        missing = [name for name in FEATURES if name not in item]
        if missing:
            raise ValueError(f"data[{index}] is missing {', '.join(missing)}")
        return [_number(item[name], f"data[{index}].{name}") for name in FEATURES]
    if isinstance(item, list):
        if len(item) != len(FEATURES):
            raise ValueError(f"data[{index}] has {len(item)} values; expected 4 ({', '.join(FEATURES)})")
        return [_number(v, f"data[{index}][{i}]") for i, v in enumerate(item)]
    raise ValueError(f"data[{index}] must be a list of 4 numbers or an object with {', '.join(FEATURES)}")


def parse(raw_data):
    """{"data": [[...4 numbers...], ...]} or rows as objects; also a bare list of rows."""
    try:
        payload = json.loads(raw_data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"request body is not valid JSON: {exc}") from None
    rows = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not rows:
        raise ValueError('expected {"data": [[sepal_length, sepal_width, petal_length, petal_width], ...]}'
                         " with at least one row")
    return [_row(item, i) for i, item in enumerate(rows)]


def _leaf(row):
    node = model["tree"]
    while "class" not in node:
        node = node["left"] if row[node["feature"]] <= node["threshold"] else node["right"]
    return node


def run(raw_data):
    classes = model["classes"]
    predictions, probabilities = [], []
    for row in parse(raw_data):
        leaf = _leaf(row)
        total = sum(leaf["counts"])
        predictions.append(leaf["class"])
        probabilities.append([round(c / total, 6) for c in leaf["counts"]])
    return {"predictions": predictions, "probabilities": probabilities, "model": "decision-tree"}
