"""What a `DescribeHyperParameterTuningJob` answer means for a task waiting on it."""

from __future__ import annotations

from typing import Any

RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
STOPPED = "stopped"


def tuning_job_outcome(description: dict[str, Any]) -> tuple[str, str | None]:
    """(outcome, reason): Completed is success; Failed and Stopped are not, with the job's reason."""
    status = description["HyperParameterTuningJobStatus"]
    name = description.get("HyperParameterTuningJobName", "the tuning job")
    if status == "Completed":
        return SUCCESS, None
    if status == "Failed":
        return FAILED, f"{name} failed: {description.get('FailureReason') or 'no reason given'}"
    if status == "Stopped":
        return STOPPED, f"{name} was stopped{': ' + description['FailureReason'] if description.get('FailureReason') else ''}"
    return RUNNING, None


def progress(description: dict[str, Any]) -> str:
    """One log line of where a tuning job stands."""
    counters = description.get("TrainingJobStatusCounters", {})
    best = (description.get("BestTrainingJob") or {}).get("FinalHyperParameterTuningJobObjectiveMetric")
    best_text = f", best {best['MetricName']}={best['Value']}" if best else ""
    return (f"{description['HyperParameterTuningJobName']}: {description['HyperParameterTuningJobStatus']}, "
            f"training jobs {', '.join(f'{k} {v}' for k, v in counters.items() if v)}{best_text}")
