"""One SageMaker-shaped client per backend; callers never branch on which.

`get_client("local", jobs_root=...)` runs tuning jobs on this machine;
`get_client("sagemaker", aws_conn_id=...)` is boto3's SageMaker client from the Amazon
provider's hook, with adaptive retries unless the connection's extra says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BACKENDS = ("local", "sagemaker")
DEFAULT_RETRIES = {"mode": "adaptive", "max_attempts": 20}


def get_client(backend: str, jobs_root: str | None = None, aws_conn_id: str | None = "aws_default",
               region_name: str | None = None) -> Any:
    if backend == "local":
        from model_selection.backends.local import LocalSageMakerClient

        return LocalSageMakerClient(jobs_root)
    if backend == "sagemaker":
        from model_selection.backends.sagemaker import sagemaker_client

        return sagemaker_client(aws_conn_id=aws_conn_id, region_name=region_name)
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def get_log_reader(backend: str, jobs_root: str | None = None, aws_conn_id: str | None = "aws_default",
                   region_name: str | None = None) -> Callable[[str], str]:
    """A training job's log by name: CloudWatch Logs for SageMaker, the job's log file locally."""
    if backend == "local":
        from model_selection.backends.local import LocalSageMakerClient

        return LocalSageMakerClient(jobs_root).training_job_log
    from model_selection.backends.sagemaker import cloudwatch_training_log

    return lambda name: cloudwatch_training_log(name, aws_conn_id=aws_conn_id, region_name=region_name)
