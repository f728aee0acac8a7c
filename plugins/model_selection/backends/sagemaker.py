"""boto3's SageMaker client through the Amazon provider's hook and connection."""

from __future__ import annotations

from typing import Any

from model_selection.backends import DEFAULT_RETRIES


def sagemaker_client(aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> Any:
    """Credentials, region and endpoint come from the Airflow connection, never from code.

    Retries are adaptive with many attempts, so throttled calls back off instead of failing;
    a connection extra `{"config_kwargs": {"retries": {...}}}` overrides that.
    """
    from botocore.config import Config

    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    from_connection = SageMakerHook(aws_conn_id=aws_conn_id, region_name=region_name).conn_config.botocore_config
    config = Config(retries=DEFAULT_RETRIES)
    if from_connection is not None:
        config = config.merge(from_connection)  # the connection's settings win
    return SageMakerHook(aws_conn_id=aws_conn_id, region_name=region_name, config=config).conn
