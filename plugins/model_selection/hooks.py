"""One hook per backend over a client with boto3's SageMaker method names.

The operator, the sensor, the trigger and collection all stand on `TuningJobHook`: it is
the only place outside `backends/` that reads service error codes. It serves the models'
tuning jobs and the screen's training job (create-or-attach, describe, stop, its staged source
and its scores). What callers must tell apart comes out as one of three exceptions:

- `Throttled`: the service asked us to slow down (after botocore's own retries);
- `QuotaExceeded`: `ResourceLimitExceeded`; `never_fits` when the account's limit is below
  what one job asks for, so waiting cannot help;
- `NameTaken`: a job of that name exists but was not launched with this request's settings.

`tuning_job_hook(hook_params)` gives the hook for `{"backend": "local", "jobs_root": ...}`
or `{"backend": "sagemaker", "aws_conn_id": ..., "region_name": ...}`; those settings are
all that XCom and a trigger carry, never a client or credentials.

Both hooks hold every request they make, of every operation, to SageMaker's service model
before it goes anywhere (`backends.api.validate_request`); a refused one raises
`backends.api.RequestRefused`, naming the operation and each problem.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from model_selection.backends.api import (
    RESOURCE_IN_USE,
    RESOURCE_LIMIT_EXCEEDED,
    RESOURCE_NOT_FOUND,
    THROTTLING_CODES,
    VALIDATION,
    RequestRefused,
    error_code,
    operation_for_method,
    validate_request,
)
from model_selection.study import BACKENDS

ACTIVE_STATUSES = ("InProgress", "Stopping")
# SageMaker's ResourceLimitExceeded message: "The account-level service limit 'ml.p3.2xlarge for
# training job usage' is 0 Instances, with current utilization of 0 Instances and a request delta
# of 1 Instances. Please use AWS Service Quotas to request an increase for this quota."
QUOTA_MESSAGE = re.compile(
    r"limit '(?P<quota>[^']+)' is (?P<limit>\d+) \w+, with current utilization of (?P<used>\d+) \w+ "
    r"and a request delta of (?P<delta>\d+)"
)


class Throttled(Exception):
    """The service throttled the call beyond the client's own retries."""


class QuotaExceeded(Exception):
    """ResourceLimitExceeded; `never_fits` when one job alone asks for more than the account's limit."""

    def __init__(self, message: str):
        super().__init__(message)
        match = QUOTA_MESSAGE.search(message)
        self.quota = match["quota"] if match else None
        self.never_fits = bool(match) and int(match["delta"]) > int(match["limit"])


class NameTaken(Exception):
    """A job of this name exists and was not launched with this request's settings."""


def _raise_for(error: Exception) -> None:
    """Turn the service's answers that callers act on into this module's exceptions."""
    code = error_code(error)
    if code in THROTTLING_CODES:
        raise Throttled(f"{code}: {error}") from error
    if code == RESOURCE_LIMIT_EXCEEDED:
        raise QuotaExceeded(str(error)) from error


# DescribeTrainingJob and StopTrainingJob answer an unknown name with ValidationException "Requested
# resource not found." (not the ResourceNotFound their service model lists; aws/aws-sdk#165).
TRAINING_JOB_NOT_FOUND = "Requested resource not found"


def _not_found(error: Exception) -> bool:
    """The service's answer for a job name it does not know (ResourceNotFound, or a training job's not-found)."""
    code = error_code(error)
    return code == RESOURCE_NOT_FOUND or (code == VALIDATION and not isinstance(error, RequestRefused)
                                          and TRAINING_JOB_NOT_FOUND in str(error))


class TuningJobHook:
    """Create-or-attach, in-flight count, throttle-aware describe, stop and logs for one backend, for the
    models' tuning jobs and the screen's training job; the screen's staged source and scores."""

    conn: Any  # the SageMaker-shaped client, set by each backend's hook

    # -- tuning jobs ------------------------------------------------------------------------------
    def existing_status(self, request: Mapping[str, Any]) -> str | None:
        """The status of the tuning job this request names, if it exists and was made from this request."""
        return _checked_status(self.describe(request["HyperParameterTuningJobName"]), request,
                               "HyperParameterTuningJobStatus")

    def create_or_attach(self, request: Mapping[str, Any]) -> tuple[bool, str]:
        """(attached, status): creates the tuning job, or attaches when the name is taken by this request's job."""
        return self._create_or_attach(self.conn.create_hyper_parameter_tuning_job, request, self.existing_status)

    def count_in_flight(self, prefix: str) -> int:
        """Tuning jobs of the study (names `PREFIX-...`) in progress, over every page of the listing."""
        summaries = self._every_page(self.conn.list_hyper_parameter_tuning_jobs, "HyperParameterTuningJobSummaries",
                                     StatusEquals="InProgress", NameContains=prefix)
        return sum(summary["HyperParameterTuningJobName"].startswith(f"{prefix}-") for summary in summaries)

    def list_training_jobs(self, tuning_job_name: str) -> list[dict[str, Any]]:
        """Every training job the tuning job started (HyperParameterTrainingJobSummary), failed and stopped ones too."""
        return self._every_page(self.conn.list_training_jobs_for_hyper_parameter_tuning_job, "TrainingJobSummaries",
                                HyperParameterTuningJobName=tuning_job_name)

    def describe(self, name: str) -> dict[str, Any] | None:
        """The tuning job's description; None when no job has that name."""
        return self._describe(self.conn.describe_hyper_parameter_tuning_job, HyperParameterTuningJobName=name)

    def stop(self, name: str) -> bool:
        """Ask the tuning job to stop; False when it has ended already (or never existed)."""
        return self._stop(self.conn.stop_hyper_parameter_tuning_job, HyperParameterTuningJobName=name)

    # -- training jobs (the screen's; a tuning job's trials are read with describe_training_job too) ----------
    def existing_training_job_status(self, request: Mapping[str, Any]) -> str | None:
        """The status of the training job this request names, if it exists and was made from this request."""
        return _checked_status(self.describe_training_job(request["TrainingJobName"]), request, "TrainingJobStatus")

    def create_or_attach_training_job(self, request: Mapping[str, Any]) -> tuple[bool, str]:
        """(attached, status): creates the training job, or attaches when the name is taken by this request's job."""
        return self._create_or_attach(self.conn.create_training_job, request, self.existing_training_job_status)

    def describe_training_job(self, name: str) -> dict[str, Any] | None:
        """The training job's description; None when no job has that name."""
        return self._describe(self.conn.describe_training_job, TrainingJobName=name)

    def stop_training_job(self, name: str) -> bool:
        """Ask the training job to stop; False when it has ended already (or never existed)."""
        return self._stop(self.conn.stop_training_job, TrainingJobName=name)

    def stage(self, job_name: str, filename: str, data: bytes, output_path: str) -> str:
        """Put `data` where the job `job_name` will read it; returns its URI (the `sagemaker_submit_directory`)."""
        raise NotImplementedError

    def read_artifact(self, uri: str) -> bytes:
        """The bytes of a job's output object (its model.tar.gz)."""
        raise NotImplementedError

    def screen_scores(self, description: Mapping[str, Any]) -> dict[str, Any]:
        """The screen job's scores: `screen.json` from its model.tar.gz (`ModelArtifacts.S3ModelArtifacts`)."""
        from model_selection.screen_source import SCORES_FILE

        uri = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if not uri:
            raise ValueError(f"training job {description.get('TrainingJobName')} "
                             f"({description.get('TrainingJobStatus')}) has no model artifacts to read scores from")
        with tarfile.open(fileobj=io.BytesIO(self.read_artifact(uri)), mode="r:gz") as archive:
            member = next((item for item in archive.getmembers()
                           if item.isfile() and item.name.removeprefix("./") == SCORES_FILE), None)
            if member is None:
                raise ValueError(f"{uri} holds no {SCORES_FILE}: the screen program wrote no scores")
            return json.load(archive.extractfile(member))

    # -- logs and links -------------------------------------------------------------------------
    def training_log(self, training_job_name: str) -> str:
        raise NotImplementedError

    def console_location(self) -> tuple[str, str] | None:
        """(region, partition) of the AWS console that shows these jobs; None when there is none."""
        return None

    # -- how each call is made ------------------------------------------------------------------
    @staticmethod
    def _create_or_attach(create: Callable[..., Any], request: Mapping[str, Any],
                          existing_status: Callable[[Mapping[str, Any]], str | None]) -> tuple[bool, str]:
        try:
            create(**request)
            return False, "InProgress"
        except Exception as error:
            if error_code(error) != RESOURCE_IN_USE:
                _raise_for(error)
                raise
            status = existing_status(request)  # created already, by an earlier try of this launch
            if status is None:
                raise
            return True, status

    def _describe(self, method: Any, **request: Any) -> dict[str, Any] | None:
        try:
            return self._call(method, **request)
        except Exception as error:
            if _not_found(error):
                return None
            raise

    def _stop(self, method: Any, **request: Any) -> bool:
        try:
            self._call(method, **request)
            return True
        except (Throttled, RequestRefused):  # a malformed request is our error, not a job that has ended
            raise
        except Exception as error:
            if error_code(error) in (VALIDATION, RESOURCE_NOT_FOUND):
                return False
            raise

    def _every_page(self, method: Any, key: str, **request: Any) -> list[dict[str, Any]]:
        """The `key` items of a listing, over every page (100 a page, the most the API gives)."""
        items, token = [], None
        while True:
            page = self._call(method, MaxResults=100, **request, **({"NextToken": token} if token else {}))
            items += page[key]
            token = page.get("NextToken")
            if not token:
                return items

    @staticmethod
    def _call(method: Any, **request: Any) -> Any:
        try:
            return method(**request)
        except Exception as error:
            _raise_for(error)
            raise


def _checked_status(description: Mapping[str, Any] | None, request: Mapping[str, Any], status_key: str) -> str | None:
    """The described job's status when it exists, after `check_same_job`; None when it does not."""
    if description is None:
        return None
    check_same_job(description, request)
    return description[status_key]


def job_identity(definition: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a job this request's, from a request or a description of a tuning or a training job.

    Hyperparameters alone are not enough: JumpStart models of one framework share them, and the
    model is named by its image and its `model` channel. A training job's own request is its
    training-job definition (with `HyperParameters` where a tuning job has `StaticHyperParameters`).
    """
    training = definition.get("TrainingJobDefinition") or definition
    ranges = ((definition.get("HyperParameterTuningJobConfig") or {}).get("ParameterRanges") or {})
    return {
        "hyperparameters": training.get("StaticHyperParameters") or training.get("HyperParameters") or {},
        "training image": (training.get("AlgorithmSpecification") or {}).get("TrainingImage"),
        "input channels": {channel["ChannelName"]: channel["DataSource"]["S3DataSource"]["S3Uri"]
                           for channel in training.get("InputDataConfig") or []},
        "instance type": (training.get("ResourceConfig") or {}).get("InstanceType"),
        "tuned values": {item["Name"]: item["Values"] for item in ranges.get("CategoricalParameterRanges") or []},
    }


def check_same_job(description: Mapping[str, Any], request: Mapping[str, Any]) -> None:
    """A job name is derived from data set, configuration and model (or screen): another job under it is a collision.

    What the request sets must be found as it was sent; entries the service adds to a description
    (such as `_tuning_objective_metric` among a tuning job's static hyperparameters) do not count.
    """
    expected, found = job_identity(request), job_identity(description)
    differing = [part for part, value in expected.items()
                 if (value != found[part] if not isinstance(value, dict)
                     else any(found[part].get(key) != item for key, item in value.items()))]
    if differing:
        kind, name, settings = (
            ("tuning job", request["HyperParameterTuningJobName"], "model and configuration")
            if "HyperParameterTuningJobName" in request else ("training job", request["TrainingJobName"], "request"))
        raise NameTaken(f"a {kind} named {name} exists but was not launched with this {settings} "
                        f"({', '.join(differing)} differ); refusing to attach to it")


class ServiceModelChecked:
    """A SageMaker-shaped client whose every operation's request is held to the service model first.

    The local backend's counterpart of the SageMaker hook's botocore handler: the same check
    (`validate_request`), with `file://` URIs standing for S3 ones. What is not an operation
    of the service (such as the local client's `training_job_log`) passes through unchecked.
    """

    def __init__(self, client: Any):
        self.client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        operation = operation_for_method(name)
        if operation is None or not callable(attribute):
            return attribute

        def checked(**request: Any) -> Any:
            validate_request(operation, request, local_uris=True)
            return attribute(**request)

        return checked


class LocalTuningJobHook(TuningJobHook):
    """Tuning jobs on this machine: the client is `LocalSageMakerClient` over the job store."""

    def __init__(self, jobs_root: str | None = None):
        from model_selection.backends.local import LocalSageMakerClient

        self.conn = ServiceModelChecked(LocalSageMakerClient(jobs_root))

    def training_log(self, training_job_name: str) -> str:
        return self.conn.training_job_log(training_job_name)

    def stage(self, job_name: str, filename: str, data: bytes, output_path: str) -> str:
        """A file under `<jobs root>/staging/<job_name>/`, written whole or not at all (`output_path`: SageMaker's)."""
        folder = Path(self.conn.client.store.root).resolve() / "staging" / job_name
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{filename}.partial"
        partial.write_bytes(data)
        partial.replace(folder / filename)
        return (folder / filename).as_uri()

    def read_artifact(self, uri: str) -> bytes:
        from model_selection.local.supervisor import local_path

        return Path(local_path(uri)).read_bytes()


def tuning_job_hook(hook_params: Mapping[str, Any]) -> TuningJobHook:
    """The hook for the backend these settings name."""
    settings = dict(hook_params)
    backend = settings.pop("backend", None)
    if backend == "local":
        return LocalTuningJobHook(**settings)
    if backend == "sagemaker":
        from model_selection.backends.sagemaker import SageMakerTuningJobHook

        return SageMakerTuningJobHook(**settings)
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
