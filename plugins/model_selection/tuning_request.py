"""The `CreateHyperParameterTuningJob` request of the benchmarking notebook, as plain data.

Learning rate is a categorical range of the default times each multiplier under the
Grid strategy (so exactly those trials run, all in parallel), the objective is
`val_accuracy` maximised, and the metric definitions are the caller's: those of the data
set's problem type (`metrics.metric_definitions(num_classes, binary)`), so
`FinalMetricDataList` carries every figure the training script prints for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from model_selection.metrics import format_number

if TYPE_CHECKING:
    from model_selection.study import Study

OBJECTIVE_METRIC = "val_accuracy"
LOCAL_TRAINING_IMAGE = "model-selection-local-trainer"
# The local backend runs under no IAM role; the API shape still asks for one.
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/model-selection-local"
# Where a spot training job's container writes checkpoints (the SDK's and the service's default).
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Each training job's run limit (StoppingCondition.MaxRuntimeInSeconds): the service's one day.
MAX_RUNTIME_SECONDS = 24 * 3600


def learning_rate_values(default: float, multipliers: Sequence[float]) -> list[str]:
    """Default × each multiplier, as the strings SageMaker passes; duplicates dropped, order kept."""
    values: list[str] = []
    for multiplier in multipliers:
        value = format_number(float(default) * float(multiplier))
        if value not in values:
            values.append(value)
    return values


def parallel_training_jobs(study: "Study") -> int:
    """Training jobs one tuning job runs at once (`MaxParallelTrainingJobs`): what the quota must allow.

    The default runs every learning rate at once; a smaller number fits an account whose quota
    for the instance type is lower, at the price of a longer tuning job.
    """
    learning_rates = len(set(study.learning_rate_multipliers))
    if study.parallel_training_jobs is None:
        return learning_rates
    return min(study.parallel_training_jobs, learning_rates)


def channel(name: str, uri: str, content_type: str | None = "application/x-image") -> dict[str, Any]:
    """An S3Prefix input channel; without a content type when none is given (as the SDK sends its `code` channel)."""
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}},
        **({"ContentType": content_type} if content_type else {}),
        "InputMode": "File",
    }


def data_prefix(uri: str) -> str:
    """An S3 data channel's prefix ending in '/': `s3://b/train` would also read `s3://b/train-old/...`."""
    return uri if uri.endswith("/") else uri + "/"


def training_settings(study: "Study") -> dict[str, Any]:
    """The study's settings of how training jobs run, as `build_tuning_request` arguments.

    The local backend honours parallelism only (the study refuses the others there).
    """
    settings: dict[str, Any] = {"max_parallel_training_jobs": parallel_training_jobs(study)}
    if study.backend != "sagemaker":
        return settings
    settings["volume_size_gb"] = study.volume_size_gb
    if study.vpc_subnets:
        settings["vpc_config"] = {"Subnets": list(study.vpc_subnets), "SecurityGroupIds": list(study.vpc_security_group_ids)}
    for name in ("volume_kms_key_id", "output_kms_key_id", "enable_network_isolation",
                 "encrypt_inter_container_traffic"):
        if getattr(study, name):
            settings[name] = getattr(study, name)
    if study.managed_spot_training:
        wait_hours = study.spot_max_wait_hours or 2 * MAX_RUNTIME_SECONDS / 3600
        settings["spot_max_wait_seconds"] = round(wait_hours * 3600)
    return settings


def build_tuning_request(
    name: str,
    *,
    static_hyperparameters: Mapping[str, Any],
    learning_rates: Sequence[str],
    channels: Mapping[str, str],
    role_arn: str,
    output_path: str,
    metric_definitions: Sequence[Mapping[str, str]],
    training_image: str = LOCAL_TRAINING_IMAGE,
    instance_type: str = "ml.g4dn.xlarge",
    instance_count: int = 1,
    volume_size_gb: int = 30,
    max_runtime_seconds: int = MAX_RUNTIME_SECONDS,
    extra_channels: Sequence[dict[str, Any]] = (),
    tags: Mapping[str, str] | None = None,
    max_parallel_training_jobs: int | None = None,
    vpc_config: Mapping[str, Sequence[str]] | None = None,
    volume_kms_key_id: str | None = None,
    output_kms_key_id: str | None = None,
    enable_network_isolation: bool = False,
    encrypt_inter_container_traffic: bool = False,
    spot_max_wait_seconds: int | None = None,
) -> dict[str, Any]:
    """One model's tuning job: the same request shape for the local and the SageMaker backend.

    `max_parallel_training_jobs` defaults to every learning rate at once. `spot_max_wait_seconds`
    turns on managed spot training, with checkpoints under the output path, one folder per tuning job.
    Settings left at their defaults leave their fields out, as the API's own defaults mean the same.
    """
    definition: dict[str, Any] = {
        "StaticHyperParameters": {key: str(value) for key, value in static_hyperparameters.items()
                                  if key != "learning_rate"},
        "AlgorithmSpecification": {
            "TrainingImage": training_image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(definition) for definition in metric_definitions],
        },
        "InputDataConfig": [channel(channel_name, uri) for channel_name, uri in channels.items()] + list(extra_channels),
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": instance_count, "VolumeSizeInGB": volume_size_gb,
                           **({"VolumeKmsKeyId": volume_kms_key_id} if volume_kms_key_id else {})},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_seconds},
        "RoleArn": role_arn,
        "OutputDataConfig": {"S3OutputPath": output_path, **({"KmsKeyId": output_kms_key_id} if output_kms_key_id else {})},
    }
    if vpc_config:
        definition["VpcConfig"] = {key: list(ids) for key, ids in vpc_config.items()}
    if enable_network_isolation:
        definition["EnableNetworkIsolation"] = True
    if encrypt_inter_container_traffic:
        definition["EnableInterContainerTrafficEncryption"] = True
    if spot_max_wait_seconds is not None:
        definition["EnableManagedSpotTraining"] = True
        definition["StoppingCondition"]["MaxWaitTimeInSeconds"] = spot_max_wait_seconds
        definition["CheckpointConfig"] = {"S3Uri": f"{output_path.rstrip('/')}/checkpoints/{name}/",
                                          "LocalPath": CHECKPOINT_LOCAL_PATH}
    request = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Grid",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC},
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": len(learning_rates),
                "MaxParallelTrainingJobs": min(max_parallel_training_jobs or len(learning_rates), len(learning_rates)),
            },
            "ParameterRanges": {
                "CategoricalParameterRanges": [{"Name": "learning_rate", "Values": list(learning_rates)}],
                "ContinuousParameterRanges": [],
                "IntegerParameterRanges": [],
            },
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": definition,
    }
    if tags:
        request["Tags"] = [{"Key": key, "Value": str(value)} for key, value in tags.items()]
    return request


def request_for_launch(launch: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request of one planned launch (`job_name` and `spec`); the spec's own tags (JumpStart's) and `tags`."""
    spec = dict(launch["spec"])
    all_tags = {**spec.pop("tags", {}), **(tags or {})}
    return build_tuning_request(launch["job_name"], **spec, tags=all_tags or None)
