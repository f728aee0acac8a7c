"""A real SageMaker/S3 HTTP endpoint (moto's server, in this process) whose tuning jobs have a life.

moto finishes a tuning job the moment it is created, with no training jobs and a best
training job that does not exist. Tests need jobs that run, then complete with real
training jobs and metrics, fail or stop. This adds the least that does it: new tuning
jobs start InProgress, and a driver thread ends each one after `run_seconds` by creating
its training jobs through the API and filling their FinalMetricDataList exactly as
SageMaker does, by applying the request's metric regexes to a training log written in
the JumpStart script's format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
                 stopped_in_console: tuple[str, ...] = (), run_seconds_by_model: dict[str, float] | None = None,
                 server_throttle: tuple[str, ...] = ()):
        # Throttling answered by the server itself, so it reaches clients in any process (real Airflow).
        self.server_throttle = ServerThrottle(server_throttle)
        self.server = ThrottlingMotoServer(self.server_throttle, ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"))  # moto keeps state per process
        self.run_seconds = run_seconds
        self.run_seconds_by_model = dict(run_seconds_by_model or {})  # model id -> its jobs' run time, if not run_seconds
        self.failing = failing
        self.missing_metrics = missing_metrics  # left out of FinalMetricDataList: only the log has them
        self.started: dict[str, float] = {}
        self.stop_requested: set[str] = set()
        self.finish_requested: set[str] = set()
        self.stopped_in_console = stopped_in_console  # model ids whose jobs someone stops as soon as they run
        self._stop = threading.Event()
        self._patch_new_jobs_to_start_in_progress()
        self._driver = threading.Thread(target=self._drive, daemon=True)
        self._driver.start()

    # -- set-up ------------------------------------------------------------------------------------
    def connection(self) -> str:
        """The Airflow AWS connection (as AIRFLOW_CONN_AWS_DEFAULT) that reaches this endpoint."""
        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                           "extra": {"region_name": REGION, "endpoint_url": self.endpoint}})

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

    def close(self) -> None:
        from moto.sagemaker import models

        self._stop.set()
        self._driver.join(timeout=5)
        models.HyperParameterTuningJob.__init__ = self._original_init
        self.server.stop()

    # -- what a test does to jobs ----------------------------------------------------------------
    def in_flight(self) -> int:
        return sum(job.hyper_parameter_tuning_job_status == "InProgress"
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
                if job.hyper_parameter_tuning_job_status != "InProgress":
                    continue
                self.started.setdefault(name, time.monotonic())
                if name in self.stop_requested or _model_id(job) in self.stopped_in_console:
                    self._end(job, "Stopped", "Stopped by a user in the console")
                elif name in self.finish_requested or time.monotonic() - self.started[name] >= \
                        self.run_seconds_by_model.get(_model_id(job), self.run_seconds):
                    self._finish(job)
            time.sleep(0.05)

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
        if any(marker in model_id for marker in self.failing):
            self._end(job, "Failed", "No training job succeeded after 2 attempts. AlgorithmError: ExecuteUserScriptError: "
                                     "CUDA out of memory")
            return
        sagemaker, logs = self.client("sagemaker"), self.client("logs")
        if "/aws/sagemaker/TrainingJobs" not in [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]:
            logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
        rates = job.hyper_parameter_tuning_job_config["ParameterRanges"]["CategoricalParameterRanges"][0]["Values"]
        trials = []
        for index, rate in enumerate(rates, start=1):
            name = f"{job.hyper_parameter_tuning_job_name}-{index:03d}-{hashlib.sha1(rate.encode()).hexdigest()[:8]}"
            sagemaker.create_training_job(
                TrainingJobName=name, HyperParameters={**static, "learning_rate": rate},
                AlgorithmSpecification={key: definition["AlgorithmSpecification"][key]
                                        for key in ("TrainingImage", "TrainingInputMode")},
                RoleArn=definition["RoleArn"], InputDataConfig=definition["InputDataConfig"],
                OutputDataConfig=definition["OutputDataConfig"], ResourceConfig=definition["ResourceConfig"],
                StoppingCondition=definition["StoppingCondition"],
            )
            text = jumpstart_log(model_id, float(rate))
            stream = f"{name}/algo-1-1700000000"
            logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
            logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream,
                                logEvents=[{"timestamp": int(time.time() * 1000), "message": line}
                                           for line in text.splitlines()])
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


class ServerThrottle:
    """WSGI middleware: answers ThrottlingException to every other call of the given SageMaker operations,
    exactly as the service does on the wire (HTTP 400, JSON `__type`), before moto sees the request."""

    def __init__(self, operations: tuple[str, ...]):
        self.operations = operations
        self.calls: Counter = Counter()
        self.throttled: Counter = Counter()
        self._lock = threading.Lock()

    def wrap(self, app: Any) -> Any:
        def throttling(environ: dict, start_response: Any) -> Any:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            operation = target.rsplit(".", 1)[-1] if target.startswith("SageMaker.") else None
            if operation in self.operations:
                with self._lock:
                    self.calls[operation] += 1
                    throttle = self.calls[operation] % 2 == 1
                    self.throttled[operation] += throttle
                if throttle:
                    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                    start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.1"),
                                                       ("Content-Length", str(len(body)))])
                    return [body]
            return app(environ, start_response)

        return throttling


class ThrottlingMotoServer(ThreadedMotoServer):
    """moto's threaded server with `ServerThrottle` in front of its application."""

    def __init__(self, throttle: ServerThrottle, **kwargs: Any):
        super().__init__(**kwargs)
        self.throttle = throttle

    def _server_entry(self) -> None:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = self.throttle.wrap(DomainDispatcherApplication(create_backend_app))
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
