"""A SageMaker-shaped client whose tuning and training jobs run on this machine.

Method names, request and response shapes and error codes are boto3's SageMaker
client's for the calls this project makes, so operators, sensors and metrics code
have one path for both backends. `create_hyper_parameter_tuning_job` returns at once;
a detached supervisor process (`model_selection.local.supervisor`) runs the trials.
`create_training_job` too: a detached runner (`model_selection.local.training_job`)
runs the job's program as SageMaker's training toolkit does.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from model_selection.backends.api import (
    RESOURCE_IN_USE,
    RESOURCE_NOT_FOUND,
    VALIDATION,
    client_error,
    validate_request,
)
from model_selection.local.jobstore import JobStore, now, read_json
from model_selection.local.strategy import StrategyError, plan_trials
from model_selection.local.supervisor import (
    PYTHON_VARIABLE,
    SUPERVISOR_START_SECONDS,
    kill_process_group,
    local_path,
    process_environment,
)
from model_selection.local.training_job import (
    PROGRAM_HYPERPARAMETER,
    SUBMIT_DIRECTORY_HYPERPARAMETER,
    archive_members,
)

LOCAL_ACCOUNT_ARN = "arn:aws:sagemaker:local:000000000000"
LOCAL_CHANNELS = ("training", "validation", "test")
ACTIVE = ("InProgress", "Stopping")
TIME_FIELDS = ("CreationTime", "HyperParameterTuningEndTime", "LastModifiedTime", "TrainingStartTime",
               "TrainingEndTime", "Timestamp")
# What DescribeTrainingJob gives back of a CreateTrainingJob request, as the request had it.
DESCRIBED_REQUEST_FIELDS = (
    "HyperParameters", "AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
    "VpcConfig", "StoppingCondition", "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining", "CheckpointConfig", "Environment", "RetryStrategy",
)


def _arn(kind: str, name: str) -> str:
    return f"{LOCAL_ACCOUNT_ARN}:{kind}/{name.lower()}"


def _with_datetimes(value: Any) -> Any:
    """boto3 returns timestamps as timezone-aware datetimes; the state files hold ISO strings."""
    if isinstance(value, dict):
        return {key: (dt.datetime.fromisoformat(item) if key in TIME_FIELDS and isinstance(item, str)
                      else _with_datetimes(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_datetimes(item) for item in value]
    return value


def _supervised(state: dict[str, Any]) -> bool:
    """True while the job's supervisor (a training job's runner) runs, or is still starting (no pid
    recorded yet, within the grace). A tuning job's trial has none: its tuning job's supervisor runs it."""
    if state.get("SupervisorPid") is None:
        return time.time() < state.get("SupervisorStartBy", 0)
    return _process_alive(state["SupervisorPid"], state.get("SupervisorCreateTime"))


def _process_alive(pid: int | None, create_time: float | None) -> bool:
    """True while that very process runs (a reused pid or a zombie does not count)."""
    import psutil

    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            create_time is None or abs(process.create_time() - create_time) < 1.0
        )
    except psutil.NoSuchProcess:
        return False


class LocalSageMakerClient:
    """The subset of boto3's SageMaker client this project uses, backed by a job store."""

    def __init__(self, jobs_root: Path | str | None = None):
        self.store = JobStore(jobs_root)

    # -- create -----------------------------------------------------------------------------
    def create_hyper_parameter_tuning_job(self, **request: Any) -> dict[str, Any]:
        operation = "CreateHyperParameterTuningJob"
        validate_request(operation, request, local_uris=True)
        self._check_runnable(request)
        name = request["HyperParameterTuningJobName"]
        arn = _arn("hyper-parameter-tuning-job", name)
        state = {
            "HyperParameterTuningJobName": name,
            "HyperParameterTuningJobArn": arn,
            "HyperParameterTuningJobStatus": "InProgress",
            "CreationTime": now(),
            "LastModifiedTime": now(),
            "TrainingJobNames": [],
            "SupervisorStartBy": time.time() + SUPERVISOR_START_SECONDS,
        }
        if not self.store.create_tuning_job(name, request, state):
            raise client_error(RESOURCE_IN_USE, f"Hyperparameter tuning job {name} already exists", operation)
        folder = self.store.tuning_dir(name)
        problem = self._detach("model_selection.local.supervisor", folder)
        if problem:
            self._fail_if_unsupervised(folder, f"the supervisor did not start: {problem}")
        return {"HyperParameterTuningJobArn": arn}

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        """A training job of its own (not a tuning job's trial): its program runs detached, as SageMaker's
        training toolkit runs it (`model_selection.local.training_job`)."""
        operation = "CreateTrainingJob"
        validate_request(operation, request, local_uris=True)
        self._check_runnable_training_job(request)
        name = request["TrainingJobName"]
        arn = _arn("training-job", name)
        state = {
            "TrainingJobName": name,
            "TrainingJobArn": arn,
            "TrainingJobStatus": "InProgress",
            "SecondaryStatus": "Starting",
            "CreationTime": now(),
            "LastModifiedTime": now(),
            "SupervisorStartBy": time.time() + SUPERVISOR_START_SECONDS,
        }
        if not self.store.create_standalone_training_job(name, request, state):
            raise client_error(RESOURCE_IN_USE, "Training job names must be unique within an AWS account and region, "
                                                f"and a training job with this name already exists ({arn})", operation)
        folder = self.store.training_dir(name)
        problem = self._detach("model_selection.local.training_job", folder)
        if problem:
            self._fail_orphaned_training_job(folder, f"the runner did not start: {problem}")
        return {"TrainingJobArn": arn}

    def _check_runnable_training_job(self, request: dict[str, Any]) -> None:
        """What the local runner needs beyond the API shape: its code as a local archive holding the
        program, and local folders for its channels and output. Every problem is named at once."""
        hyperparameters = request.get("HyperParameters") or {}
        program = hyperparameters.get(PROGRAM_HYPERPARAMETER)
        archive = hyperparameters.get(SUBMIT_DIRECTORY_HYPERPARAMETER)
        problems: list[str] = []
        if not program:
            problems.append(f"HyperParameters needs {PROGRAM_HYPERPARAMETER} (the script to run)")
        if not archive:
            problems.append(f"HyperParameters needs {SUBMIT_DIRECTORY_HYPERPARAMETER} (the code as a .tar.gz)")
        elif archive.startswith("s3://") or not Path(local_path(archive)).is_file():
            problems.append(f"{SUBMIT_DIRECTORY_HYPERPARAMETER} {archive!r} is not a local .tar.gz file "
                            "(file:// URI or path)")
        else:
            try:
                members = archive_members(Path(local_path(archive)))
            except (OSError, tarfile.TarError) as error:
                problems.append(f"{SUBMIT_DIRECTORY_HYPERPARAMETER} {archive!r} is not a readable .tar.gz: {error}")
            else:
                if program and os.path.normpath(program) not in members:
                    problems.append(f"{PROGRAM_HYPERPARAMETER} {program!r} is not in {archive!r}")
        problems += _channel_problems(request.get("InputDataConfig", []), allowed=None)
        output = request["OutputDataConfig"]["S3OutputPath"]
        if output.startswith("s3://"):
            problems.append(f"OutputDataConfig.S3OutputPath {output!r} is not a local folder (file:// URI or path)")
        if problems:
            raise client_error(VALIDATION, "; ".join(problems), "CreateTrainingJob")

    def _check_runnable(self, request: dict[str, Any]) -> None:
        """What the local backend needs beyond the API shape, checked before anything starts."""
        from model_selection.local.hyperparameters import HyperparameterError, parse_hyperparameters

        operation = "CreateHyperParameterTuningJob"
        config = request["HyperParameterTuningJobConfig"]
        definition = request.get("TrainingJobDefinition")
        problems: list[str] = []
        if definition is None:
            raise client_error(VALIDATION, "the local backend needs TrainingJobDefinition", operation)
        try:
            trials = plan_trials(config)
        except StrategyError as error:
            problems.append(str(error))
            trials = []
        objective = config["HyperParameterTuningJobObjective"]["MetricName"]
        metric_names = {d["Name"] for d in definition["AlgorithmSpecification"].get("MetricDefinitions", [])}
        if objective not in metric_names:
            problems.append(f"objective metric {objective!r} is not among the MetricDefinitions {sorted(metric_names)}")
        problems += _channel_problems(definition.get("InputDataConfig", []), allowed=LOCAL_CHANNELS)
        static = dict(definition.get("StaticHyperParameters") or {})
        for trial in trials or [{}]:
            try:
                parse_hyperparameters({**static, **trial})
            except HyperparameterError as error:
                if str(error) not in problems:
                    problems.append(str(error))
        if "model_id" not in static:
            problems.append("StaticHyperParameters needs model_id (the timm model to fine-tune)")
        if problems:
            raise client_error(VALIDATION, "; ".join(problems), operation)

    def _detach(self, module: str, folder: Path) -> str | None:
        """Start `python -m module JOBS_ROOT NAME` for the job at `folder`, which detaches and records its
        own pid in the job's state (`supervisor.detach`); None, or why it did not start (its grace then ends)."""
        python = os.environ.get(PYTHON_VARIABLE, sys.executable)
        environment = process_environment()  # allow-listed: no AWS keys, Airflow connections or other secrets
        launcher = subprocess.run(
            [python, "-m", module, str(self.store.root), folder.name],
            capture_output=True, text=True, env=environment, start_new_session=True, timeout=SUPERVISOR_START_SECONDS,
        )
        if launcher.returncode == 0 and launcher.stdout.strip():  # it printed the pid it recorded
            return None
        self.store.update_state(folder, lambda state: state.update(SupervisorStartBy=0))
        return launcher.stderr.strip()[-500:]

    # -- describe and list ------------------------------------------------------------------
    def describe_hyper_parameter_tuning_job(self, HyperParameterTuningJobName: str) -> dict[str, Any]:
        folder = self._tuning_folder(HyperParameterTuningJobName, "DescribeHyperParameterTuningJob")
        state = self.store.read_state(folder)
        if state["HyperParameterTuningJobStatus"] in ACTIVE and not _supervised(state):
            state = self._fail_if_unsupervised(
                folder, f"the local supervisor process (pid {state.get('SupervisorPid')}) ended while the job was "
                        "in progress: it was killed or the machine restarted"
            )
        original = read_json(folder / "request.json")
        trials = [self.store.read_state(self.store.training_dir(name)) for name in state["TrainingJobNames"]]
        response = {
            "HyperParameterTuningJobName": state["HyperParameterTuningJobName"],
            "HyperParameterTuningJobArn": state["HyperParameterTuningJobArn"],
            "HyperParameterTuningJobConfig": original["HyperParameterTuningJobConfig"],
            "TrainingJobDefinition": original["TrainingJobDefinition"],
            "HyperParameterTuningJobStatus": state["HyperParameterTuningJobStatus"],
            "CreationTime": state["CreationTime"],
            "LastModifiedTime": state["LastModifiedTime"],
            "TrainingJobStatusCounters": _status_counters(trials),
            "ObjectiveStatusCounters": _objective_counters(trials),
        }
        if state.get("HyperParameterTuningEndTime"):
            response["HyperParameterTuningEndTime"] = state["HyperParameterTuningEndTime"]
        if state.get("FailureReason"):
            response["FailureReason"] = state["FailureReason"]
        best = _best_trial(trials, original["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"])
        if best is not None:
            response["BestTrainingJob"] = _summary(best)
        return _with_datetimes(response)

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        folder = self._training_folder(TrainingJobName, "DescribeTrainingJob")
        state = self.store.read_state(folder)
        if "TuningJobName" not in state:
            return self._describe_standalone_training_job(folder, state)
        tuning = self.store.read_state(self.store.tuning_dir(state["TuningJobName"]))
        training_definition = read_json(self.store.tuning_dir(state["TuningJobName"]) / "request.json")[
            "TrainingJobDefinition"
        ]
        response = {
            "TrainingJobName": TrainingJobName,
            "TrainingJobArn": _arn("training-job", TrainingJobName),
            "TuningJobArn": tuning["HyperParameterTuningJobArn"],
            "TrainingJobStatus": state["TrainingJobStatus"],
            "SecondaryStatus": state.get("SecondaryStatus", state["TrainingJobStatus"]),
            "HyperParameters": state["HyperParameters"],
            "AlgorithmSpecification": training_definition["AlgorithmSpecification"],
            "InputDataConfig": training_definition.get("InputDataConfig", []),
            "ResourceConfig": training_definition.get("ResourceConfig", {}),
            "StoppingCondition": training_definition.get("StoppingCondition", {}),
            "CreationTime": state["CreationTime"],
            "LastModifiedTime": state["LastModifiedTime"],
            "FinalMetricDataList": state.get("FinalMetricDataList", []),
        }
        for optional in ("TrainingStartTime", "TrainingEndTime", "FailureReason", "ModelArtifacts"):
            if state.get(optional):
                response[optional] = state[optional]
        return _with_datetimes(response)

    def _describe_standalone_training_job(self, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
        """A job of `create_training_job`: its request's fields and its runner's record. An active job
        whose runner has ended (killed, or the machine restarted) is Failed first."""
        if state["TrainingJobStatus"] in ACTIVE and not _supervised(state):
            state = self._fail_orphaned_training_job(
                folder, f"the local training job's runner process (pid {state.get('SupervisorPid')}) ended while "
                        "the job was in progress: it was killed or the machine restarted")
        request = read_json(folder / "request.json")
        response = {
            "TrainingJobName": state["TrainingJobName"],
            "TrainingJobArn": state["TrainingJobArn"],
            "TrainingJobStatus": state["TrainingJobStatus"],
            "SecondaryStatus": state["SecondaryStatus"],
            "CreationTime": state["CreationTime"],
            "LastModifiedTime": state["LastModifiedTime"],
            **{field: request[field] for field in DESCRIBED_REQUEST_FIELDS if field in request},
        }
        for optional in ("TrainingStartTime", "TrainingEndTime", "FailureReason", "ModelArtifacts",
                         "TrainingTimeInSeconds", "BillableTimeInSeconds"):
            if state.get(optional):
                response[optional] = state[optional]
        return _with_datetimes(response)

    def list_training_jobs_for_hyper_parameter_tuning_job(
        self, HyperParameterTuningJobName: str, StatusEquals: str | None = None, SortBy: str = "Name",
        SortOrder: str = "Ascending", MaxResults: int = 10, NextToken: str | None = None,
    ) -> dict[str, Any]:
        folder = self._tuning_folder(HyperParameterTuningJobName, "ListTrainingJobsForHyperParameterTuningJob")
        names = self.store.read_state(folder)["TrainingJobNames"]
        trials = [self.store.read_state(self.store.training_dir(name)) for name in names]
        trials = [trial for trial in trials if StatusEquals in (None, trial["TrainingJobStatus"])]
        key = {
            "Name": lambda t: t["TrainingJobName"],
            "CreationTime": lambda t: t["CreationTime"],
            "Status": lambda t: t["TrainingJobStatus"],
            "FinalObjectiveMetricValue": lambda t: t.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value", float("-inf")),
        }[SortBy]
        trials.sort(key=key, reverse=SortOrder == "Descending")
        page, token = _page([_summary(trial) for trial in trials], MaxResults, NextToken)
        return _with_datetimes({"TrainingJobSummaries": page, **({"NextToken": token} if token else {})})

    def list_hyper_parameter_tuning_jobs(
        self, StatusEquals: str | None = None, NameContains: str | None = None, SortBy: str = "Name",
        SortOrder: str = "Ascending", MaxResults: int = 10, NextToken: str | None = None,
    ) -> dict[str, Any]:
        summaries = []
        for name in self.store.tuning_job_names():
            if NameContains and NameContains not in name:
                continue
            description = self.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            if StatusEquals not in (None, description["HyperParameterTuningJobStatus"]):
                continue
            config = description["HyperParameterTuningJobConfig"]
            summaries.append({
                key: description[key] for key in (
                    "HyperParameterTuningJobName", "HyperParameterTuningJobArn", "HyperParameterTuningJobStatus",
                    "CreationTime", "LastModifiedTime", "TrainingJobStatusCounters", "ObjectiveStatusCounters",
                ) if key in description
            } | {"Strategy": config["Strategy"], "ResourceLimits": config["ResourceLimits"]}
              | ({"HyperParameterTuningEndTime": description["HyperParameterTuningEndTime"]}
                 if "HyperParameterTuningEndTime" in description else {}))
        key = {"Name": "HyperParameterTuningJobName", "Status": "HyperParameterTuningJobStatus",
               "CreationTime": "CreationTime"}[SortBy]
        summaries.sort(key=lambda summary: summary[key], reverse=SortOrder == "Descending")
        page, token = _page(summaries, MaxResults, NextToken)
        return {"HyperParameterTuningJobSummaries": page, **({"NextToken": token} if token else {})}

    def training_job_log(self, name: str) -> str:
        """What the trainer (a training job's program) printed: the same text SageMaker's metric regexes read."""
        return (self.store.training_dir(name) / "log.txt").read_text(errors="replace")

    # -- stop ---------------------------------------------------------------------------------
    def stop_hyper_parameter_tuning_job(self, HyperParameterTuningJobName: str) -> dict[str, Any]:
        operation = "StopHyperParameterTuningJob"
        folder = self._tuning_folder(HyperParameterTuningJobName, operation)

        def request_stop(state: dict[str, Any]) -> None:
            if state["HyperParameterTuningJobStatus"] not in ACTIVE:
                raise client_error(
                    VALIDATION,
                    f"Hyperparameter tuning job {HyperParameterTuningJobName} is "
                    f"{state['HyperParameterTuningJobStatus']} and cannot be stopped",
                    operation,
                )
            state["HyperParameterTuningJobStatus"] = "Stopping"
            (folder / "stop-requested").touch()

        self.store.update_state(folder, request_stop)
        return {}

    def stop_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        """Stop a job of `create_training_job`: its runner sends the program's process group SIGTERM, then
        SIGKILL after a grace, and the job ends Stopped. A tuning job's trial stops with its tuning job."""
        operation = "StopTrainingJob"
        folder = self._training_folder(TrainingJobName, operation)

        def request_stop(state: dict[str, Any]) -> None:
            if "TuningJobName" in state:
                raise client_error(VALIDATION, f"Training job {TrainingJobName} is a trial of tuning job "
                                               f"{state['TuningJobName']}: stop that tuning job", operation)
            if state["TrainingJobStatus"] not in ACTIVE:
                raise client_error(VALIDATION, f"Training job {TrainingJobName} is {state['TrainingJobStatus']} "
                                               "and cannot be stopped", operation)
            state["TrainingJobStatus"] = "Stopping"
            (folder / "stop-requested").touch()

        self.store.update_state(folder, request_stop)
        return {}

    # -- helpers ------------------------------------------------------------------------------
    def _training_folder(self, name: str, operation: str) -> Path:
        folder = self.store.training_dir(name)
        if not (folder / "state.json").exists():
            raise client_error(RESOURCE_NOT_FOUND, f"Requested resource not found: training job {name}", operation)
        return folder

    def _tuning_folder(self, name: str, operation: str) -> Path:
        folder = self.store.tuning_dir(name)
        if not (folder / "state.json").exists():
            raise client_error(RESOURCE_NOT_FOUND, f"Amazon SageMaker can't find a tuning job named {name}", operation)
        return folder

    def _fail_if_unsupervised(self, folder: Path, reason: str) -> dict[str, Any]:
        """Mark the job and its running trials Failed, unless the supervisor finished it meanwhile."""

        def change(state: dict[str, Any]) -> None:
            if state["HyperParameterTuningJobStatus"] not in ACTIVE or _supervised(state):
                return
            state.update(HyperParameterTuningJobStatus="Failed", FailureReason=reason, HyperParameterTuningEndTime=now())
            for name in state["TrainingJobNames"]:
                self._fail_orphaned_training_job(self.store.training_dir(name), "its tuning job's supervisor process ended")

        return self.store.update_state(folder, change)

    def _fail_orphaned_training_job(self, folder: Path, reason: str) -> dict[str, Any]:
        """Mark a trial, or a training job whose runner ended, Failed and kill its process group,
        unless it ended meanwhile (or its runner still runs)."""

        def change(state: dict[str, Any]) -> None:
            if state["TrainingJobStatus"] not in ACTIVE or _supervised(state):
                return
            if state.get("Pid"):  # only if that pid is still the program it records (PidCreateTime)
                kill_process_group(state["Pid"], state.get("PidCreateTime"))
            state.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", TrainingEndTime=now(), FailureReason=reason)
            if "TuningJobName" in state:
                state["ObjectiveStatus"] = "Failed"

        return self.store.update_state(folder, change)


def _channel_problems(channels: list[dict[str, Any]], allowed: tuple[str, ...] | None) -> list[str]:
    """A 'training' channel, each channel one of `allowed` (None: any), each a local folder."""
    names = [channel["ChannelName"] for channel in channels]
    problems = [] if "training" in names else ["InputDataConfig needs a 'training' channel"]
    for channel in channels:
        name = channel["ChannelName"]
        if allowed is not None and name not in allowed:
            problems.append(f"channel {name!r}: the local backend takes {', '.join(allowed)}")
            continue
        uri = channel["DataSource"].get("S3DataSource", {}).get("S3Uri", "")
        if uri.startswith("s3://") or not Path(local_path(uri)).is_dir():
            problems.append(f"channel {name!r}: {uri!r} is not a local folder (file:// URI or path)")
    return problems


def _status_counters(trials: list[dict[str, Any]]) -> dict[str, int]:
    counters = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    for trial in trials:
        status = trial["TrainingJobStatus"]
        counters["NonRetryableError" if status == "Failed" else status if status in counters else "InProgress"] += 1
    return counters


def _objective_counters(trials: list[dict[str, Any]]) -> dict[str, int]:
    counters = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for trial in trials:
        counters[trial.get("ObjectiveStatus", "Pending")] += 1
    return counters


def _best_trial(trials: list[dict[str, Any]], objective: dict[str, Any]) -> dict[str, Any] | None:
    scored = [trial for trial in trials if trial.get("ObjectiveStatus") == "Succeeded"]
    if not scored:
        return None
    value = lambda trial: trial["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]  # noqa: E731
    return max(scored, key=value) if objective["Type"] == "Maximize" else min(scored, key=value)


def _summary(trial: dict[str, Any]) -> dict[str, Any]:
    """A `HyperParameterTrainingJobSummary`, as in BestTrainingJob and the trial listing."""
    summary = {
        "TrainingJobName": trial["TrainingJobName"],
        "TrainingJobArn": _arn("training-job", trial["TrainingJobName"]),
        "TuningJobName": trial["TuningJobName"],
        "CreationTime": trial["CreationTime"],
        "TrainingJobStatus": trial["TrainingJobStatus"],
        "TunedHyperParameters": trial["TunedHyperParameters"],
    }
    for optional in ("TrainingStartTime", "TrainingEndTime", "FailureReason",
                     "FinalHyperParameterTuningJobObjectiveMetric", "ObjectiveStatus"):
        if trial.get(optional) is not None:
            summary[optional] = trial[optional]
    return summary


def _page(items: list[Any], max_results: int, next_token: str | None) -> tuple[list[Any], str | None]:
    start = int(next_token or 0)
    end = start + max_results
    return items[start:end], (str(end) if end < len(items) else None)
