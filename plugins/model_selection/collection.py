"""One result row per model: the best training job's metrics, or why there are none.

It reads jobs through the SageMaker-shaped client only, so the same code collects from
either backend; the report then reads rows and never talks to a backend.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from model_selection.backends.api import RESOURCE_NOT_FOUND, error_code
from model_selection.metrics import extract_final_metrics, metric_definitions

log = logging.getLogger(__name__)

THROUGHPUT_MEASURES = {
    "local": "per example: model forward passes only, after a warm-up batch, in inference mode (local trainer)",
    "sagemaker": "per batch, as the JumpStart script reports it (not per example)",
}
# What the report needs; if FinalMetricDataList lacks one, the training log is read for it.
REPORT_METRICS = ("num_params", "test_accuracy", "test_top_5_accuracy", "test_throughput", "train_epoch_duration")
JUMPSTART_PREFIXES = ("tensorflow-ic-", "pytorch-ic-", "imagenet-", "tf2-preview-", "bit-m-", "bit-s-")


def model_family(model_id: str) -> str:
    """The architecture family a plot colours by: resnet, efficientnet, mobilenetv3, swin, ..."""
    name = model_id.split(".")[0].lower()
    stripped = True
    while stripped:
        stripped = False
        for prefix in JUMPSTART_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    match = re.match(r"[a-z]+(?:v\d+(?=[_\-]|$))?", name)
    return match.group(0) if match else name


def _local_details(model_artifacts: str | None) -> dict[str, Any]:
    """Weights, device and library versions from a local trainer's metrics.json, if that is where the model is."""
    if not model_artifacts or not model_artifacts.startswith("file://"):
        return {}
    metrics_file = Path(unquote(urlparse(model_artifacts).path)) / "metrics.json"
    if not metrics_file.is_file():
        return {}
    summary = json.loads(metrics_file.read_text())
    environment = summary.get("environment", {})
    return {
        "weights": summary.get("weights"),
        "device": f"{environment.get('device')} ({environment.get('device_name')})",
        "torch_version": environment.get("torch"),
        "timm_version": environment.get("timm"),
        "threads": environment.get("threads"),
        "best_epoch": summary.get("best_epoch"),
        "epochs_run": summary.get("epochs_run"),
        "skipped_images": len(summary.get("skipped_images", [])),
    }


def _missing_from_log(row: dict[str, Any], training_job: str, read_log: Callable[[str], str] | None) -> None:
    """Fill report metrics that FinalMetricDataList lacks from the training log, with the same regexes."""
    missing = [name for name in REPORT_METRICS if row.get(name) is None]
    if not missing or read_log is None:
        return
    try:
        found = extract_final_metrics(read_log(training_job), metric_definitions())
    except Exception as error:  # noqa: BLE001 - a log we cannot read leaves the metric missing, not the row
        log.warning("could not read the log of %s for %s: %s", training_job, missing, error)
        return
    recovered = {name: found[name] for name in missing if name in found}
    row.update(recovered)
    if recovered:
        row["metrics_from_log"] = sorted(recovered)


def collect_row(client: Any, launch: Mapping[str, Any], study: Mapping[str, Any], run_id: str,
                read_log: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Describe the tuning job and its best training job; failures become rows with their reason."""
    model_id = launch["model_id"]
    row: dict[str, Any] = {
        "dataset": study["dataset"]["name"],
        "model_id": model_id,
        "family": model_family(model_id),
        "config_hash": study["config_hash"],
        "backend": study["backend"],
        "tuning_job_name": launch["job_name"],
        "best_training_job_name": None,
        "status": None,
        "failure_reason": None,
        "learning_rate": None,
        "throughput_measure": THROUGHPUT_MEASURES[study["backend"]],
        "instance_type": study["instance_type"] if study["backend"] == "sagemaker" else None,
        "dag_run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    try:
        tuning = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=launch["job_name"])
    except Exception as error:
        if error_code(error) != RESOURCE_NOT_FOUND:
            raise
        return {**row, "status": "NotLaunched", "failure_reason": "the tuning job was never created (its launch failed)"}
    row["status"] = tuning["HyperParameterTuningJobStatus"]
    row["failure_reason"] = tuning.get("FailureReason")
    if tuning.get("HyperParameterTuningEndTime") and tuning.get("CreationTime"):
        row["tuning_duration"] = (tuning["HyperParameterTuningEndTime"] - tuning["CreationTime"]).total_seconds()
    best = tuning.get("BestTrainingJob")
    if row["status"] != "Completed" or not best:
        if row["status"] in ("InProgress", "Stopping"):
            row["failure_reason"] = f"still {row['status']} when metrics were collected"
        return row
    training = client.describe_training_job(TrainingJobName=best["TrainingJobName"])
    row["best_training_job_name"] = best["TrainingJobName"]
    row["learning_rate"] = float(best["TunedHyperParameters"]["learning_rate"])
    row["hyperparameters"] = json.dumps(training.get("HyperParameters", {}), sort_keys=True)
    row.update({metric["MetricName"]: metric["Value"] for metric in training.get("FinalMetricDataList", [])})
    _missing_from_log(row, best["TrainingJobName"], read_log)
    row.update(_local_details((training.get("ModelArtifacts") or {}).get("S3ModelArtifacts")))
    return row
