"""The SageMaker plan: credentials and region from the Airflow connection only, connection problems
listed once, JumpStart hyperparameters checked by the SDK, and what each spec carries.

All AWS traffic goes to the moto server of `fake_sagemaker.serving`; where the test says so, moto
checks every request's access key, signature and IAM permissions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from fake_sagemaker import REGION, ROLE, serving
from jumpstart_fixtures import (
    HYPERPARAMETERS,
    MODEL_VERSION,
    S3Requests,
    aws_connection,
    enforce_moto_auth,
    upload_jumpstart_metadata,
    write_bogus_default_chain,
)

from model_selection.backends import jumpstart
from model_selection.dag_tasks import plan_task

MODELS = [f"tensorflow-ic-imagenet-mobilenet-v2-{width}-224-classification-4" for width in ("100", "075", "050")]
FILTER = "filter: task == ic & framework == tensorflow"
CATALOGUE_BUCKET = f"jumpstart-cache-prod-{REGION}"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch):
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # none left from another test's environment
    with serving(tmp_path, monkeypatch, MODELS) as service:
        yield service


def params(tmp_path: Path, **overrides) -> dict:
    return {
        "backend": "sagemaker",
        "model_ids": MODELS[:2],
        "dataset": {"name": "pets", "training": "s3://study-data/pets/training",
                    "validation": "s3://study-data/pets/validation", "test": "s3://study-data/pets/test"},
        "hyperparameters": {},
        "role_arn": ROLE,
        "output_path": "s3://study-data/output",
        "results_uri": str(tmp_path / "results"),
        **overrides,
    }


def plan(tmp_path: Path, **overrides) -> dict:
    return plan_task(params(tmp_path, **overrides), tmp_path)


def plan_problems(tmp_path: Path, **overrides) -> list[str]:
    with pytest.raises(AirflowFailException) as failed:
        plan(tmp_path, **overrides)
    return [line[2:] for line in str(failed.value).splitlines() if line.startswith("- ")]


def catalogue_in_s3(fake, tmp_path: Path, monkeypatch) -> None:
    """The SDK reads the JumpStart catalogue from the moto S3 bucket, through the connection, not from folders."""
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    for name in ("AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE", "AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE"):
        monkeypatch.delenv(name)
    upload_jumpstart_metadata(tmp_path / "jumpstart", fake.client("s3"), region=REGION)
    jumpstart._session.cache_clear()
    JumpStartModelsAccessor.reset_cache()


def use_connection(monkeypatch, connection: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection)
    jumpstart._session.cache_clear()


def iam(fake):
    return fake.client("iam")


# -- what each spec carries --------------------------------------------------------------------------

def test_each_launch_carries_the_resolved_version_and_the_sdks_jumpstart_tags(fake, tmp_path):
    launches = plan(tmp_path)["launches"]

    assert [launch["model_id"] for launch in launches] == MODELS[:2]
    for launch in launches:
        assert launch["model_version"] == MODEL_VERSION  # "*" resolved, part of the configuration's identity
        assert launch["spec"]["tags"] == {"sagemaker-sdk:jumpstart-model-id": launch["model_id"],
                                          "sagemaker-sdk:jumpstart-model-version": MODEL_VERSION}


# -- hyperparameters -------------------------------------------------------------------------------------

def test_hyperparameter_values_are_checked_for_type_and_range_by_the_sdk(fake, tmp_path):
    problems = plan_problems(tmp_path, hyperparameters={"optimizer": "adamw", "dropout_rate": "1.5",
                                                        "batch_size": "sixteen", "label_smoothing": "0.2"})

    assert len(problems) == 6, problems  # three bad values for each of two models; label_smoothing is fine
    for model_id in MODELS[:2]:
        mine = "\n".join(problem for problem in problems if problem.startswith(model_id))
        assert "optimizer='adamw'" in mine and "one of adam, sgd, nesterov, rmsprop, adagrad, adadelta" in mine
        assert "dropout_rate='1.5'" in mine and "no greater than 1.0" in mine and "float in [0.0, 1.0]" in mine
        assert "batch_size='sixteen'" in mine and "must be numeric" in mine and "int >= 1" in mine


def test_the_tuned_learning_rates_are_checked_too(fake, tmp_path):
    """0.4 is allowed (max 0.5); the tuned 0.4 × 2 = 0.8 is not."""
    problems = plan_problems(tmp_path, model_ids=MODELS[:1], hyperparameters={"learning_rate": "0.4"},
                             learning_rate_multipliers=[1.0, 2.0])

    assert len(problems) == 1, problems
    assert "learning_rate='0.8'" in problems[0] and "a tuned value" in problems[0] and "[1e-06, 0.5]" in problems[0]


def test_settings_only_the_local_trainer_understands_are_dropped_with_a_warning(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    launches = plan(tmp_path, hyperparameters={"pretrained": "false", "image_size": "16", "batch_size": "16"})["launches"]

    for launch in launches:
        static = launch["spec"]["static_hyperparameters"]
        assert static["batch_size"] == "16"
        assert not {"pretrained", "image_size"} & set(static)
    warnings = [record.getMessage() for record in caplog.records if "local trainer only" in record.getMessage()]
    assert len(warnings) == 1 and "'image_size', 'pretrained'" in warnings[0]


def test_unknown_hyperparameters_stay_a_problem_beside_local_only_settings(fake, tmp_path):
    problems = plan_problems(tmp_path, model_ids=MODELS[:1], hyperparameters={"pretrained": "false", "learning_rat": "0.1"})

    assert len(problems) == 1 and "['learning_rat']" in problems[0] and "pretrained" not in problems[0].split(" are ")[0]


def test_local_only_settings_are_exactly_what_the_local_trainer_adds_to_the_jumpstart_algorithm():
    from model_selection.backends.sagemaker import LOCAL_ONLY_SETTINGS
    from model_selection.local.hyperparameters import PARSERS

    algorithm = {h["name"] for h in HYPERPARAMETERS if h["scope"] == "algorithm"}  # the SDK spec's
    assert set(LOCAL_ONLY_SETTINGS) == set(PARSERS) - algorithm


# -- credentials and region come from the connection ---------------------------------------------------

def test_the_plan_uses_the_connections_identity_even_with_another_one_in_the_environment(fake, tmp_path, monkeypatch):
    """boto3's default chain holds refused keys and a profile; moto checks every request's key."""
    catalogue_in_s3(fake, tmp_path, monkeypatch)
    keys = enforce_moto_auth(monkeypatch, iam(fake), {"planner": [
        "arn:aws:s3:::study-data", "arn:aws:s3:::study-data/*",
        f"arn:aws:s3:::{CATALOGUE_BUCKET}", f"arn:aws:s3:::{CATALOGUE_BUCKET}/*"]})
    key, secret = keys["planner"]
    write_bogus_default_chain(tmp_path / "aws", monkeypatch)
    use_connection(monkeypatch, aws_connection(fake.endpoint, login=key, password=secret))
    requests = S3Requests().install(monkeypatch)

    launches = plan(tmp_path, model_ids=[MODELS[2], FILTER])["launches"]

    assert [launch["model_id"] for launch in launches] == [MODELS[2], *sorted(MODELS[:2])]
    operations = {operation for operation, _ in requests.sent}
    assert {"ListObjectsV2", "GetObject"} <= operations  # the data set check and the catalogue reads
    assert requests.keys() == {key}


@pytest.mark.parametrize(("credentials", "code"), [("unknown key", "InvalidAccessKeyId"),
                                                   ("wrong secret", "SignatureDoesNotMatch")])
def test_refused_credentials_are_one_problem_naming_the_connection_without_retries(fake, tmp_path, monkeypatch,
                                                                                   credentials, code):
    catalogue_in_s3(fake, tmp_path, monkeypatch)
    keys = enforce_moto_auth(monkeypatch, iam(fake), {"planner": ["*"]})
    key, secret = {"unknown key": ("AKIAUNKNOWNKEY000000", "x"), "wrong secret": (keys["planner"][0], "wrong")}[credentials]
    use_connection(monkeypatch, aws_connection(fake.endpoint, login=key, password=secret))
    requests = S3Requests().install(monkeypatch)

    problems = plan_problems(tmp_path, model_ids=[*MODELS, FILTER])

    assert len(problems) == 1, problems  # not one per channel, model or filter
    assert "AWS connection 'aws_default'" in problems[0] and code in problems[0] and "password" in problems[0]
    assert len(requests.sent) == 1  # the first refusal ends every AWS call; botocore did not retry it


def test_a_missing_permission_on_the_catalogue_is_one_problem_naming_what_to_grant(fake, tmp_path, monkeypatch):
    catalogue_in_s3(fake, tmp_path, monkeypatch)
    keys = enforce_moto_auth(monkeypatch, iam(fake), {"planner": ["arn:aws:s3:::study-data", "arn:aws:s3:::study-data/*"]})
    use_connection(monkeypatch, aws_connection(fake.endpoint, login=keys["planner"][0], password=keys["planner"][1]))

    problems = plan_problems(tmp_path, model_ids=[*MODELS, FILTER])

    assert len(problems) == 1, problems
    assert "AWS connection 'aws_default' lacks a permission: AccessDenied" in problems[0]
    assert "s3:GetObject" in problems[0] and CATALOGUE_BUCKET in problems[0]


def test_a_missing_permission_on_the_data_set_is_one_problem_for_its_bucket(fake, tmp_path, monkeypatch):
    keys = enforce_moto_auth(monkeypatch, iam(fake), {"planner": [f"arn:aws:s3:::{CATALOGUE_BUCKET}/*"]})
    use_connection(monkeypatch, aws_connection(fake.endpoint, login=keys["planner"][0], password=keys["planner"][1]))

    problems = plan_problems(tmp_path)

    assert len(problems) == 1, problems
    assert problems[0].startswith("dataset channels training, validation, test:")
    assert "s3:ListBucket" in problems[0] and "s3://study-data/" in problems[0]


def test_a_connection_without_credentials_is_one_missing_credentials_problem(fake, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    use_connection(monkeypatch, aws_connection(fake.endpoint, login=None))

    problems = plan_problems(tmp_path, model_ids=MODELS)

    assert len(problems) == 1, problems
    assert "AWS connection 'aws_default' gives no usable AWS credentials" in problems[0]


def test_a_region_without_jumpstart_is_one_problem_and_nothing_is_called(fake, tmp_path, monkeypatch):
    requests = S3Requests().install(monkeypatch)

    problems = plan_problems(tmp_path, model_ids=[*MODELS, FILTER], region_name="xx-nowhere-1")

    assert len(problems) == 1, problems
    assert "region 'xx-nowhere-1'" in problems[0] and "us-west-2" in problems[0]
    assert requests.sent == []


def test_the_region_comes_from_the_study_or_the_connection_never_from_the_environment(fake, tmp_path, monkeypatch):
    use_connection(monkeypatch, aws_connection(fake.endpoint, region=None))
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)  # boto3's default chain would find this one

    problems = plan_problems(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("no AWS region"), problems

    launches = plan(tmp_path, region_name=REGION)["launches"]
    assert launches[0]["spec"]["static_hyperparameters"]["sagemaker_region"] == REGION


def test_a_connection_id_that_names_no_connection_is_one_problem_and_nothing_is_called(fake, tmp_path, monkeypatch):
    requests = S3Requests().install(monkeypatch)

    problems = plan_problems(tmp_path, model_ids=[*MODELS, FILTER], aws_conn_id="no_such_connection")

    assert len(problems) == 1, problems
    assert "AWS connection 'no_such_connection' is not defined" in problems[0]
    assert requests.sent == []


# -- account settings, channel prefixes, flagged specs -------------------------------------------------

ACCOUNT_SETTINGS = {"parallel_training_jobs": 1, "volume_size_gb": 100, "vpc_subnets": ["subnet-0123456789abcdef0"],
                    "vpc_security_group_ids": ["sg-0123456789abcdef0"], "volume_kms_key_id": "alias/training-volumes",
                    "output_kms_key_id": "alias/artifacts", "enable_network_isolation": True,
                    "encrypt_inter_container_traffic": True, "managed_spot_training": True}


def test_account_settings_reach_every_launch_and_the_script_becomes_the_code_channel(fake, tmp_path):
    from model_selection.backends.api import request_problems
    from model_selection.tuning_request import request_for_launch

    launches = plan(tmp_path, **ACCOUNT_SETTINGS)["launches"]

    assert len(launches) == 2
    for launch in launches:
        request = request_for_launch(launch)
        assert request_problems("CreateHyperParameterTuningJob", request) == []
        definition = request["TrainingJobDefinition"]
        assert request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"] == 1
        assert definition["ResourceConfig"]["VolumeSizeInGB"] == 100
        assert definition["VpcConfig"] == {"Subnets": ["subnet-0123456789abcdef0"],
                                           "SecurityGroupIds": ["sg-0123456789abcdef0"]}
        assert definition["EnableNetworkIsolation"] and definition["EnableManagedSpotTraining"]
        assert definition["CheckpointConfig"]["S3Uri"] == f"s3://study-data/output/checkpoints/{launch['job_name']}/"
        channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]}
        assert channels["code"] == f"s3://{CATALOGUE_BUCKET}/source-directory-tarballs/tensorflow/transfer_learning/ic/" \
                                   "v2.1.0/sourcedir.tar.gz"  # a file: no '/' added
        assert definition["StaticHyperParameters"]["sagemaker_submit_directory"] == "/opt/ml/input/data/code/sourcedir.tar.gz"
        assert channels["model"].endswith(".tar.gz")


def test_without_network_isolation_the_script_stays_a_hyperparameter(fake, tmp_path):
    [launch] = plan(tmp_path, model_ids=MODELS[:1])["launches"]

    assert launch["spec"]["static_hyperparameters"]["sagemaker_submit_directory"].startswith(f"s3://{CATALOGUE_BUCKET}/")
    assert [c["ChannelName"] for c in launch["spec"]["extra_channels"]] == ["model"]


def test_data_channels_are_prefixes_and_sibling_prefixes_count_for_nothing(fake, tmp_path):
    """`s3://study-data/pets/training` must not read `pets/training-old/`: its four folders would make six classes."""
    s3 = fake.client("s3")
    old_classes = [f"pets/training-old/{label}/0001.jpg" for label in ("bird", "fish", "horse", "mouse")]
    for key in (*old_classes, "pets/test-old/cat/0002.jpg", "pets/test-old/dog/0003.jpg"):
        s3.put_object(Bucket="study-data", Key=key, Body=b"jpeg")

    planned = plan(tmp_path, model_ids=MODELS[:1])

    [launch] = planned["launches"]
    assert launch["spec"]["channels"] == {channel: f"s3://study-data/pets/{channel}/"
                                          for channel in ("training", "validation", "test")}
    assert planned["study"]["test_examples"] == 2
    metrics = {definition["Name"] for definition in launch["spec"]["metric_definitions"]}
    assert "top_5_accuracy" not in metrics  # two classes, not six
    assert planned["study"]["dataset"]["training"] == "s3://study-data/pets/training"  # the study keeps its hash


def flag_spec(tmp_path: Path, model_id: str, **flags) -> None:
    """Marks a model's spec in the local JumpStart catalogue (deprecated, vulnerable) and drops the SDK's cache."""
    import json

    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    path = tmp_path / "jumpstart" / "community_models" / model_id / f"specs_v{MODEL_VERSION}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **flags}))
    JumpStartModelsAccessor.reset_cache()


def test_deprecated_or_vulnerable_specs_are_refused_unless_tolerated_and_then_named_in_the_log(fake, tmp_path, caplog):
    flag_spec(tmp_path, MODELS[0], deprecated=True, deprecated_message="superseded by v3")
    flag_spec(tmp_path, MODELS[1], training_vulnerable=True, training_vulnerabilities=["tensorflow==2.9.0"])

    problems = plan_problems(tmp_path)

    assert len(problems) == 2, problems
    assert problems[0] == (f"JumpStart model {MODELS[0]!r} version {MODEL_VERSION} is refused: the catalogue marks it "
                           "deprecated (superseded by v3). Set tolerate_deprecated_or_vulnerable_models to true to "
                           "train it knowingly")
    assert problems[1].startswith(f"JumpStart model {MODELS[1]!r} version {MODEL_VERSION} is refused: the catalogue "
                                  "marks its training script vulnerable (tensorflow==2.9.0).")

    caplog.set_level(logging.WARNING)
    launches = plan(tmp_path, tolerate_deprecated_or_vulnerable_models=True)["launches"]

    assert [launch["model_id"] for launch in launches] == MODELS[:2]
    accepted = [record.getMessage() for record in caplog.records if "is accepted although" in record.getMessage()]
    assert any(MODELS[0] in line and "deprecated (superseded by v3)" in line for line in accepted), accepted
    assert any(MODELS[1] in line and "vulnerable (tensorflow==2.9.0)" in line for line in accepted), accepted
