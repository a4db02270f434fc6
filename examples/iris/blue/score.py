"""Iris scoring script, blue deployment: softmax logistic regression.

Azure ML contract: init() once at startup, run(raw_data) per request. Pure
standard library (json + math) so the replica needs no extra packages.
"""

import json
import math
import os

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
model = None


def init():
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


def _softmax(logits):
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    total = sum(exps)
    return [e / total for e in exps]


def run(raw_data):
    classes = model["classes"]
    predictions, probabilities = [], []
    for row in parse(raw_data):
        xs = [(v - m) / s for v, m, s in zip(row, model["mean"], model["std"])]
        logits = [b + sum(w * x for w, x in zip(weights, xs))
                  for weights, b in zip(model["weights"], model["bias"])]
        if not all(math.isfinite(z) for z in logits):
            raise ValueError(f"feature values out of range: {row}")
        probs = _softmax(logits)
        best = max(range(len(probs)), key=probs.__getitem__)
        predictions.append(classes[best])
        probabilities.append([round(p, 6) for p in probs])
    return {"predictions": predictions, "probabilities": probabilities, "model": "logistic-regression"}
