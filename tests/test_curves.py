"""Training curves: train and validation accuracy per epoch, read from a training log into the result row."""

from __future__ import annotations

import json
import logging
import re

import pytest
from conftest import TINY_MODEL, run_trainer
from fake_sagemaker import jumpstart_log

from model_selection.collection import _from_log
from model_selection.metrics import all_metric_definitions, epoch_curves


def test_curves_of_a_real_local_trainer_log(dataset, tmp_path):
    channels = dataset(classes=3, per_class=4)
    arguments = [argument for name, path in channels.items() for argument in (f"--{name}", str(path))]
    hyperparameters = {**TINY_MODEL, "epochs": "3", "train_only_top_layer": "False"}
    result = run_trainer([*arguments, "--model-dir", str(tmp_path / "model"), "--hyperparameters", json.dumps(hyperparameters)])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())

    curves = epoch_curves(result.stdout)

    assert summary["epochs_run"] == 3
    assert len(curves["accuracy"]) == len(curves["val_accuracy"]) == 3
    # The figures of each "Epoch k/3" line, read independently of the function's regexes.
    epoch_lines = [line for line in result.stdout.splitlines() if re.match(r"Epoch \d+/3 ", line)]
    assert len(epoch_lines) == 3
    for k, line in enumerate(epoch_lines):
        figures = dict(part.split(": ", 1) for part in line.split(" - ")[2:])
        assert curves["accuracy"][k] == float(figures["accuracy"])
        assert curves["val_accuracy"][k] == float(figures["val_accuracy"])
    assert all(0 <= value <= 1 for value in curves["accuracy"] + curves["val_accuracy"])
    best = summary["best_epoch"]
    assert curves["val_accuracy"][best - 1] == pytest.approx(summary["metrics"]["val_accuracy"], abs=1e-6)


def test_curves_of_a_jumpstart_log_ignore_the_best_epoch_summary():
    text = jumpstart_log("resnet_50", 0.001)
    epoch_line = next(line for line in text.splitlines() if line.startswith("- loss: "))
    figures = dict(part.strip().split(": ") for part in epoch_line.split(" - "))

    curves = epoch_curves(text)

    assert curves == {"accuracy": [float(figures["accuracy"])],
                      "val_accuracy": [float(figures["val_accuracy"])]}
    several = "\n".join(["Epoch 1/2", epoch_line, "Epoch 2/2", epoch_line.replace("val_accuracy: ", "val_accuracy: nan")])
    assert len(epoch_curves(several)["accuracy"]) == 1, "a malformed epoch line is skipped, not half-read"
    assert epoch_curves("- accuracy: 0.5\n- val_accuracy: 0.4\n- Test accuracy: 0.3") == {"accuracy": [], "val_accuracy": []}


class Hook:
    def __init__(self, text: str | None):
        self.text, self.reads = text, 0

    def training_log(self, name: str) -> str:
        self.reads += 1
        if self.text is None:
            raise RuntimeError("log group not found")
        return self.text


def test_one_log_read_serves_missing_metrics_and_curves():
    hook = Hook(jumpstart_log("resnet_50", 0.001))
    row = {"test_accuracy": None, "test_throughput": 12.0}
    _from_log(row, "job-1", hook, all_metric_definitions())
    assert hook.reads == 1
    assert row["metrics_from_log"] and row["test_accuracy"] is not None
    assert len(row["epoch_accuracy"]) == len(row["epoch_val_accuracy"]) == 1

    complete = {name: 1.0 for name in ("num_params", "test_accuracy", "test_top_5_accuracy", "test_throughput",
                                       "train_epoch_duration")}
    hook = Hook(jumpstart_log("resnet_50", 0.001))
    _from_log(complete, "job-2", hook, all_metric_definitions())
    assert hook.reads == 1 and "epoch_accuracy" in complete and "metrics_from_log" not in complete


def test_an_unreadable_or_curveless_log_leaves_the_curves_out(caplog):
    row = {"test_accuracy": 0.9}
    hook = Hook(None)
    with caplog.at_level(logging.WARNING, logger="model_selection.collection"):
        _from_log(row, "job-3", hook, all_metric_definitions())
    assert hook.reads == 1 and row == {"test_accuracy": 0.9}
    assert "could not read the log of job-3" in caplog.text

    row = {"test_accuracy": 0.9}
    _from_log(row, "job-4", Hook("no epochs here"), [])
    assert "epoch_accuracy" not in row and "epoch_val_accuracy" not in row
