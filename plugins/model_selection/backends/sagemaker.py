"""boto3's SageMaker client through the Amazon provider's hook and connection."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

from model_selection.hooks import TuningJobHook

# Adaptive retries with many attempts, as the JumpStart notebook does; the connection's own
# `config_kwargs` win over these.
DEFAULT_RETRIES = {"mode": "adaptive", "max_attempts": 20}


class SageMakerTuningJobHook(TuningJobHook, SageMakerHook):
    """boto3's SageMaker client from the Airflow connection: credentials, region, endpoint, retries.

    Credentials, region and endpoint come from the connection, never from code. Retries are
    adaptive with many attempts, so throttled calls back off inside botocore first; a
    connection extra `{"config_kwargs": {"retries": {...}}}` overrides that.

    Every client it makes (`conn`, the async one too) holds every request, of every operation,
    to SageMaker's service model before sending it (`api.hold_to_service_model`): a request the
    service would refuse raises `RequestRefused`, naming the operation and each problem, and is
    never sent. S3 (the screen's staged source and its model.tar.gz) goes through the provider's
    S3 hook over the same connection.
    """

    def __init__(self, aws_conn_id: str | None = "aws_default", region_name: str | None = None):
        from botocore.config import Config

        super().__init__(aws_conn_id=aws_conn_id, region_name=region_name)
        from_connection = self.conn_config.botocore_config
        retries = Config(retries=DEFAULT_RETRIES)
        self._config = retries.merge(from_connection) if from_connection is not None else retries  # the connection wins

    @property
    def config(self) -> Any:
        return self._config

    def get_client_type(self, *args: Any, **kwargs: Any) -> Any:
        from model_selection.backends.api import hold_to_service_model

        return hold_to_service_model(super().get_client_type(*args, **kwargs))

    def training_log(self, training_job_name: str) -> str:
        return cloudwatch_training_log(training_job_name, aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    def stage(self, job_name: str, filename: str, data: bytes, output_path: str) -> str:
        """An S3 object `<output_path>/<job_name>/source/<filename>`, put with the same AWS connection."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, prefix = S3Hook.parse_s3_url(output_path)
        key = "/".join(part for part in (prefix.strip("/"), job_name, "source", filename) if part)
        self._s3().load_bytes(data, key=key, bucket_name=bucket, replace=True)
        return f"s3://{bucket}/{key}"

    def read_artifact(self, uri: str) -> bytes:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, key = S3Hook.parse_s3_url(uri)
        return self._s3().get_conn().get_object(Bucket=bucket, Key=key)["Body"].read()

    def _s3(self) -> Any:
        """The provider's S3 hook over this hook's connection and region: credentials stay in the connection."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    def console_location(self) -> tuple[str, str] | None:
        return self.conn_region_name, self.conn_partition


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


def _empty_prefixes(study: Any, region: str | None = None) -> list[str]:
    """Dataset channels under which S3 holds no object: a typo found before anything is launched.

    Refused or missing credentials and an unreachable region raise AwsAccessError (reported once
    by the caller); a missing permission is one problem per bucket, naming its channels.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from model_selection.backends.jumpstart import access_error

    hook = S3Hook(aws_conn_id=study.aws_conn_id, region_name=region or study.region_name)
    problems = []
    denied: dict[str, tuple[list[str], Any]] = {}  # bucket -> (channels, the first refusal)
    for channel, uri in study.dataset.channels().items():
        bucket, prefix = S3Hook.parse_s3_url(uri)
        try:
            found = hook.get_conn().list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1)
        except Exception as error:  # noqa: BLE001 - a missing bucket or no access both mean "unusable"
            problem = access_error(error, study.aws_conn_id, region, f"listing s3://{bucket}/")
            if problem is not None and problem.kind == "permissions":
                denied.setdefault(bucket, ([], problem))[0].append(channel)
            elif problem is not None:
                raise problem from error
            else:
                problems.append(f"dataset.{channel} {uri}: {type(error).__name__}: {error}")
            continue
        if not found.get("KeyCount"):
            problems.append(f"dataset.{channel} {uri} is empty or does not exist")
    problems += [f"dataset channels {', '.join(channels)}: {refusal}" for channels, refusal in denied.values()]
    return problems


# Hyperparameters only the local trainer understands (model_selection.local.hyperparameters):
# which timm model, where its weights come from and how to run it. They never reach SageMaker.
LOCAL_ONLY_SETTINGS = frozenset({"model_id", "pretrained", "weights_file", "weights_dir", "image_size",
                                 "pretrained_image_size", "device", "num_workers",
                                 "force_top_layer_on_random_weights"})


def sagemaker_launch_specs(study: Any, study_hyperparameters: dict[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Resolve every JumpStart model (those the filters select too) and build its `build_tuning_request`
    arguments, in model-list order; list every problem.

    Credentials and region come from the study's AWS connection (the study's region_name wins over
    the connection's region; boto3's default region is never used). A connection that cannot be
    used (missing, refused or absent credentials, missing permission on the JumpStart catalogue,
    a region without JumpStart or an unreachable endpoint) is one problem, after which no further
    AWS call is made. Each spec also holds the resolved `jumpstart_model_version` and the `tags`
    the SageMaker SDK puts on JumpStart training jobs, then the study's training settings (parallel
    jobs, volume, VPC, KMS keys, isolation, encryption, spot), data channels as prefixes ending in
    '/', and, with network isolation, the training script as a `code` channel.
    """
    from model_selection.backends.jumpstart import (
        AwsAccessError,
        aws_connection,
        check_region,
        ship_script_as_code_channel,
    )
    from model_selection.tuning_request import data_prefix, training_settings

    problems: list[str] = []
    access: AwsAccessError | None = None
    region = study.region_name
    try:
        region = study.region_name or aws_connection(study.aws_conn_id).region_name
    except AwsAccessError as error:
        access = error
    if not region and access is None:
        problems.append(f"no AWS region: set region_name in the study or in the extra of connection {study.aws_conn_id!r}")
    elif access is None:
        try:
            check_region(region, study.aws_conn_id)
        except AwsAccessError as error:
            access = error
    role = execution_role(study.role_arn, study.aws_conn_id)
    if not role:
        problems.append(f"no SageMaker execution role: set role_arn, the Variable {ROLE_VARIABLE} "
                        "or the connection extra execution_role_arn")
    if not (study.output_path or "").startswith("s3://"):
        problems.append(f"output_path {study.output_path!r} must be an s3:// location for the model artifacts")
    specs: dict[str, dict[str, Any]] = {}
    if region and access is None:
        try:
            if not problems:
                problems += _empty_prefixes(study, region)
            classes = _training_class_count(study, region) if not problems else 0
            specs = _jumpstart_specs(study, study_hyperparameters, region, role or "", classes, problems)
        except AwsAccessError as error:
            access = error
    if access is not None:
        problems.append(str(access))
    for model_id, spec in specs.items():
        spec = {**spec, **training_settings(study),
                "channels": {name: data_prefix(uri) for name, uri in spec["channels"].items()}}
        specs[model_id] = ship_script_as_code_channel(spec) if study.enable_network_isolation else spec
    return specs, problems


def _selected_model_ids(study: Any, region: str, problems: list[str]) -> list[str]:
    """The study's model ids, then those its filters select from the region's JumpStart catalogue."""
    from model_selection.backends.jumpstart import list_models
    from model_selection.study import FILTER_CONDITION

    model_ids = list(study.model_ids)
    for conditions in study.model_filters:
        if not all(FILTER_CONDITION.match(condition) for condition in conditions):
            continue  # the study has named the malformed condition already
        selected = list_models(list(conditions), region, study.aws_conn_id)
        if not selected:
            problems.append(f"model filter {' & '.join(conditions)!r} selects no JumpStart model in {region}")
        model_ids += [model_id for model_id in selected if model_id not in model_ids]
    return model_ids


def _training_class_count(study: Any, region: str) -> int:
    """Class folders under the training prefix: the problem type decides which metrics the script prints."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=study.aws_conn_id, region_name=region)
    bucket, prefix = S3Hook.parse_s3_url(study.dataset.training)
    pages = hook.get_conn().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/", Delimiter="/")
    return sum(len(page.get("CommonPrefixes", [])) for page in pages)


def count_images(uri: str, aws_conn_id: str | None, region: str | None, suffixes: tuple[str, ...]) -> int:
    """Image objects under an S3 prefix, over every page of the listing."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, prefix = S3Hook.parse_s3_url(uri)
    pages = S3Hook(aws_conn_id=aws_conn_id, region_name=region).get_conn().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return sum(item["Key"].lower().endswith(suffixes) for page in pages for item in page.get("Contents", []))


def _jumpstart_specs(study: Any, study_hyperparameters: dict[str, str], region: str, role: str, classes: int,
                     problems: list[str]) -> dict[str, dict[str, Any]]:
    """One spec per model that resolves with valid hyperparameters; the others' problems appended."""
    import logging

    from model_selection.metrics import metric_definitions

    from model_selection.backends.jumpstart import JumpStartError, hyperparameter_problems, resolve, sdk_tags
    from model_selection.tuning_request import channel, learning_rate_values

    specs: dict[str, dict[str, Any]] = {}
    dropped: set[str] = set()
    tolerate = study.tolerate_deprecated_or_vulnerable_models
    for model_id in _selected_model_ids(study, region, problems):
        try:
            model = resolve(model_id, study.instance_type, region, study.aws_conn_id, tolerate_flagged=tolerate)
        except JumpStartError as error:
            problems.append(str(error))
            continue
        foreign = set(study.hyperparameters) - set(model.default_hyperparameters)
        local_only = foreign & LOCAL_ONLY_SETTINGS
        unknown = sorted(foreign - local_only)
        if unknown:
            problems.append(f"{model_id}: hyperparameters {unknown} are not among the model's "
                            f"{sorted(model.default_hyperparameters)}")
            continue
        dropped |= local_only
        hyperparameters = {**model.default_hyperparameters,
                           **{name: value for name, value in study_hyperparameters.items() if name not in local_only}}
        if "learning_rate" not in hyperparameters:
            problems.append(f"{model_id}: the model has no learning_rate hyperparameter to tune")
            continue
        refused = hyperparameter_problems(model, hyperparameters, region, study.aws_conn_id, tolerate)
        if refused:
            problems += refused
            continue
        learning_rates = learning_rate_values(float(hyperparameters["learning_rate"]), study.learning_rate_multipliers)
        refused = [f"{problem} (a tuned value: learning_rate × learning_rate_multipliers)" for rate in learning_rates
                   for problem in hyperparameter_problems(model, {"learning_rate": rate}, region, study.aws_conn_id,
                                                          tolerate)]
        if refused:
            problems += refused
            continue
        specs[model_id] = {
            "static_hyperparameters": {
                **hyperparameters,
                "sagemaker_program": model.entry_point,
                "sagemaker_submit_directory": model.training_script_uri,
                "sagemaker_container_log_level": CONTAINER_LOG_LEVEL,
                "sagemaker_region": region,
            },
            "learning_rates": learning_rates,
            "metric_definitions": metric_definitions(classes, hyperparameters.get("binary_mode") == "True"),
            "channels": study.dataset.channels(),
            "extra_channels": [channel("model", model.model_artifact_uri, "application/x-sagemaker-model")],
            "training_image": model.training_image_uri,
            "instance_type": study.instance_type,
            "role_arn": role,
            "output_path": study.output_path or "",
            "jumpstart_model_version": model.model_version,
            "tags": sdk_tags(model),
        }
    if dropped:
        logging.getLogger(__name__).warning(
            "hyperparameters %s are settings of the local trainer only: they are left out of every SageMaker "
            "request", sorted(dropped))
    return specs


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
