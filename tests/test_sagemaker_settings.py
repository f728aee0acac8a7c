"""The account settings of SageMaker training jobs: each Param validated by `Study.parse`, the request
that carries them held to SageMaker's service model, and `config_hash` untouched by them.

No AWS and no training: the study is parsed, the request built and handed to a botocore client
whose requests never leave this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_selection.study import SAGEMAKER_ONLY_SETTINGS, Study
from model_selection.tuning_request import build_tuning_request, parallel_training_jobs, training_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATASET = {"name": "pets", "training": "s3://study-data/pets/training", "validation": "s3://study-data/pets/validation",
           "test": "s3://study-data/pets/test"}
# A study's hash before these settings existed (git HEAD of study.py when they were added): its results must
# still be its results.
DEFAULT_SAGEMAKER_HASH = "1654ac56feb3"
ACCOUNT_SETTINGS = {
    "parallel_training_jobs": 1, "volume_size_gb": 100,
    "vpc_subnets": ["subnet-0123456789abcdef0"], "vpc_security_group_ids": ["sg-0123456789abcdef0", "sg-12345678"],
    "volume_kms_key_id": "alias/training-volumes",
    "output_kms_key_id": "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "enable_network_isolation": True, "encrypt_inter_container_traffic": True, "managed_spot_training": True,
    "spot_max_wait_hours": 36, "tolerate_deprecated_or_vulnerable_models": True,
}


def parse(**overrides: Any) -> tuple[Study, list[str]]:
    params = {"backend": "sagemaker", "model_ids": ["tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"],
              "dataset": DATASET, "results_uri": "/tmp/unused", **overrides}
    return Study.parse(params, PROJECT_ROOT)


def problems_of(**overrides: Any) -> list[str]:
    return parse(**overrides)[1]


# -- each Param ----------------------------------------------------------------------------------------

def test_the_defaults_are_todays_behaviour():
    study, problems = parse()

    assert problems == []
    assert parallel_training_jobs(study) == 2  # learning_rate_multipliers [1.0, 0.2]: both at once
    assert training_settings(study) == {"max_parallel_training_jobs": 2, "volume_size_gb": 30}


def test_every_setting_is_taken_as_given():
    study, problems = parse(**ACCOUNT_SETTINGS)

    assert problems == []
    assert parallel_training_jobs(study) == 1
    assert training_settings(study) == {
        "max_parallel_training_jobs": 1, "volume_size_gb": 100,
        "vpc_config": {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0", "sg-12345678"]},
        "volume_kms_key_id": "alias/training-volumes", "output_kms_key_id": ACCOUNT_SETTINGS["output_kms_key_id"],
        "enable_network_isolation": True, "encrypt_inter_container_traffic": True, "spot_max_wait_seconds": 36 * 3600,
    }
    assert study.tolerate_deprecated_or_vulnerable_models is True


def test_parallel_training_jobs_defaults_to_the_distinct_learning_rates():
    study, _ = parse(learning_rate_multipliers=[1.0, 0.5, 0.2, 0.5])
    assert parallel_training_jobs(study) == 3


@pytest.mark.parametrize("value", [0, 3, -1, 1.5, True, "2"])
def test_parallel_training_jobs_outside_one_to_the_number_of_learning_rates_is_refused(value):
    problems = problems_of(parallel_training_jobs=value)

    assert problems == [f"parallel_training_jobs must be an integer from 1 to 2 (the number of learning rates each "
                        f"tuning job tries), got {value!r}"]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("early_stopping_patience", 0, "early_stopping_patience must be an integer of at least 1, got 0"),
    ("volume_size_gb", 0, "volume_size_gb must be an integer of at least 1, got 0"),
    ("volume_size_gb", "100", "volume_size_gb must be an integer of at least 1, got '100'"),
    ("volume_kms_key_id", "alias/my key",
     "volume_kms_key_id 'alias/my key' is not a KMS key id, key ARN, alias name or alias ARN (letters, digits, "
     "':', '/', '_' and '-')"),
    ("output_kms_key_id", "k" * 2049, "output_kms_key_id"),
    ("enable_network_isolation", "yes", "enable_network_isolation must be true or false, got 'yes'"),
    ("encrypt_inter_container_traffic", 1, "encrypt_inter_container_traffic must be true or false, got 1"),
    ("managed_spot_training", "true", "managed_spot_training must be true or false, got 'true'"),
    ("tolerate_deprecated_or_vulnerable_models", "no",
     "tolerate_deprecated_or_vulnerable_models must be true or false, got 'no'"),
    ("spot_max_wait_hours", 30,
     "spot_max_wait_hours is a managed spot setting: set managed_spot_training to true or leave spot_max_wait_hours empty"),
])
def test_a_bad_value_is_one_problem_naming_the_param(name, value, message):
    problems = problems_of(**{name: value})

    assert len(problems) == 1, problems
    assert problems[0].startswith(message)


@pytest.mark.parametrize("hours", [23.5, 0, -48, "48"])
def test_a_spot_wait_shorter_than_the_run_limit_is_refused(hours):
    problems = problems_of(managed_spot_training=True, spot_max_wait_hours=hours)

    assert problems == [f"spot_max_wait_hours must be a number of at least 24 (each training job's run limit, which "
                        f"SageMaker's MaxWaitTimeInSeconds may not undercut), got {hours!r}"]


def test_spot_without_a_wait_waits_twice_the_run_limit():
    study, problems = parse(managed_spot_training=True)

    assert problems == [] and training_settings(study)["spot_max_wait_seconds"] == 48 * 3600


def test_vpc_subnets_and_security_groups_go_together_and_are_ids():
    assert problems_of(vpc_subnets=["subnet-0123456789abcdef0"]) == [
        "vpc_subnets and vpc_security_group_ids go together (SageMaker's VpcConfig needs both): got 1 subnets and "
        "0 security groups"]
    assert problems_of(vpc_subnets=["sg-0123456789abcdef0"], vpc_security_group_ids=["subnet-0123456789abcdef0"]) == [
        "vpc_subnets: ['sg-0123456789abcdef0'] are not ids such as subnet-0123456789abcdef0",
        "vpc_security_group_ids: ['subnet-0123456789abcdef0'] are not ids such as sg-0123456789abcdef0"]
    assert problems_of(vpc_subnets="subnet-0123456789abcdef0", vpc_security_group_ids=["sg-0123456789abcdef0"])[0] == (
        "vpc_subnets must be a list of texts, got 'subnet-0123456789abcdef0'")


def test_more_security_groups_than_sagemaker_takes_are_refused():
    groups = [f"sg-0123456{index}" for index in range(6)]

    problems = problems_of(vpc_subnets=["subnet-0123456789abcdef0"], vpc_security_group_ids=groups)

    assert problems == ["vpc_security_group_ids: 6 given, SageMaker takes at most 5"]


def test_the_local_backend_refuses_each_sagemaker_setting_that_is_not_at_its_default(tmp_path):
    local = {"backend": "local", "model_ids": ["resnet18"], "results_uri": str(tmp_path),
             "dataset": {"name": "digits", "training": "include/datasets/digits/training"}}
    settings = {name: value for name, value in ACCOUNT_SETTINGS.items() if name != "spot_max_wait_hours"}

    problems = Study.parse({**local, **settings}, PROJECT_ROOT)[1]

    refused = [problem.split(" ", 1)[0] for problem in problems]
    assert refused == [name for name in SAGEMAKER_ONLY_SETTINGS if name in settings]
    assert "volume_size_gb 100 is a SageMaker setting the local backend cannot honour: leave it at 30 or choose " \
           "backend 'sagemaker'" in problems
    assert "vpc_subnets [\"subnet-0123456789abcdef0\"] is a SageMaker setting the local backend cannot honour: leave " \
           "it at [] or choose backend 'sagemaker'" in problems
    assert Study.parse({**local, "parallel_training_jobs": 1}, PROJECT_ROOT)[1] == []  # the local supervisor honours it


# -- what makes results comparable -------------------------------------------------------------------------

def test_the_hash_of_a_default_study_is_what_it_was_and_no_account_setting_changes_it():
    assert parse()[0].config_hash == DEFAULT_SAGEMAKER_HASH
    assert parse(**ACCOUNT_SETTINGS)[0].config_hash == DEFAULT_SAGEMAKER_HASH
    assert parse(epochs=11)[0].config_hash != DEFAULT_SAGEMAKER_HASH  # the pin can tell a change


# -- the request ---------------------------------------------------------------------------------------------

def request(**settings: Any) -> dict[str, Any]:
    return build_tuning_request(
        "mse652b4-tensorflow-ic-4cac61a7", static_hyperparameters={"epochs": "10"}, learning_rates=["0.001", "0.0002"],
        channels={"training": "s3://study-data/pets/training/"}, role_arn="arn:aws:iam::123456789012:role/sagemaker",
        output_path="s3://study-data/output", metric_definitions=[{"Name": "val_accuracy", "Regex": "v: ([0-9.]+)"}],
        training_image="763104351884.dkr.ecr.us-west-2.amazonaws.com/tensorflow-training:2.9-gpu-py39", **settings)


def create_through_the_hook_client(tuning_request: dict[str, Any]) -> list[dict[str, Any]]:
    """Calls CreateHyperParameterTuningJob on a client held to the service model; returns what would be sent."""
    import boto3
    from botocore.awsrequest import AWSResponse

    from model_selection.backends.api import hold_to_service_model

    client = hold_to_service_model(boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-west-2").client("sagemaker"))
    sent: list[dict[str, Any]] = []

    def answer(request: Any, **kwargs: Any) -> AWSResponse:
        sent.append(json.loads(request.body))
        return AWSResponse(request.url, 200, {}, _Body(b'{"HyperParameterTuningJobArn": "arn:aws:sagemaker:x"}'))

    client.meta.events.register("before-send.sagemaker.CreateHyperParameterTuningJob", answer)
    client.create_hyper_parameter_tuning_job(**tuning_request)
    return sent


class _Body:
    def __init__(self, body: bytes):
        self.body = body

    def read(self, *args: Any) -> bytes:
        body, self.body = self.body, b""
        return body

    def stream(self, **kwargs: Any) -> Any:
        yield self.body


def test_the_request_with_every_setting_holds_its_fields_and_passes_the_service_model():
    study, _ = parse(**ACCOUNT_SETTINGS)

    [sent] = create_through_the_hook_client(request(**training_settings(study)))

    config, definition = sent["HyperParameterTuningJobConfig"], sent["TrainingJobDefinition"]
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1}
    assert definition["ResourceConfig"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100,
                                            "VolumeKmsKeyId": "alias/training-volumes"}
    assert definition["OutputDataConfig"] == {"S3OutputPath": "s3://study-data/output",
                                              "KmsKeyId": ACCOUNT_SETTINGS["output_kms_key_id"]}
    assert definition["VpcConfig"] == {"Subnets": ACCOUNT_SETTINGS["vpc_subnets"],
                                       "SecurityGroupIds": ACCOUNT_SETTINGS["vpc_security_group_ids"]}
    assert definition["EnableNetworkIsolation"] is True and definition["EnableInterContainerTrafficEncryption"] is True
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 36 * 3600}
    assert definition["CheckpointConfig"] == {"S3Uri": "s3://study-data/output/checkpoints/mse652b4-tensorflow-ic-4cac61a7/",
                                              "LocalPath": "/opt/ml/checkpoints"}


def test_a_default_request_has_none_of_the_new_fields():
    study, _ = parse()

    [sent] = create_through_the_hook_client(request(**training_settings(study)))

    definition = sent["TrainingJobDefinition"]
    assert not {"VpcConfig", "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption",
                "EnableManagedSpotTraining", "CheckpointConfig"} & set(definition)
    assert "VolumeKmsKeyId" not in definition["ResourceConfig"] and "KmsKeyId" not in definition["OutputDataConfig"]
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}


def test_the_hook_client_refuses_what_the_plan_would_have_refused():
    """The same client refuses a request the plan would not have built, so the passing tests above can fail."""
    from model_selection.backends.api import RequestRefused

    too_many = {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": [f"sg-0123456{i}" for i in range(6)]}
    with pytest.raises(RequestRefused, match="VpcConfig.SecurityGroupIds: 6 items, at most 5 allowed"):
        create_through_the_hook_client(request(vpc_config=too_many))
    with pytest.raises(RequestRefused, match="MaxWaitTimeInSeconds: 3600, at least MaxRuntimeInSeconds"):
        create_through_the_hook_client(request(spot_max_wait_seconds=3600))


def test_the_local_backend_plans_parallel_training_jobs_into_the_request_its_supervisor_reads(tmp_path, dataset):
    """The local supervisor runs at most ResourceLimits.MaxParallelTrainingJobs trainers at once."""
    from model_selection.planning import plan_study
    from model_selection.tuning_request import request_for_launch

    channels = {name: str(path) for name, path in dataset(classes=2, per_class=2).items()}
    params = {"backend": "local", "model_ids": ["resnet10t"], "results_uri": str(tmp_path / "results"),
              "dataset": {"name": "tiny", **channels}, "learning_rate_multipliers": [1.0, 0.5, 0.2]}

    for parallel, expected in ((None, 3), (2, 2)):
        [launch] = plan_study({**params, "parallel_training_jobs": parallel}, PROJECT_ROOT, str(tmp_path / "jobs"))["launches"]
        limits = request_for_launch(launch)["HyperParameterTuningJobConfig"]["ResourceLimits"]
        assert limits == {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": expected}
