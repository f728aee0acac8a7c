"""One result row per model: the best training job's metrics, or why there are none, and what every
training job of its tuning job was billed.

It reads jobs through the backend's hook only, so the same code collects from either
backend; the report then reads rows and never talks to a backend.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from model_selection.hooks import NameTaken, check_same_job
from model_selection.metrics import epoch_curves, extract_final_metrics
from model_selection.names import model_family
from model_selection.weights import describe_weights
from model_selection.tuning_request import request_for_launch

log = logging.getLogger(__name__)
# A read the service throttles past the client's own retries is tried this many times in all, 1, 2, 4 s apart.
THROTTLED_READ_TRIES = 4

THROUGHPUT_MEASURES = {
    "local": "per example: model forward passes only, after a warm-up batch, in inference mode (local trainer)",
    "sagemaker": "per batch, as the JumpStart script reports it (not per example)",
}
# What the report needs; if FinalMetricDataList lacks one, the training log is read for it.
REPORT_METRICS = ("num_params", "test_accuracy", "test_top_5_accuracy", "test_throughput", "train_epoch_duration")


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
        "weights": describe_weights(summary.get("weights")),
        "weights_source": (summary.get("weights") or {}).get("source") if isinstance(summary.get("weights"), dict) else None,
        "device": f"{environment.get('device')} ({environment.get('device_name')})",
        "torch_version": environment.get("torch"),
        "timm_version": environment.get("timm"),
        "threads": environment.get("threads"),
        "best_epoch": summary.get("best_epoch"),
        "epochs_run": summary.get("epochs_run"),
        "skipped_images": len(summary.get("skipped_images", [])),
        "test_examples": (summary.get("test_timing") or {}).get("timed_examples"),
    }


def _read_log(training_job: str, hook: Any) -> str | None:
    """The training job's log, or None (with a warning) when it cannot be read: never fails the row."""
    try:
        return hook.training_log(training_job)
    except Exception as error:  # noqa: BLE001 - a log we cannot read leaves figures missing, not the row
        log.warning("could not read the log of %s: %s", training_job, error)
        return None


def _missing_from_log(row: dict[str, Any], log_text: str | None, definitions: list[dict[str, str]]) -> None:
    """Fill report metrics that FinalMetricDataList lacks from the training log, with the request's own regexes."""
    missing = [name for name in REPORT_METRICS if row.get(name) is None]
    if not missing or not definitions:
        return
    if log_text is None:
        log.warning("%s left missing: the training log could not be read", missing)
        return
    found = extract_final_metrics(log_text, definitions)
    recovered = {name: found[name] for name in missing if name in found}
    row.update(recovered)
    if recovered:
        row["metrics_from_log"] = sorted(recovered)


def _curves_from_log(row: dict[str, Any], log_text: str | None) -> None:
    """`epoch_accuracy` and `epoch_val_accuracy`: train and validation accuracy per epoch (empty lists not stored)."""
    if log_text is None:
        return
    for name, values in epoch_curves(log_text).items():
        if values:
            row[f"epoch_{name}"] = values


def _from_log(row: dict[str, Any], training_job: str, hook: Any, definitions: list[dict[str, str]]) -> None:
    """One read of the training log serves both the missing metrics and the training curves."""
    log_text = _read_log(training_job, hook)
    _missing_from_log(row, log_text, definitions)
    _curves_from_log(row, log_text)


def _read(call: Callable[[str], Any], name: str) -> Any:
    """`call(name)`, tried again when throttled: a throttle must not cost a finished job its row."""
    from model_selection.hooks import Throttled

    for attempt in range(THROTTLED_READ_TRIES):
        try:
            return call(name)
        except Throttled as error:
            if attempt == THROTTLED_READ_TRIES - 1:
                raise
            log.warning("reading %s was throttled (%s); trying again in %d s", name, error, 2**attempt)
            time.sleep(2**attempt)
    return None


ENDED_TRAINING = ("Completed", "Failed", "Stopped")


def billed_seconds(training: Mapping[str, Any]) -> float | None:
    """What SageMaker bills for one training job: BillableTimeInSeconds; 0 for one that ended without ever
    starting to train (nothing to bill); None where that is not known (still running, or not reported)."""
    if training.get("BillableTimeInSeconds") is not None:
        return float(training["BillableTimeInSeconds"])
    if training.get("TrainingJobStatus") in ENDED_TRAINING and not training.get("TrainingStartTime"):
        return 0.0
    return None


def _total(values: list[float | None]) -> float | None:
    return None if any(value is None for value in values) else float(sum(values))


def training_job_billing(trainings: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The row's cost figures over every training job of its tuning job.

    `billable_seconds` and `training_seconds` are sums (None when any job's is unknown: an unknown part
    must not make the cost look smaller). `spot_savings` is 1 - billable / training over the jobs that ran
    with managed spot training and report both, as SageMaker defines the savings.
    """
    spot = [training for training in trainings if training.get("EnableManagedSpotTraining")
            and training.get("BillableTimeInSeconds") is not None and training.get("TrainingTimeInSeconds")]
    figures: dict[str, Any] = {
        "training_jobs": len(trainings),
        "billable_seconds": _total([billed_seconds(training) for training in trainings]),
        "training_seconds": _total([training.get("TrainingTimeInSeconds") for training in trainings]),
    }
    if spot:
        figures["spot_savings"] = 1 - (sum(training["BillableTimeInSeconds"] for training in spot)
                                       / sum(training["TrainingTimeInSeconds"] for training in spot))
    return figures


def _billing(hook: Any, tuning_job_name: str) -> dict[str, Any]:
    """`training_job_billing` of every training job the tuning job started; all None (with a warning) when they
    cannot be read: a cost we cannot read leaves the cost unknown, not the row."""
    try:
        summaries = _read(hook.list_training_jobs, tuning_job_name)
        trainings = [_read(hook.describe_training_job, summary["TrainingJobName"]) for summary in summaries]
        if None in trainings:
            raise LookupError("a training job it listed was not found")
        return training_job_billing(trainings)
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("could not read the training jobs of %s for their cost: %s", tuning_job_name, error)
        return {"training_jobs": None, "billable_seconds": None, "training_seconds": None}


def collect_row(hook: Any, launch: Mapping[str, Any], study_settings: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Describe the tuning job and its best training job, and bill every training job it started; any failure
    to read the jobs becomes the row's reason."""
    model_id = launch["model_id"]
    backend = study_settings["backend"]
    row: dict[str, Any] = {
        "dataset": study_settings["dataset"]["name"],
        "model_id": model_id,
        "family": model_family(model_id),
        "config_hash": study_settings["config_hash"],
        "backend": backend,
        "model_version": launch.get("model_version"),
        "tuning_job_name": launch["job_name"],
        "best_training_job_name": None,
        "status": None,
        "failure_reason": None,
        "learning_rate": None,
        "throughput_measure": THROUGHPUT_MEASURES[backend],
        "instance_type": study_settings["instance_type"] if backend == "sagemaker" else None,
        "test_examples": study_settings.get("test_examples"),
        "dag_run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        **(launch.get("screen") or {}),  # the screen's scores, when this run screened the model in
        **(launch.get("twin") or {}),  # a JumpStart id on the local backend: timm_twin and twin_kind (include/model_maps)
    }
    try:
        tuning = _read(hook.describe, launch["job_name"])
        if tuning is None:
            return {**row, "status": "NotLaunched", "failure_reason": "the tuning job was never created (its launch failed)"}
        try:
            check_same_job(tuning, request_for_launch(launch))
        except NameTaken as error:  # its launch refused to attach: that job's results are not this model's
            return {**row, "status": "NotLaunched", "failure_reason": str(error)}
        row["status"] = tuning["HyperParameterTuningJobStatus"]
        row["failure_reason"] = tuning.get("FailureReason")
        if tuning.get("HyperParameterTuningEndTime") and tuning.get("CreationTime"):
            row["tuning_duration"] = (tuning["HyperParameterTuningEndTime"] - tuning["CreationTime"]).total_seconds()
        best = tuning.get("BestTrainingJob")
        completed = row["status"] == "Completed" and best
        training = _read(hook.describe_training_job, best["TrainingJobName"]) if completed else None
        if completed and training is None:
            raise LookupError(f"its best training job {best['TrainingJobName']} was not found")
    except Exception as error:  # noqa: BLE001 - one model's unreadable job must not lose the other rows
        log.warning("could not read the jobs of %s: %s", model_id, error)
        # Unknown, not the tuning job's Completed: a Completed row would make the next plan skip the model
        # for good with no metrics; an Unknown one is read again (same job name) by the next run.
        known = f" (the tuning job is {row['status']})" if row["status"] else ""
        return {**row, "status": "Unknown",
                "failure_reason": f"its jobs could not be read{known}: {type(error).__name__}: {error}"}
    row.update(_billing(hook, launch["job_name"]))  # failed and stopped tuning jobs' training jobs cost too
    if training is None:
        if row["status"] in ("InProgress", "Stopping"):
            row["failure_reason"] = f"still {row['status']} when metrics were collected"
        return row
    row["best_training_job_name"] = best["TrainingJobName"]
    row["learning_rate"] = float(best["TunedHyperParameters"]["learning_rate"])
    row["hyperparameters"] = json.dumps(training.get("HyperParameters", {}), sort_keys=True)
    row["model_artifacts"] = (training.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    row.update({metric["MetricName"]: metric["Value"] for metric in training.get("FinalMetricDataList", [])})
    definitions = tuning.get("TrainingJobDefinition", {}).get("AlgorithmSpecification", {}).get("MetricDefinitions", [])
    _from_log(row, best["TrainingJobName"], hook, definitions)
    row.update(_local_details(row["model_artifacts"]))
    return row
