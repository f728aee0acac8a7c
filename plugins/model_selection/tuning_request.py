"""The `CreateHyperParameterTuningJob` request of the benchmarking notebook, as plain data.

Learning rate is a categorical range of the default times each multiplier under the
Grid strategy (so exactly those trials run, all in parallel), the objective is
`val_accuracy` maximised, and the metric definitions are the caller's: those of the data
set's problem type (`metrics.metric_definitions(num_classes, binary)`), so
`FinalMetricDataList` carries every figure the training script prints for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from model_selection.metrics import format_number

OBJECTIVE_METRIC = "val_accuracy"
LOCAL_TRAINING_IMAGE = "model-selection-local-trainer"
# The local backend runs under no IAM role; the API shape still asks for one.
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/model-selection-local"


def learning_rate_values(default: float, multipliers: Sequence[float]) -> list[str]:
    """Default × each multiplier, as the strings SageMaker passes; duplicates dropped, order kept."""
    values: list[str] = []
    for multiplier in multipliers:
        value = format_number(float(default) * float(multiplier))
        if value not in values:
            values.append(value)
    return values


def channel(name: str, uri: str, content_type: str = "application/x-image") -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}},
        "ContentType": content_type,
        "InputMode": "File",
    }


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
    max_runtime_seconds: int = 24 * 3600,
    extra_channels: Sequence[dict[str, Any]] = (),
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One model's tuning job: the same request shape for the local and the SageMaker backend."""
    definition: dict[str, Any] = {
        "StaticHyperParameters": {key: str(value) for key, value in static_hyperparameters.items()
                                  if key != "learning_rate"},
        "AlgorithmSpecification": {
            "TrainingImage": training_image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(definition) for definition in metric_definitions],
        },
        "InputDataConfig": [channel(channel_name, uri) for channel_name, uri in channels.items()] + list(extra_channels),
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": instance_count, "VolumeSizeInGB": volume_size_gb},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_seconds},
        "RoleArn": role_arn,
        "OutputDataConfig": {"S3OutputPath": output_path},
    }
    request = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Grid",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC},
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": len(learning_rates),
                "MaxParallelTrainingJobs": len(learning_rates),
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
