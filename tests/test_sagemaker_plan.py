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
