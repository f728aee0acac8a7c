"""The two kinds of job the DAG launches and waits for, over one hook: a model's tuning job and the
screen's one training job. The launch operator, the sensor and the trigger are written once; a kind says
which of the hook's calls and which status field stand for its jobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from model_selection import job_status


@dataclasses.dataclass(frozen=True)
class JobKind:
    name: str  # what a trigger serializes
    noun: str  # for messages: "tuning job", "training job"
    status_key: str  # the description's status field
    describe: Callable[[Any, str], dict[str, Any] | None]  # (hook, job name) -> description, None when not found
    stop: Callable[[Any, str], bool]  # (hook, job name) -> whether a stop was asked
    outcome: Callable[[dict[str, Any]], tuple[str, str | None]]
    progress: Callable[[dict[str, Any]], str]
    console_links: bool  # the lane's SageMaker console links (tuning job, best training job, its logs)


TUNING = JobKind(
    name="tuning", noun="tuning job", status_key="HyperParameterTuningJobStatus",
    describe=lambda hook, name: hook.describe(name), stop=lambda hook, name: hook.stop(name),
    outcome=job_status.tuning_job_outcome, progress=job_status.progress, console_links=True,
)
TRAINING = JobKind(
    name="training", noun="training job", status_key="TrainingJobStatus",
    describe=lambda hook, name: hook.describe_training_job(name), stop=lambda hook, name: hook.stop_training_job(name),
    outcome=job_status.training_job_outcome, progress=job_status.training_job_progress,
    console_links=False,
)
KINDS = {kind.name: kind for kind in (TUNING, TRAINING)}
