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


ROLE_VARIABLE = "model_selection_role_arn"
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
CONTAINER_LOG_LEVEL = "20"


def execution_role(explicit: str | None, aws_conn_id: str | None) -> str | None:
    """The DAG param, else the Airflow Variable, else the connection extra `execution_role_arn`."""
    if explicit:
        return explicit
    from airflow.sdk import Variable

    role = Variable.get(ROLE_VARIABLE, default=None)
    if role:
        return role
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sagemaker").conn_config.extra_config.get("execution_role_arn")


def _empty_prefixes(study: Any) -> list[str]:
    """Dataset channels under which S3 holds no object: a typo found before anything is launched."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=study.aws_conn_id, region_name=study.region_name)
    problems = []
    for channel, uri in study.dataset.channels().items():
        bucket, prefix = S3Hook.parse_s3_url(uri)
        try:
            found = hook.get_conn().list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1)
        except Exception as error:  # noqa: BLE001 - a missing bucket or no access both mean "unusable"
            problems.append(f"dataset.{channel} {uri}: {type(error).__name__}: {error}")
            continue
        if not found.get("KeyCount"):
            problems.append(f"dataset.{channel} {uri} is empty or does not exist")
    return problems


def sagemaker_launch_specs(study: Any, study_hyperparameters: dict[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Resolve every JumpStart model (those the filters select too) and build its `build_tuning_request`
    arguments, in model-list order; list every problem."""
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    from model_selection.backends.jumpstart import JumpStartError, list_models, resolve
    from model_selection.study import FILTER_CONDITION
    from model_selection.tuning_request import channel, learning_rate_values

    problems: list[str] = []
    region = study.region_name or SageMakerHook(aws_conn_id=study.aws_conn_id).conn_region_name
    if not region:
        problems.append(f"no AWS region: set region_name or the region of connection {study.aws_conn_id!r}")
    role = execution_role(study.role_arn, study.aws_conn_id)
    if not role:
        problems.append(f"no SageMaker execution role: set role_arn, the Variable {ROLE_VARIABLE} "
                        "or the connection extra execution_role_arn")
    if not (study.output_path or "").startswith("s3://"):
        problems.append(f"output_path {study.output_path!r} must be an s3:// location for the model artifacts")
    if not problems:
        problems += _empty_prefixes(study)
    specs: dict[str, dict[str, Any]] = {}
    model_ids = list(study.model_ids)
    for conditions in study.model_filters if region else ():
        if not all(FILTER_CONDITION.match(condition) for condition in conditions):
            continue  # the study has named the malformed condition already
        selected = list_models(list(conditions), region)
        if not selected:
            problems.append(f"model filter {' & '.join(conditions)!r} selects no JumpStart model in {region}")
        model_ids += [model_id for model_id in selected if model_id not in model_ids]
    for model_id in model_ids if region else ():
        try:
            model = resolve(model_id, study.instance_type, region)
        except JumpStartError as error:
            problems.append(str(error))
            continue
        unknown = sorted(set(study.hyperparameters) - set(model.default_hyperparameters))
        if unknown:
            problems.append(f"{model_id}: hyperparameters {unknown} are not among the model's "
                            f"{sorted(model.default_hyperparameters)}")
            continue
        default_rate = float(study.hyperparameters.get("learning_rate", model.default_hyperparameters["learning_rate"]))
        specs[model_id] = {
            "static_hyperparameters": {
                **model.default_hyperparameters,
                **study_hyperparameters,
                "sagemaker_program": model.entry_point,
                "sagemaker_submit_directory": model.training_script_uri,
                "sagemaker_container_log_level": CONTAINER_LOG_LEVEL,
                "sagemaker_region": region,
            },
            "learning_rates": learning_rate_values(default_rate, study.learning_rate_multipliers),
            "channels": study.dataset.channels(),
            "extra_channels": [channel("model", model.model_artifact_uri, "application/x-sagemaker-model")],
            "training_image": model.training_image_uri,
            "instance_type": study.instance_type,
            "role_arn": role or "",
            "output_path": study.output_path or "",
        }
    return specs, problems


def cloudwatch_training_log(name: str, aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> str:
    """Every stream of the training job (`NAME/algo-1-...`) in CloudWatch Logs, as one text."""
    from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

    hook = AwsLogsHook(aws_conn_id=aws_conn_id, region_name=region_name)
    streams = hook.conn.describe_log_streams(logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{name}/")
    lines = []
    for stream in streams.get("logStreams", []):
        events = hook.get_log_events(TRAINING_LOG_GROUP, stream["logStreamName"], start_from_head=True)
        lines += [event["message"] for event in events]
    return "\n".join(lines)
