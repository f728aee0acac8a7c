"""Metric names and the regular expressions SageMaker's tuner reads from a training log.

The lines and expressions are those of the JumpStart TensorFlow image-classification
script and the public benchmarking notebook, so a job run by either backend is read
the same way, and results compare with what SageMaker users already have.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

NUMBER = r"([0-9\.]+)"

MULTICLASS_METRICS = ("loss", "accuracy")
TOP_K_METRICS = ("top_5_accuracy",)
BINARY_METRICS = (
    "loss",
    "accuracy",
    "true_pos",
    "false_pos",
    "true_neg",
    "false_neg",
    "precision",
    "recall",
    "auc",
    "prc",
)
TOP_5_MIN_CLASSES = 6

# Figures printed once per job, by the notebook's metric name.
SUMMARY_METRIC_PATTERNS = {
    "num_params": "- Number of parameters: ",
    "num_trainable_params": "- Number of trainable parameters: ",
    "num_non_trainable_params": "- Number of non-trainable parameters: ",
    "train_duration": "- Total training duration: ",
    "train_epoch_duration": "- Average training duration per epoch: ",
    "test_evaluation_latency": "- Test evaluation latency: ",
    "test_latency_per_sample": "- Average test latency per sample: ",
    "test_throughput": "- Average test throughput: ",
}


def dataset_metric_names(num_classes: int, binary: bool) -> tuple[str, ...]:
    """Metrics computed on each split: binary ones, or loss/accuracy (+top-5 from six classes)."""
    if binary:
        return BINARY_METRICS
    if num_classes >= TOP_5_MIN_CLASSES:
        return MULTICLASS_METRICS + TOP_K_METRICS
    return MULTICLASS_METRICS


def _definitions(dataset_metrics: Iterable[str]) -> list[dict[str, str]]:
    definitions = [{"Name": name, "Regex": prefix + NUMBER} for name, prefix in SUMMARY_METRIC_PATTERNS.items()]
    for metric in dataset_metrics:
        definitions += [
            {"Name": f"train_{metric}", "Regex": f"- {metric}: {NUMBER}"},
            {"Name": f"val_{metric}", "Regex": f"- val_{metric}: {NUMBER}"},
            {"Name": f"test_{metric}", "Regex": f"- Test {metric}: {NUMBER}"},
        ]
    return definitions


def max_metric_definitions() -> int:
    """How many `MetricDefinitions` one training-job definition may carry, from SageMaker's service model."""
    from model_selection.backends.api import member_limit

    return member_limit("HyperParameterAlgorithmSpecification", "MetricDefinitions")


def metric_definitions(num_classes: int, binary: bool) -> list[dict[str, str]]:
    """SageMaker `MetricDefinitions` for exactly the figures the trainer prints for this problem type.

    The summary figures, then train/val/test of `dataset_metric_names(num_classes, binary)`.
    Raises ValueError rather than build more definitions than SageMaker accepts.
    """
    definitions = _definitions(dataset_metric_names(num_classes, binary))
    cap = max_metric_definitions()
    if len(definitions) > cap:
        raise ValueError(f"{len(definitions)} metric definitions for a {num_classes}-class "
                         f"{'binary ' if binary else ''}problem; SageMaker takes at most {cap}")
    return definitions


def all_metric_definitions() -> list[dict[str, str]]:
    """Definitions of every figure any problem type prints: for reading a log, never for a request.

    They are one more than SageMaker's MetricDefinitions maximum, so a request carrying them is refused.
    """
    return _definitions(dict.fromkeys(BINARY_METRICS + MULTICLASS_METRICS + TOP_K_METRICS))


def extract_final_metrics(log_text: str, definitions: Iterable[Mapping[str, str]]) -> dict[str, float]:
    """What SageMaker's `FinalMetricDataList` holds: each regex's last match in the log."""
    found: dict[str, float] = {}
    for definition in definitions:
        matches = re.findall(definition["Regex"], log_text)
        if matches:
            last = matches[-1]
            try:
                found[definition["Name"]] = float(last if isinstance(last, str) else last[0])
            except ValueError:
                continue
    return found


def format_number(value: float | int) -> str:
    """A plain decimal (never exponent form, which `[0-9\\.]+` would misread)."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not math.isfinite(value):
        raise ValueError(f"metric value {value!r} is not a finite number")
    return np.format_float_positional(float(value), precision=8, unique=True, fractional=False, trim="-")


# One epoch's line: `- loss: x - accuracy: x - top_5_accuracy: x - val_loss: x - val_accuracy: x`.
_EPOCH_FIGURES = {name: re.compile(rf"(?:^|\s)- {name}: {NUMBER}(?=\s|$)") for name in ("accuracy", "val_accuracy")}


def epoch_curves(log_text: str) -> dict[str, list[float]]:
    """Train and validation accuracy per epoch, in order: {"accuracy": [...], "val_accuracy": [...]}.

    An epoch line is one that carries both `- accuracy: x` and `- val_accuracy: x`; other lines
    (the best epoch's one-figure-a-line summary, test figures) are ignored, so both lists have one
    value per epoch line.
    """
    curves: dict[str, list[float]] = {name: [] for name in _EPOCH_FIGURES}
    for line in log_text.splitlines():
        found = {name: pattern.search(line) for name, pattern in _EPOCH_FIGURES.items()}
        if not all(found.values()):
            continue
        try:
            values = {name: float(match.group(1)) for name, match in found.items()}
        except ValueError:
            continue
        for name, value in values.items():
            curves[name].append(value)
    return curves
