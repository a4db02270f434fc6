"""Train the two Iris demo models and write them as plain JSON.

Dev-only: needs numpy (``pip install numpy``); the scoring scripts that read the
JSON need nothing beyond the standard library, so serving stays dependency-free.

    python examples/iris/train.py

writes ``blue/model/model.json`` (softmax logistic regression) and
``green/model/model.json`` (a depth-3 Gini decision tree) and prints the
training accuracy of each.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "iris.csv"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SEED = 20240601
DIGITS = 8  # keep the JSON readable and stable across platforms


def load() -> tuple[np.ndarray, np.ndarray, list[str]]:
    with DATA.open(newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["species"] for r in rows})
    x = np.array([[float(r[name]) for name in FEATURES] for r in rows])
    y = np.array([classes.index(r["species"]) for r in rows])
    return x, y, classes


def _round(values: np.ndarray) -> list:
    return np.round(values, DIGITS).tolist()


# --- blue: multinomial logistic regression --------------------------------

def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int = 5000,
                   learning_rate: float = 0.1, l2: float = 1e-3) -> dict:
    """Full-batch gradient descent on cross-entropy, features standardized."""
    rng = np.random.default_rng(SEED)
    mean, std = x.mean(axis=0), x.std(axis=0)
    xs = (x - mean) / std
    onehot = np.eye(n_classes)[y]
    w = rng.normal(scale=0.01, size=(x.shape[1], n_classes))
    b = np.zeros(n_classes)
    for _ in range(epochs):
        error = softmax(xs @ w + b) - onehot  # d(loss)/d(logits), per sample
        w -= learning_rate * (xs.T @ error / len(y) + l2 * w)
        b -= learning_rate * error.mean(axis=0)
    # Stored class-major (one weight row per class) for easy pure-Python scoring.
    return {"weights": _round(w.T), "bias": _round(b), "mean": _round(mean), "std": _round(std)}


def predict_logistic(model: dict, x: np.ndarray) -> np.ndarray:
    xs = (x - np.array(model["mean"])) / np.array(model["std"])
    return softmax(xs @ np.array(model["weights"]).T + np.array(model["bias"])).argmax(axis=1)


# --- green: CART decision tree ----------------------------------------------

def gini(counts: np.ndarray) -> float:
    total = counts.sum()
    return 0.0 if total == 0 else 1.0 - float(((counts / total) ** 2).sum())


def best_split(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[int, float] | None:
    """The (feature, threshold) with the lowest weighted Gini; ties keep the first."""
    best, best_score = None, gini(np.bincount(y, minlength=n_classes))
    for feature in range(x.shape[1]):
        values = np.unique(x[:, feature])
        for lo, hi in zip(values[:-1], values[1:]):
            threshold = round(float(lo + hi) / 2, 6)
            left = x[:, feature] <= threshold
            score = (left.sum() * gini(np.bincount(y[left], minlength=n_classes))
                     + (~left).sum() * gini(np.bincount(y[~left], minlength=n_classes))) / len(y)
            if score < best_score - 1e-12:
                best, best_score = (feature, threshold), score
    return best


def grow(x: np.ndarray, y: np.ndarray, classes: list[str], depth: int) -> dict:
    counts = np.bincount(y, minlength=len(classes))
    split = None if depth == 0 or gini(counts) == 0.0 else best_split(x, y, len(classes))
    if split is None:
        return {"class": classes[int(counts.argmax())], "counts": counts.tolist()}
    feature, threshold = split
    left = x[:, feature] <= threshold
    return {
        "feature": feature,
        "feature_name": FEATURES[feature],
        "threshold": threshold,
        "left": grow(x[left], y[left], classes, depth - 1),
        "right": grow(x[~left], y[~left], classes, depth - 1),
    }


def predict_tree(node: dict, row: np.ndarray, classes: list[str]) -> int:
    while "class" not in node:
        node = node["left"] if row[node["feature"]] <= node["threshold"] else node["right"]
    return classes.index(node["class"])


def write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def main() -> None:
    x, y, classes = load()
    common = {"classes": classes, "features": FEATURES, "trained_on": "examples/iris/data/iris.csv"}

    logistic = train_logistic(x, y, len(classes))
    acc_blue = float((predict_logistic(logistic, x) == y).mean())
    write(HERE / "blue" / "model" / "model.json",
          {"model": "logistic-regression", **common, **logistic, "training_accuracy": round(acc_blue, 4)})

    tree = grow(x, y, classes, depth=3)
    acc_green = float((np.array([predict_tree(tree, row, classes) for row in x]) == y).mean())
    write(HERE / "green" / "model" / "model.json",
          {"model": "decision-tree", **common, "max_depth": 3, "criterion": "gini",
           "tree": tree, "training_accuracy": round(acc_green, 4)})

    print(f"blue  (logistic regression): training accuracy {acc_blue:.4f}")
    print(f"green (decision tree, depth 3): training accuracy {acc_green:.4f}")


if __name__ == "__main__":
    main()
