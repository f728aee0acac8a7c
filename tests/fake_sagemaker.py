"""A real SageMaker/S3 HTTP endpoint (moto's server, in this process) whose tuning jobs have a life.

moto finishes a tuning job the moment it is created, with no training jobs and a best
training job that does not exist. Tests need jobs that run, then complete with real
training jobs and metrics, fail or stop. This adds the least that does it: new tuning
jobs start InProgress, and a driver thread ends each one after `run_seconds` by creating
its training jobs through the API and filling their FinalMetricDataList exactly as
SageMaker does, by applying the request's metric regexes to a training log written in
the JumpStart script's format.

Faults are answered by the server itself, as SageMaker answers them on the wire, so they reach
the clients of every process (real Airflow): `ServerThrottle` (ThrottlingException, every other
call or in bursts per job), `ServerQuota` (ResourceLimitExceeded past the account's training-instance
quota, counted from moto's own jobs), `ServerDeny` (AccessDeniedException for named jobs) and
`ServerStop` (StopHyperParameterTuningJob and StopTrainingJob, which moto's server lacks).

Operations moto 5.2.5's server does not implement at all are added to its own response classes while
a fake lives (`MotoAdditions`), so they pass through moto's routing, its authorization (when a test
enforces it) and its serializer, which writes the service model's response shape:
ListTrainingJobsForHyperParameterTuningJob (from moto's training jobs of that tuning job), IAM's
SimulatePrincipalPolicy (moto's own policy evaluator over moto's IAM state) and Service Quotas'
ListServiceQuotas (SageMaker's training-instance quotas, which a test sets in `training_quotas`).
Every training job the driver creates carries TrainingTimeInSeconds and BillableTimeInSeconds, as
SageMaker reports them (billable below training time under managed spot training).

A standalone training job (CreateTrainingJob, the screen's) really runs its program, on this machine's CPU,
the way SageMaker's training toolkit runs a script-mode job in a framework image (`TrainingRun`):

- as the service does: the job starts InProgress (moto: Completed at once) and goes through the secondary
  statuses Starting, Downloading, Training, Uploading with the service's messages; the channels' S3 objects
  are downloaded into a folder per channel; the output folder is tarred to
  `<S3OutputPath>/<name>/output/model.tar.gz` in moto's S3, named by ModelArtifacts.S3ModelArtifacts once
  Completed; a program that exits non-zero fails the job with an `AlgorithmError: ExecuteUserScriptError`
  reason ending in its log's tail; the log goes to CloudWatch Logs (`/aws/sagemaker/TrainingJobs`,
  stream `<name>/algo-1-...`); StopTrainingJob (which moto's server lacks) turns an InProgress job Stopping,
  and the run's process is killed and the job ends Stopped; a name in use is ResourceInUse (moto replaces
  the job); DescribeTrainingJob of an unknown name is ValidationException "Requested resource not found."
  (moto words it otherwise);
- as the toolkit does: it downloads `sagemaker_submit_directory` and extracts it into the code folder, runs
  `python <sagemaker_program>` there with the user hyperparameters as `--name value` arguments and with
  SM_CHANNELS, SM_CHANNEL_<NAME>, SM_MODEL_DIR, SM_OUTPUT_DATA_DIR, SM_INPUT_CONFIG_DIR (its
  hyperparameters.json), SM_HPS, SM_HP_<NAME>, SM_USER_ARGS, SM_CURRENT_HOST, SM_HOSTS, SM_NUM_GPUS set,
  hyperparameter values decoded as JSON where they parse, as the toolkit decodes them;
- the fake's own: the program runs with this test process's python and packages, not the image's, on the
  CPU, in a temporary folder instead of /opt/ml; requirements.txt is not installed (there is no index) but
  each line must already be satisfied here, or the job fails as a failed pip install would; the process
  gets no AWS credentials, no PYTHONPATH (it imports what it ships) and no local-backend jobs root; the
  training image and instance type are recorded, never pulled or provisioned; TrainingTimeInSeconds and
  BillableTimeInSeconds are the run's wall seconds;
- the model hub: a real container downloads pretrained weights from the Hugging Face hub over the network.
  This machine has no network, so the container reaches no hub but what `container_environment` gives it:
  the program gets HF_HUB_OFFLINE=1 and none of this process's HF_* / HUGGINGFACE_* variables, then the
  `container_environment` (e.g. HF_HOME=<a folder `write_hub_cache` laid out>, standing for the hub a real
  container reaches: timm's own hub-loading code then finds its files there, offline, as a download
  cached them). SM_* variables are the toolkit's and win over it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from moto.server import ThreadedMotoServer

from model_selection.metrics import extract_final_metrics

REGION = "us-west-2"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sagemaker-execution"
SAGEMAKER_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
# What ROLE may do: read the study's data and the region's JumpStart bucket, write under the data bucket.
ROLE_S3_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:PutObject"],
     "Resource": ["arn:aws:s3:::study-data", "arn:aws:s3:::study-data/*"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
     "Resource": [f"arn:aws:s3:::jumpstart-cache-prod-{REGION}", f"arn:aws:s3:::jumpstart-cache-prod-{REGION}/*"]}]}
# Service Quotas' training-instance quotas of the fake account (instances of each type for training jobs).
DEFAULT_TRAINING_QUOTAS = {"ml.g4dn.xlarge": 8.0, "ml.p3.2xlarge": 8.0}
# Each training job's TrainingTimeInSeconds is TRAINING_SECONDS + 100 x its index (1, 2, ...); under managed
# spot training SageMaker bills SPOT_BILLED_FRACTION of it.
TRAINING_SECONDS = 400
SPOT_BILLED_FRACTION = 0.3
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# What DescribeTrainingJob and StopTrainingJob answer for an unknown name (ValidationException).
TRAINING_JOB_NOT_FOUND = "Requested resource not found."


def jumpstart_log(model_id: str, learning_rate: float) -> str:
    """What the JumpStart script prints, with figures that depend on the model and learning rate."""
    seed = int(hashlib.sha256(model_id.encode()).hexdigest()[:6], 16)
    accuracy = 0.70 + (seed % 250) / 1000 - abs(learning_rate - 0.001) * 20
    throughput = 10 + seed % 40
    return "\n".join([
        "- Number of trainable parameters: 12810",
        "- Number of non-trainable parameters: 2257984",
        f"- Number of parameters: {2257984 + 12810}",
        "Epoch 1/10",
        f"- loss: 1.2 - accuracy: {accuracy - 0.1:.4f} - top_5_accuracy: 0.9 - val_loss: 1.1 - val_accuracy: {accuracy - 0.05:.4f}",
        "Setting weights to model with maximum val_accuracy at epoch 4/10:",
        "- loss: 0.4", f"- accuracy: {accuracy + 0.02:.4f}", "- top_5_accuracy: 0.99",
        "- val_loss: 0.5", f"- val_accuracy: {accuracy:.4f}", "- val_top_5_accuracy: 0.98",
        "- Total training duration: 412.5 seconds",
        "- Average training duration per epoch: 41.25 seconds",
        "- Test loss: 0.52", f"- Test accuracy: {accuracy - 0.01:.4f}", "- Test top_5_accuracy: 0.981",
        "- Test evaluation latency: 12.5 seconds",
        f"- Average test latency per sample: {1 / throughput:.5f} seconds",
        f"- Average test throughput: {throughput:.2f} examples per second",
    ])


class FakeSageMaker:
    def __init__(self, run_seconds: float = 1.0, failing: tuple[str, ...] = (), missing_metrics: tuple[str, ...] = (),
                 run_seconds_by_model: dict[str, float] | None = None,
                 server_throttle: tuple[str, ...] = (), throttle_burst: int = 0,
                 quota_jobs: int | None = None, denied: tuple[str, ...] = (), retries: dict | None = None,
                 training_quotas: dict[str, float] | None = None, run_training_jobs: bool = True,
                 container_environment: dict[str, str] | None = None):
        # Every fault is answered by the server itself, so it reaches clients in any process (real Airflow):
        # throttling, the account's training-instance quota (`quota_jobs` tuning jobs' worth), describes
        # refused to the jobs whose names start with one of `denied`, and StopHyperParameterTuningJob and
        # StopTrainingJob (which moto's server does not implement). `training_quotas`: what Service Quotas
        # answers for "<instance type> for training job usage" (DEFAULT_TRAINING_QUOTAS unless given).
        # `run_training_jobs=False`: standalone training jobs stay InProgress (for tests of requests only).
        # `container_environment`: variables a standalone training job's program gets, as the image and the
        # network give them in a real container (the model hub: see the module docstring).
        self.container_environment = dict(container_environment or {})
        self.training_quotas = dict(DEFAULT_TRAINING_QUOTAS if training_quotas is None else training_quotas)
        self.run_training_jobs = run_training_jobs
        self.additions = MotoAdditions(self)
        self.server_throttle = ServerThrottle(server_throttle, burst=throttle_burst)
        self.quota = ServerQuota(self, quota_jobs)
        self.deny = ServerDeny(denied)
        self.stops = ServerStop(self)
        self.training = ServerTrainingJobs(self)
        self.server = ThrottlingMotoServer(self.server_throttle, ip_address="127.0.0.1", port=0, verbose=False,
                                           middlewares=(self.training, self.stops, self.deny, self.quota))
        self.server.start()
        self.retries = retries  # the connection's botocore retry config, when a test sets one
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"))  # moto keeps state per process
        self.run_seconds = run_seconds
        self.run_seconds_by_model = dict(run_seconds_by_model or {})  # model id -> its jobs' run time, if not run_seconds
        self.failing = failing
        self.missing_metrics = missing_metrics  # left out of FinalMetricDataList: only the log has them
        self.started: dict[str, float] = {}
        self.calls: Counter = Counter()  # (operation, job or listing filter) -> requests past the throttle
        self.stop_requested: set[str] = set()
        self.finish_requested: set[str] = set()
        self.trial_names: set[str] = set()  # training jobs the driver creates for tuning jobs (moto runs them)
        self.training_runs: dict[str, TrainingRun] = {}  # standalone training jobs, run for real
        self._stop = threading.Event()
        self._patch_new_jobs_to_start_in_progress()
        self.additions.install()
        self.create_execution_role()
        self._driver = threading.Thread(target=self._drive, daemon=True)
        self._driver.start()

    # -- set-up ------------------------------------------------------------------------------------
    def connection(self) -> str:
        """The Airflow AWS connection (as AIRFLOW_CONN_AWS_DEFAULT) that reaches this endpoint."""
        extra: dict[str, Any] = {"region_name": REGION, "endpoint_url": self.endpoint}
        if self.retries:
            extra["config_kwargs"] = {"retries": self.retries}
        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra})

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    @property
    def backend(self) -> Any:
        from moto.backends import get_backend

        return get_backend("sagemaker")[ACCOUNT][REGION]

    def _patch_new_jobs_to_start_in_progress(self) -> None:
        from moto.sagemaker import models

        original = models.HyperParameterTuningJob.__init__
        self._original_init = original

        def start_in_progress(job: Any, *args: Any, **kwargs: Any) -> None:
            original(job, *args, **kwargs)
            job.hyper_parameter_tuning_job_status = "InProgress"
            job.hyper_parameter_tuning_end_time = None
            job.best_training_job = None
            job.OverallBestTrainingJob = None
            job.training_job_status_counters = dict(job.training_job_status_counters, Completed=0, InProgress=2)
            job.objective_status_counters = dict(job.objective_status_counters, Succeeded=0, Pending=2)

        models.HyperParameterTuningJob.__init__ = start_in_progress

    def create_execution_role(self) -> None:
        """ROLE, trusted by SageMaker, reading the study's data and the JumpStart bucket: what the plan's preflight asks."""
        iam = self.client("iam")
        iam.create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST))
        iam.put_role_policy(RoleName=ROLE.rsplit("/", 1)[-1], PolicyName="s3",
                            PolicyDocument=json.dumps(ROLE_S3_POLICY))

    def close(self) -> None:
        from moto.sagemaker import models

        self._stop.set()
        self._driver.join(timeout=5)
        for run in list(self.training_runs.values()):
            run.thread.join(timeout=10)  # each kills its program when the fake stops
        models.HyperParameterTuningJob.__init__ = self._original_init
        self.additions.remove()
        self.server.stop()

    # -- what a test does to jobs ----------------------------------------------------------------
    def in_flight(self) -> int:
        """Tuning jobs that hold training instances: InProgress or Stopping, as moto's state has them."""
        return sum(job.hyper_parameter_tuning_job_status in ("InProgress", "Stopping")
                   for job in list(self.backend.hyper_parameter_tuning_jobs.values()))

    def stop_from_console(self, name: str) -> None:
        """What a person stopping the job in the SageMaker console leads to."""
        self.stop_requested.add(name)

    def finish_now(self, name: str) -> None:
        """Let the job complete (as it would after its run time) at the driver's next pass."""
        self.finish_requested.add(name)

    # -- the driver -----------------------------------------------------------------------------
    def _drive(self) -> None:
        while not self._stop.is_set():
            for name, job in list(self.backend.hyper_parameter_tuning_jobs.items()):
                if job.hyper_parameter_tuning_job_status == "Stopping":  # StopHyperParameterTuningJob was called
                    self._end(job, "Stopped")
                    continue
                if job.hyper_parameter_tuning_job_status != "InProgress":
                    continue
                self.started.setdefault(name, time.monotonic())
                if name in self.stop_requested:
                    self._end(job, "Stopped", "Stopped by a user in the console")
                elif name in self.finish_requested or time.monotonic() - self.started[name] >= \
                        self.run_seconds_by_model.get(_model_id(job), self.run_seconds):
                    self._finish(job)
            for name, job in list(self.backend.training_jobs.items()) if self.run_training_jobs else ():
                if job.training_job_status == "InProgress" and name not in self.trial_names | set(self.training_runs):
                    self.training_runs[name] = TrainingRun(self, job)
                    self.training_runs[name].thread.start()
            time.sleep(0.05)

    def put_training_log(self, name: str, text: str) -> None:
        """The job's log in CloudWatch Logs, where SageMaker puts it: one stream `<name>/algo-1-<time>`."""
        logs = self.client("logs")
        if TRAINING_LOG_GROUP not in [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]:
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):  # another job's thread made it
                logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
        stream = f"{name}/algo-1-1700000000"
        logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream)
        lines = [line for line in text.splitlines() if line]  # CloudWatch takes no empty event
        if lines:
            logs.put_log_events(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream,
                                logEvents=[{"timestamp": int(time.time() * 1000), "message": line} for line in lines])

    def _end(self, job: Any, status: str, reason: str = "") -> None:
        job.failure_reason = reason
        job.hyper_parameter_tuning_end_time = job.last_modified_time = _now()
        job.training_job_status_counters = dict(job.training_job_status_counters, InProgress=0,
                                                NonRetryableError=2 if status == "Failed" else 0,
                                                Stopped=2 if status == "Stopped" else 0)
        job.hyper_parameter_tuning_job_status = status

    def _finish(self, job: Any) -> None:
        definition = job.training_job_definition
        static = definition["StaticHyperParameters"]
        model_id = _model_id(job)
        rates = job.hyper_parameter_tuning_job_config["ParameterRanges"]["CategoricalParameterRanges"][0]["Values"]
        if any(marker in model_id for marker in self.failing):
            reason = "AlgorithmError: ExecuteUserScriptError: CUDA out of memory"
            for index, rate in enumerate(rates, start=1):  # each trial ran (and was billed) until it failed
                trial = self._create_trial(job, index, rate)
                trial.training_job_status = trial.secondary_status = "Failed"
                trial.failure_reason = reason
            self._end(job, "Failed", f"No training job succeeded after 2 attempts. {reason}")
            return
        trials = []
        for index, rate in enumerate(rates, start=1):
            name = self._create_trial(job, index, rate).training_job_name
            text = jumpstart_log(model_id, float(rate))
            self.put_training_log(name, text)
            metrics = extract_final_metrics(text, definition["AlgorithmSpecification"]["MetricDefinitions"])
            trial = self.backend.training_jobs[name]
            trial.final_metric_data_list = [{"MetricName": metric, "Value": value, "Timestamp": _now()}
                                            for metric, value in metrics.items() if metric not in self.missing_metrics]
            trials.append((metrics["val_accuracy"], name, rate))
        best_value, best_name, best_rate = max(trials)
        job.best_training_job = {
            "TrainingJobName": best_name, "TrainingJobArn": self.backend.training_jobs[best_name].arn,
            "TuningJobName": job.hyper_parameter_tuning_job_name, "CreationTime": _now(),
            "TrainingStartTime": _now(), "TrainingEndTime": _now(), "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"learning_rate": best_rate}, "ObjectiveStatus": "Succeeded",
            "FinalHyperParameterTuningJobObjectiveMetric": {"Type": "Maximize", "MetricName": "val_accuracy",
                                                            "Value": best_value},
        }
        job.training_job_status_counters = dict(job.training_job_status_counters, InProgress=0, Completed=len(trials))
        job.objective_status_counters = dict(job.objective_status_counters, Pending=0, Succeeded=len(trials))
        job.hyper_parameter_tuning_end_time = job.last_modified_time = _now()
        job.hyper_parameter_tuning_job_status = "Completed"

    def _create_trial(self, job: Any, index: int, rate: str) -> Any:
        """One training job of the tuning job, through the API, with the times SageMaker reports once it has run."""
        definition = job.training_job_definition
        name = f"{job.hyper_parameter_tuning_job_name}-{index:03d}-{hashlib.sha1(rate.encode()).hexdigest()[:8]}"
        spot = bool(definition.get("EnableManagedSpotTraining"))
        self.trial_names.add(name)
        self.client("sagemaker").create_training_job(
            TrainingJobName=name, HyperParameters={**definition["StaticHyperParameters"], "learning_rate": rate},
            AlgorithmSpecification={key: definition["AlgorithmSpecification"][key]
                                    for key in ("TrainingImage", "TrainingInputMode")},
            RoleArn=definition["RoleArn"], InputDataConfig=definition["InputDataConfig"],
            OutputDataConfig=definition["OutputDataConfig"], ResourceConfig=definition["ResourceConfig"],
            StoppingCondition=definition["StoppingCondition"], EnableManagedSpotTraining=spot,
        )
        trial = self.backend.training_jobs[name]
        trial.tuning_job_arn = job.arn
        trial.training_time_in_seconds = TRAINING_SECONDS + 100 * index
        trial.billable_time_in_seconds = round(trial.training_time_in_seconds * (SPOT_BILLED_FRACTION if spot else 1))
        return trial


class MotoAdditions:
    """Operations moto's server lacks, added to moto's response classes while a fake lives.

    They are answered through moto's own routing, authorization (a test that enforces it sees
    AccessDenied for a caller whose policy lacks the action) and serializer, which writes each
    operation's response shape from botocore's service model.

    - SageMaker ListTrainingJobsForHyperParameterTuningJob: moto's training jobs whose TuningJobArn
      is the tuning job's, as HyperParameterTrainingJobSummary items, sorted by name, paged.
    - IAM SimulatePrincipalPolicy: each action on each resource decided by moto's own policy
      evaluator (`moto.iam.access_control.IAMPolicy`, the one behind its request authorization) over
      the inline and attached policies of the role or user in moto's IAM state: an explicit Deny
      wins, an Allow allows, nothing is an implicit deny. The context entries are passed to its
      condition check. Nothing else the real simulator weighs is modelled: groups, permissions
      boundaries, SCPs, resource policies, session policies.
    - Service Quotas ListServiceQuotas for `sagemaker`: one "<type> for training job usage" quota per
      entry of the fake's `training_quotas`.
    """

    def __init__(self, fake: FakeSageMaker):
        self.fake = fake
        self.added: list[tuple[type, str]] = []

    def install(self) -> None:
        from moto.iam.responses import IamResponse
        from moto.sagemaker.responses import SageMakerResponse
        from moto.servicequotas.responses import ServiceQuotasResponse

        fake = self.fake

        def list_service_quotas(response: Any) -> str:
            return _list_service_quotas(response, fake.training_quotas)

        for response_class, name, method in (
                (SageMakerResponse, "list_training_jobs_for_hyper_parameter_tuning_job", _list_training_jobs_for_tuning_job),
                (IamResponse, "simulate_principal_policy", _simulate_principal_policy),
                (ServiceQuotasResponse, "list_service_quotas", list_service_quotas)):
            setattr(response_class, name, method)
            self.added.append((response_class, name))

    def remove(self) -> None:
        for response_class, name in self.added:
            delattr(response_class, name)
        self.added.clear()


def _list_training_jobs_for_tuning_job(response: Any) -> Any:
    from moto.core.responses import ActionResult
    from moto.sagemaker.exceptions import ResourceNotFound

    backend = response.sagemaker_backend
    name = response._get_param("HyperParameterTuningJobName")
    tuning = backend.hyper_parameter_tuning_jobs.get(name)
    if tuning is None:
        raise ResourceNotFound(f"Amazon SageMaker can't find a tuning job with name {name}")
    tuned = [item["Name"] for item in tuning.hyper_parameter_tuning_job_config["ParameterRanges"]
             .get("CategoricalParameterRanges", [])]
    status = response._get_param("StatusEquals")
    trials = sorted((trial for trial in list(backend.training_jobs.values())
                     if getattr(trial, "tuning_job_arn", None) == tuning.arn
                     and status in (None, trial.training_job_status)), key=lambda trial: trial.training_job_name)
    start = int(response._get_param("NextToken") or 0)
    end = start + int(response._get_param("MaxResults") or 10)
    summaries = [{
        "TrainingJobName": trial.training_job_name, "TrainingJobArn": trial.arn, "TuningJobName": name,
        "CreationTime": trial.creation_time, "TrainingStartTime": trial.training_start_time,
        "TrainingEndTime": trial.training_end_time, "TrainingJobStatus": trial.training_job_status,
        "TunedHyperParameters": {key: trial.hyper_parameters[key] for key in tuned},
        **({"FailureReason": trial.failure_reason} if getattr(trial, "failure_reason", None) else {}),
    } for trial in trials[start:end]]
    return ActionResult({"TrainingJobSummaries": summaries, **({"NextToken": str(end)} if end < len(trials) else {})})


def _principal_policies(backend: Any, arn: str) -> list[Any]:
    """The inline and attached policies of the role or user an ARN names (NoSuchEntity when there is none)."""
    kind, name = arn.split(":", 5)[5].split("/", 1)[0], arn.rsplit("/", 1)[-1]
    if kind == "role":
        backend.get_role(name)
        inline = [backend.get_role_policy(name, policy)[1] for policy in backend.list_role_policies(name)]
        return inline + list(backend.list_attached_role_policies(name)[0])
    backend.get_user(name)
    inline = [backend.get_user_policy(name, policy) for policy in backend.list_user_policies(name)]
    return inline + list(backend.list_attached_user_policies(name)[0])


def _simulate_principal_policy(response: Any) -> Any:
    from moto.core.responses import ActionResult
    from moto.iam.access_control import IAMPolicy, PermissionResult

    policies = [IAMPolicy(policy) for policy in _principal_policies(response.backend, response._get_param("PolicySourceArn"))]
    context = {entry["ContextKeyName"]: entry["ContextKeyValues"][0]
               for entry in response._get_param("ContextEntries", []) if entry.get("ContextKeyValues")}

    def decision(action: str, resource: str) -> str:
        results = {policy.is_action_permitted(action, resource, incoming_condition_values=context) for policy in policies}
        if PermissionResult.DENIED in results:
            return "explicitDeny"
        return "allowed" if PermissionResult.PERMITTED in results else "implicitDeny"

    resources = response._get_param("ResourceArns", []) or ["*"]
    results = []
    for action in response._get_param("ActionNames", []):
        decisions = [(resource, decision(action, resource)) for resource in resources]
        overall = next((d for _, d in decisions if d != "allowed"), "allowed")
        results.append({"EvalActionName": action, "EvalResourceName": resources[0] if len(resources) == 1 else "*",
                        "EvalDecision": overall,
                        **({"ResourceSpecificResults": [{"EvalResourceName": resource, "EvalResourceDecision": d}
                                                        for resource, d in decisions]} if len(resources) > 1 else {})})
    return ActionResult({"EvaluationResults": results, "IsTruncated": False})


def training_quota_code(instance_type: str) -> str:
    return "L-" + hashlib.sha1(instance_type.encode()).hexdigest()[:8].upper()


def _list_service_quotas(response: Any, training_quotas: dict[str, float]) -> str:
    from moto.servicequotas.exceptions import NoSuchResource

    params = json.loads(response.body)
    if params.get("ServiceCode") != "sagemaker":
        raise NoSuchResource
    region, account = response.region, response.current_account
    quotas = [{"ServiceCode": "sagemaker", "ServiceName": "Amazon SageMaker", "QuotaCode": training_quota_code(kind),
               "QuotaArn": f"arn:aws:servicequotas:{region}:{account}:sagemaker/{training_quota_code(kind)}",
               "QuotaName": f"{kind} for training job usage", "Value": value, "Unit": "None", "Adjustable": True,
               "GlobalQuota": False} for kind, value in sorted(training_quotas.items())]
    return json.dumps({"Quotas": quotas})


def _model_id(job: Any) -> str:
    return next((tag["Value"] for tag in job.tags or [] if tag["Key"] == "model-selection:model-id"), "?")


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


@contextlib.contextmanager
def serving(tmp_path: Path, monkeypatch: Any, models: list[str], **options: Any) -> Iterator[FakeSageMaker]:
    """The fake endpoint, JumpStart metadata for `models`, the Airflow connection, and a data set in S3."""
    from jumpstart_fixtures import write_jumpstart_metadata
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    from model_selection.backends import jumpstart

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in write_jumpstart_metadata(tmp_path / "jumpstart", models, region=REGION).items():
        monkeypatch.setenv(name, value)
    jumpstart._session.cache_clear()
    JumpStartModelsAccessor.reset_cache()
    service = FakeSageMaker(**options)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", service.connection())
    s3 = service.client("s3")
    s3.create_bucket(Bucket="study-data", CreateBucketConfiguration={"LocationConstraint": REGION})
    for channel in ("training", "validation", "test"):
        for label in ("cat", "dog"):
            s3.put_object(Bucket="study-data", Key=f"pets/{channel}/{label}/0001.jpg", Body=b"jpeg")
    try:
        yield service
    finally:
        service.close()


def upload_folder(s3: Any, folder: Path, bucket: str, prefix: str, suffixes: tuple[str, ...] = (".png", ".jpg")) -> int:
    """Every image file under `folder` to `s3://bucket/prefix/<its path below folder>`; returns how many."""
    paths = sorted(path for path in Path(folder).rglob("*") if path.suffix.lower() in suffixes)
    for path in paths:
        s3.put_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}",
                      Body=path.read_bytes())
    return len(paths)


def write_hub_cache(root: Path, repositories: dict[str, dict[str, Path]]) -> Path:
    """A Hugging Face hub cache under `root` (the folder HF_HOME names) holding, for each model repository
    id ("timm/<model>.<tag>"), the given files ({file name in the repository: local file}), laid out as
    huggingface_hub's downloads leave them: `hub/models--<owner>--<name>/blobs/<sha256>`, the file in
    `snapshots/<revision>/` as a relative link to its blob, and `refs/main` naming that revision. With
    HF_HUB_OFFLINE=1, `hf_hub_download` resolves `main` through refs/main and returns the snapshot's file.
    The revision is a digest of the files, so the same files always give the same cache. Returns `root`."""
    for repository, files in repositories.items():
        folder = Path(root) / "hub" / ("models--" + repository.replace("/", "--"))
        blobs = {name: hashlib.sha256(Path(path).read_bytes()).hexdigest() for name, path in sorted(files.items())}
        revision = hashlib.sha1(json.dumps(blobs, sort_keys=True).encode()).hexdigest()
        snapshot = folder / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        (folder / "blobs").mkdir(exist_ok=True)
        for name, digest in blobs.items():
            blob = folder / "blobs" / digest
            if not blob.exists():
                blob.write_bytes(Path(files[name]).read_bytes())
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    return Path(root)


def dag_environment(root: Path) -> dict[str, str]:
    """`airflow dags test`'s environment (airflow_env) with an Airflow home, jobs root and results under
    `root`, reaching this process's fake: the AWS_* variables (JumpStart metadata overrides included) and
    the AWS connection (AIRFLOW_CONN_*) that `serving` set."""
    from airflow_env import airflow_environment

    environment = airflow_environment(root / "home", root / "jobs", root / "results")
    environment.update({name: os.environ[name] for name in os.environ if name.startswith(("AWS_", "AIRFLOW_CONN_"))})
    return environment


def _error(start_response: Any, code: str, message: str, status: str = "400 Bad Request") -> list[bytes]:
    """An error as SageMaker sends it on the wire: JSON `__type` and `message`, and the error type header."""
    body = json.dumps({"__type": code, "message": message}).encode()
    start_response(status, [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(body))),
                            ("x-amzn-ErrorType", code)])
    return [body]


def _sagemaker_call(environ: dict) -> tuple[str | None, dict]:
    """(operation, request body) of a SageMaker call; the body is put back for moto to read."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if not target.startswith("SageMaker."):
        return None, {}
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(raw)
    try:
        return target.rsplit(".", 1)[-1], json.loads(raw or b"{}")
    except ValueError:
        return target.rsplit(".", 1)[-1], {}


def _subject(request: dict) -> str:
    """The job (or, for a listing, the name filter) a SageMaker request is about."""
    return str(request.get("HyperParameterTuningJobName") or request.get("TrainingJobName")
               or request.get("NameContains") or "")


class ServerThrottle:
    """WSGI middleware: answers ThrottlingException to calls of the given SageMaker operations, exactly as the
    service does on the wire (HTTP 400, JSON `__type`), before moto sees the request.

    `burst=0`: every other call of each operation. `burst=k`: for each operation and job (or listing
    filter), the first k of every k+1 requests, so a client whose retry budget is at most k attempts
    per call sees the throttle itself (a burst that outlasts botocore's retries)."""

    def __init__(self, operations: tuple[str, ...], burst: int = 0):
        self.operations = operations
        self.burst = burst
        self.calls: Counter = Counter()
        self.throttled: Counter = Counter()
        self._lock = threading.Lock()

    def wrap(self, app: Any) -> Any:
        def throttling(environ: dict, start_response: Any) -> Any:
            operation, request = _sagemaker_call(environ)
            if operation in self.operations:
                key = (operation, _subject(request)) if self.burst else (operation, "")
                with self._lock:
                    self.calls[key] += 1
                    period = self.burst + 1 if self.burst else 2
                    throttle = self.calls[key] % period != 0
                    self.throttled[operation] += throttle
                if throttle:
                    return _error(start_response, "ThrottlingException", "Rate exceeded")
            return app(environ, start_response)

        return throttling


class ServerQuota:
    """WSGI middleware: the account's quota of training instances, as SageMaker keeps it.

    A tuning job holds MaxParallelTrainingJobs x InstanceCount instances of its type while InProgress or
    Stopping. CreateHyperParameterTuningJob is refused with HTTP 400 `ResourceLimitExceeded` and the
    service's message when the jobs in flight (moto's own state, whichever process created them) and the
    new one would exceed `jobs` tuning jobs' worth. The count and the create happen under one lock, as the
    service admits one request at a time against its count."""

    def __init__(self, fake: FakeSageMaker, jobs: int | None):
        self.fake = fake
        self.jobs = jobs
        self.refused = 0
        self.created = 0
        self._lock = threading.Lock()

    @staticmethod
    def instances(definition: dict, config: dict) -> int:
        return int(config["ResourceLimits"]["MaxParallelTrainingJobs"]) * int(
            definition["ResourceConfig"].get("InstanceCount", 1))

    def wrap(self, app: Any) -> Any:
        def quota(environ: dict, start_response: Any) -> Any:
            operation, request = _sagemaker_call(environ)
            if operation != "CreateHyperParameterTuningJob" or self.jobs is None:
                return app(environ, start_response)
            definition = request["TrainingJobDefinition"]
            delta = self.instances(definition, request["HyperParameterTuningJobConfig"])
            instance_type = definition["ResourceConfig"]["InstanceType"]
            with self._lock:
                used = sum(self.instances(job.training_job_definition, job.hyper_parameter_tuning_job_config)
                           for job in list(self.fake.backend.hyper_parameter_tuning_jobs.values())
                           if job.hyper_parameter_tuning_job_status in ("InProgress", "Stopping"))
                limit = self.jobs * delta
                if used + delta > limit:
                    self.refused += 1
                    return _error(start_response, "ResourceLimitExceeded", (
                        f"The account-level service limit '{instance_type} for training job usage' is {limit} "
                        f"Instances, with current utilization of {used} Instances and a request delta of {delta} "
                        "Instances. Please use AWS Service Quotas to request an increase for this quota."))
                answer = list(app(environ, start_response))  # created before the lock is let go
                self.created += 1
                return answer

        return quota


class ServerDeny:
    """WSGI middleware: AccessDeniedException, as IAM answers it, to DescribeHyperParameterTuningJob and
    DescribeTrainingJob of the jobs whose names start with one of `prefixes` (`active` turns it on and off)."""

    OPERATIONS = ("DescribeHyperParameterTuningJob", "DescribeTrainingJob")

    def __init__(self, prefixes: tuple[str, ...] = (), operations: tuple[str, ...] = OPERATIONS):
        self.prefixes = tuple(prefixes)
        self.operations = operations
        self.denied: Counter = Counter()

    def wrap(self, app: Any) -> Any:
        def deny(environ: dict, start_response: Any) -> Any:
            operation, request = _sagemaker_call(environ)
            name = _subject(request)
            if operation in self.operations and self.prefixes and name.startswith(self.prefixes):
                self.denied[operation] += 1
                kind = "hyper-parameter-tuning-job" if "Tuning" in operation else "training-job"
                return _error(start_response, "AccessDeniedException", (
                    f"User: arn:aws:sts::{ACCOUNT}:assumed-role/airflow-worker/botocore-session is not authorized "
                    f"to perform: sagemaker:{operation} on resource: arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/"
                    f"{name.lower()} with an explicit deny in an identity-based policy"))
            return app(environ, start_response)

        return deny


@dataclasses.dataclass(frozen=True)
class _Stoppable:
    noun: str  # "tuning job", "training job"
    name_key: str  # the request's job-name field
    jobs: str  # moto's backend dict of such jobs
    status: str  # the job's status attribute
    unknown: tuple[str, str]  # (code, message) SageMaker answers for a name it does not know


class ServerStop:
    """WSGI middleware: StopHyperParameterTuningJob and StopTrainingJob, which moto's server does not implement,
    as SageMaker answers them: an InProgress job turns Stopping (the driver, or the training job's run, then
    ends it Stopped) and the answer is empty; a job in another status is a ValidationException; an unknown
    name is ResourceNotFound for a tuning job and ValidationException "Requested resource not found." for a
    training job."""

    OPERATIONS = {
        "StopHyperParameterTuningJob": _Stoppable(
            "tuning job", "HyperParameterTuningJobName", "hyper_parameter_tuning_jobs",
            "hyper_parameter_tuning_job_status", ("ResourceNotFound", "Amazon SageMaker can't find a tuning job with "
                                                                      "name {name}")),
        "StopTrainingJob": _Stoppable("training job", "TrainingJobName", "training_jobs", "training_job_status",
                                      ("ValidationException", TRAINING_JOB_NOT_FOUND)),
    }

    def __init__(self, fake: FakeSageMaker):
        self.fake = fake
        self.stopped: list[str] = []

    def wrap(self, app: Any) -> Any:
        def stop(environ: dict, start_response: Any) -> Any:
            operation, request = _sagemaker_call(environ)
            if operation:
                self.fake.calls[(operation, _subject(request))] += 1  # every SageMaker request moto answers
            kind = self.OPERATIONS.get(operation)
            if kind is None:
                return app(environ, start_response)
            name = request.get(kind.name_key, "")
            job = getattr(self.fake.backend, kind.jobs).get(name)
            if job is None:
                code, message = kind.unknown
                return _error(start_response, code, message.format(name=name))
            status = getattr(job, kind.status)
            if status != "InProgress":
                return _error(start_response, "ValidationException",
                              f"The request was rejected because the {kind.noun} is in status {status}.")
            setattr(job, kind.status, "Stopping")
            if kind.noun == "training job":  # its secondary status says so too
                job.secondary_status = "Stopping"
            self.stopped.append(name)
            start_response("200 OK", [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", "2")])
            return [b"{}"]

        return stop


class ServerTrainingJobs:
    """WSGI middleware: what SageMaker does with a standalone training job that moto's server does not.

    CreateTrainingJob of a name in use is ResourceInUse with the service's message (moto would replace the
    job); a new job starts InProgress in the secondary status Starting, with the AlgorithmSpecification it
    was sent (moto completes it at once and adds a canned metric definition), and the driver runs it
    (`TrainingRun`). The tuning jobs' trials (`trial_names`) are left as moto makes them. DescribeTrainingJob
    of an unknown name is the service's ValidationException "Requested resource not found.". The check and
    the create happen under one lock, as the service admits one create of a name."""

    def __init__(self, fake: FakeSageMaker):
        self.fake = fake
        self._lock = threading.Lock()

    def wrap(self, app: Any) -> Any:
        def training_jobs(environ: dict, start_response: Any) -> Any:
            operation, request = _sagemaker_call(environ)
            name = request.get("TrainingJobName", "")
            jobs = self.fake.backend.training_jobs
            if operation == "DescribeTrainingJob" and name not in jobs:
                return _error(start_response, "ValidationException", TRAINING_JOB_NOT_FOUND)
            if operation != "CreateTrainingJob" or name in self.fake.trial_names:
                return app(environ, start_response)
            with self._lock:
                if name in jobs:
                    return _error(start_response, "ResourceInUse", (
                        "Training job names must be unique within an AWS account and region, and a training job "
                        f"with this name already exists ({jobs[name].arn})"))
                answer = list(app(environ, start_response))
                job = jobs.get(name)
                if job is not None:  # created (moto refuses nothing the contract check lets through)
                    job.algorithm_specification = request["AlgorithmSpecification"]
                    job.final_metric_data_list = []
                    job.model_artifacts = job.training_end_time = None
                    job.secondary_status_transitions = [{"Status": "Starting", "StartTime": _now(),
                                                         "StatusMessage": "Launching requested ML instances"}]
                    job.secondary_status = "Starting"
                    job.training_job_status = "InProgress"
                return answer

        return training_jobs


class TrainingRun:
    """One standalone training job, run as SageMaker's training toolkit runs a script-mode job (module docstring)."""

    def __init__(self, fake: FakeSageMaker, job: Any):
        self.fake = fake
        self.job = job
        self.name = job.training_job_name
        self.s3 = fake.client("s3")
        self.process: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, name=f"training job {self.name}", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fake-sagemaker-") as folder:
            try:
                status, reason, log = self._train(Path(folder))
            except Exception as error:  # noqa: BLE001 - the fake's own failure must end the job, not hang the test
                status, reason, log = "Failed", f"InternalServerError: the fake could not run the job: {error!r}", ""
        try:
            self.fake.put_training_log(self.name, log)
        finally:  # the job ends whatever happens to its log
            job = self.job
            job.training_time_in_seconds = job.billable_time_in_seconds = max(1, math.ceil(time.monotonic() - started))
            if reason:
                job.failure_reason = reason[:1024]  # FailureReason's limit
            self._phase(status, {"Completed": "Training job completed", "Failed": "Training job failed",
                                 "Stopped": "Training job stopped"}[status])
            job.training_end_time = job.last_modified_time = _now()
            job.training_job_status = status

    def _stopping(self) -> bool:
        return self.job.training_job_status == "Stopping" or self.fake._stop.is_set()

    def _phase(self, status: str, message: str) -> None:
        """A secondary status, as DescribeTrainingJob's SecondaryStatusTransitions show it."""
        now = _now()
        transitions = self.job.secondary_status_transitions
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1]["EndTime"] = now
        transitions.append({"Status": status, "StartTime": now, "StatusMessage": message})
        self.job.secondary_status = status
        self.job.last_modified_time = now

    def _train(self, root: Path) -> tuple[str, str | None, str]:
        """(status, failure reason, log): download, run the program, upload its model folder."""
        job, hyperparameters = self.job, dict(self.job.hyper_parameters or {})
        self._phase("Downloading", "Downloading input data")
        channels = {}
        for channel in job.input_data_config or []:
            channels[channel["ChannelName"]] = self._download_prefix(
                channel["DataSource"]["S3DataSource"]["S3Uri"], root / "input" / "data" / channel["ChannelName"])
        program, source = hyperparameters.get("sagemaker_program"), hyperparameters.get("sagemaker_submit_directory")
        if not (program and source):
            return "Failed", "AlgorithmError: no sagemaker_program and sagemaker_submit_directory to run", ""
        code = root / "code"
        with tarfile.open(fileobj=io.BytesIO(self._get(source)), mode="r:gz") as archive:
            archive.extractall(code, filter="data")
        unmet = unsatisfied_requirements(code / "requirements.txt")
        if unmet:
            return "Failed", f"AlgorithmError: InstallRequirementsError: {'; '.join(unmet)}", ""
        if self._stopping():
            return "Stopped", None, ""
        self._phase("Training", "Training image download completed. Training in progress.")
        model_dir = root / "model"
        model_dir.mkdir()
        user = {key: value for key, value in hyperparameters.items() if not key.startswith("sagemaker_")}
        decoded = {key: _json_or_text(value) for key, value in user.items()}
        arguments = [item for key in sorted(user) for item in (f"--{key}", user[key])]
        config = root / "input" / "config"
        config.mkdir(parents=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        environment = {
            **{key: value for key, value in os.environ.items()
               if not key.startswith(("AWS_", "AIRFLOW_", "MODEL_SELECTION_", "HF_", "HUGGINGFACE_"))
               and key != "PYTHONPATH"},
            "HF_HUB_OFFLINE": "1",  # no network here: the only hub is the one container_environment names
            **self.fake.container_environment,
            "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
            "SM_INPUT_DIR": str(root / "input"), "SM_INPUT_CONFIG_DIR": str(config),
            "SM_CHANNELS": json.dumps(sorted(channels)), "SM_HPS": json.dumps(decoded),
            "SM_USER_ARGS": json.dumps(arguments), "SM_MODULE_DIR": source, "SM_USER_ENTRY_POINT": program,
            "SM_CURRENT_HOST": "algo-1", "SM_HOSTS": json.dumps(["algo-1"]), "SM_NUM_GPUS": "0",
            **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
            **{f"SM_HP_{key.upper()}": value for key, value in user.items()},
        }
        command = [sys.executable, program, *arguments]
        log_path = root / "log.txt"
        with log_path.open("wb") as log:
            self.process = process = subprocess.Popen(command, cwd=code, env=environment, stdout=log,
                                                      stderr=subprocess.STDOUT, start_new_session=True)
            while process.poll() is None:
                if self._stopping():
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return "Stopped", None, log_path.read_text(errors="replace")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
        text = log_path.read_text(errors="replace")
        if process.returncode != 0:
            tail = text.strip()[-600:]
            return "Failed", (f'AlgorithmError: ExecuteUserScriptError:\nExitCode {process.returncode}\n'
                              f'ErrorMessage "{tail}"\nCommand "{" ".join(["python", program, *arguments])}", '
                              f"exit code: {process.returncode}"), text
        self._phase("Uploading", "Uploading generated training model")
        artifact = f"{job.output_data_config['S3OutputPath'].rstrip('/')}/{self.name}/output/model.tar.gz"
        bucket, key = _split(artifact)
        self.s3.put_object(Bucket=bucket, Key=key, Body=_tar_folder(model_dir))
        job.model_artifacts = {"S3ModelArtifacts": artifact}
        return "Completed", None, text

    def _get(self, uri: str) -> bytes:
        bucket, key = _split(uri)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def _download_prefix(self, uri: str, folder: Path) -> Path:
        """Every object under an S3Prefix channel, at its path below the prefix (as File mode lays them out)."""
        bucket, prefix = _split(uri)
        folder.mkdir(parents=True, exist_ok=True)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(prefix):].lstrip("/") or item["Key"].rsplit("/", 1)[-1]
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        return folder


def unsatisfied_requirements(path: Path) -> list[str]:
    """The lines of a requirements.txt this python does not already satisfy (none when there is no file)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    if not path.exists():
        return []
    unmet = []
    for line in (raw.split("#")[0].strip() for raw in path.read_text().splitlines()):
        if not line:
            continue
        try:
            requirement = Requirement(line)
            installed = version(requirement.name)
        except InvalidRequirement as error:
            unmet.append(f"{line!r}: {error}")
            continue
        except PackageNotFoundError:
            unmet.append(f"{line}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line}: {installed} installed")
    return unmet


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _tar_folder(folder: Path) -> bytes:
    """model.tar.gz of a folder's contents, members named relative to it (as SageMaker packs /opt/ml/model)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


class ThrottlingMotoServer(ThreadedMotoServer):
    """moto's threaded server with `ServerThrottle` (and the other middlewares) in front of its application."""

    def __init__(self, throttle: ServerThrottle, middlewares: tuple[Any, ...] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.throttle = throttle
        self.middlewares = middlewares  # innermost first; the throttle answers before any of them

    def _server_entry(self) -> None:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        for middleware in self.middlewares:
            app = middleware.wrap(app)
        app = self.throttle.wrap(app)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class Throttle:
    """Answers ThrottlingException to every other call of the given operations, as botocore would receive it."""

    def __init__(self, operations: tuple[str, ...]):
        self.operations = operations
        self.calls: Counter = Counter()
        self.throttled: Counter = Counter()

    def __call__(self, request, event_name: str, **kwargs):
        operation = event_name.rsplit(".", 1)[-1]
        if operation not in self.operations:
            return None
        self.calls[operation] += 1
        if self.calls[operation] % 2:
            self.throttled[operation] += 1
            body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
            return AWSResponse(request.url, 400, {"x-amzn-ErrorType": "ThrottlingException"}, _Raw(body))
        return None


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs):
        yield self.body
