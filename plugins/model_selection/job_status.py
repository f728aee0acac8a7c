"""What a `DescribeHyperParameterTuningJob` or `DescribeTrainingJob` answer means for a task waiting on it."""

from __future__ import annotations

from typing import Any

RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
STOPPED = "stopped"


def _outcome(status: str, name: str, reason: str | None) -> tuple[str, str | None]:
    """Completed is success; Failed and Stopped are not, with the job's reason; anything else is still running."""
    if status == "Completed":
        return SUCCESS, None
    if status == "Failed":
        return FAILED, f"{name} failed: {reason or 'no reason given'}"
    if status == "Stopped":
        return STOPPED, f"{name} was stopped{': ' + reason if reason else ''}"
    return RUNNING, None


def tuning_job_outcome(description: dict[str, Any]) -> tuple[str, str | None]:
    """(outcome, reason) of a tuning job."""
    return _outcome(description["HyperParameterTuningJobStatus"],
                    description.get("HyperParameterTuningJobName", "the tuning job"), description.get("FailureReason"))


def training_job_outcome(description: dict[str, Any]) -> tuple[str, str | None]:
    """(outcome, reason) of a training job (the screen's): the same rules, on TrainingJobStatus."""
    return _outcome(description["TrainingJobStatus"], description.get("TrainingJobName", "the training job"),
                    description.get("FailureReason"))


def progress(description: dict[str, Any]) -> str:
    """One log line of where a tuning job stands."""
    counters = description.get("TrainingJobStatusCounters", {})
    best = (description.get("BestTrainingJob") or {}).get("FinalHyperParameterTuningJobObjectiveMetric")
    best_text = f", best {best['MetricName']}={best['Value']}" if best else ""
    return (f"{description['HyperParameterTuningJobName']}: {description['HyperParameterTuningJobStatus']}, "
            f"training jobs {', '.join(f'{k} {v}' for k, v in counters.items() if v)}{best_text}")


def training_job_progress(description: dict[str, Any]) -> str:
    """One log line of where a training job stands: its secondary status (where it says more than the status)
    and the service's last message (e.g. "Downloading - Downloading input data"); once ended, the seconds billed."""
    status = description["TrainingJobStatus"]
    transitions = description.get("SecondaryStatusTransitions") or []
    phase = [part for part in (description.get("SecondaryStatus"), transitions[-1].get("StatusMessage") if transitions
                               else None) if part and part != status]
    billed = description.get("BillableTimeInSeconds")
    return (f"{description['TrainingJobName']}: {status}" + (f" ({' - '.join(phase)})" if phase else "")
            + (f", {billed} s billed" if billed is not None else ""))
