"""The SageMaker plan's preflight, each check against moto's server (IAM, STS, S3, Service Quotas).

moto 5.2.5's server has no SimulatePrincipalPolicy and no ListServiceQuotas: `fake_sagemaker.MotoAdditions`
adds them to moto's own response classes (moto's policy evaluator over moto's IAM state; SageMaker
quotas the test sets), so they go through moto's routing, authorization and serializer. One server
serves the whole module; each test resets it.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.request
from pathlib import Path

import moto.settings
import pytest
from airflow.sdk.exceptions import AirflowFailException
from fake_sagemaker import ACCOUNT, REGION, ROLE, SAGEMAKER_TRUST, FakeSageMaker, serving
from jumpstart_fixtures import aws_connection, enforce_moto_auth

from model_selection.backends import preflight
from model_selection.dag_tasks import plan_task

MODEL = "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"
JUMPSTART_BUCKET = f"jumpstart-cache-prod-{REGION}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        with serving(tmp_path_factory.mktemp("preflight"), monkeypatch, [MODEL]) as fake:
            yield fake


@pytest.fixture
def fake(server, monkeypatch, tmp_path):
    """The module's server, reset to the state `serving` leaves (role, quotas, data) for each test."""
    service = server
    urllib.request.urlopen(urllib.request.Request(f"{service.endpoint}/moto-api/reset", method="POST"))
    service.training_quotas = {"ml.g4dn.xlarge": 8.0}
    service.create_execution_role()
    s3 = service.client("s3")
    s3.create_bucket(Bucket="study-data", CreateBucketConfiguration={"LocationConstraint": REGION})
    for channel in ("training", "validation", "test"):
        for label in ("cat", "dog"):
            s3.put_object(Bucket="study-data", Key=f"pets/{channel}/{label}/0001.jpg", Body=b"jpeg")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", service.connection())
    return service


def params(tmp_path: Path, **overrides) -> dict:
    return {
        "backend": "sagemaker", "model_ids": [MODEL], "hyperparameters": {}, "role_arn": ROLE,
        "dataset": {"name": "pets", "training": "s3://study-data/pets/training",
                    "validation": "s3://study-data/pets/validation", "test": "s3://study-data/pets/test"},
        "output_path": "s3://study-data/output", "results_uri": str(tmp_path / "results"), **overrides,
    }


def plan_problems(tmp_path: Path, **overrides) -> list[str]:
    with pytest.raises(AirflowFailException) as failed:
        plan_task(params(tmp_path, **overrides), tmp_path)
    return [line[2:] for line in str(failed.value).splitlines() if line.startswith("- ")]


def warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == preflight.__name__ and record.levelno == logging.WARNING]


def create_role(fake: FakeSageMaker, name: str, trust: dict, policy: dict | None = None) -> str:
    iam = fake.client("iam")
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    if policy:
        iam.put_role_policy(RoleName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    return arn


def test_a_role_that_sagemaker_may_assume_and_use_passes_every_check(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    planned = plan_task(params(tmp_path), tmp_path)

    assert [launch["model_id"] for launch in planned["launches"]] == [MODEL]
    # the only thing left unchecked: moto's caller (arn:aws:sts::...:user/moto) is no IAM user the simulator knows
    assert [warning for warning in warnings(caplog) if "iam:PassRole" not in warning] == []


def test_a_role_that_does_not_exist_is_one_problem(fake, tmp_path):
    missing = f"arn:aws:iam::{ACCOUNT}:role/no-such-role"

    assert plan_problems(tmp_path, role_arn=missing) == [
        f"the execution role {missing} does not exist: create it, or set role_arn to an existing role"]


def test_a_role_sagemaker_may_not_assume_is_one_problem_naming_the_trust_statement(fake, tmp_path):
    ec2_only = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    untrusted = create_role(fake, "ec2-role", ec2_only, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})

    problems = plan_problems(tmp_path, role_arn=untrusted)

    assert len(problems) == 1, problems  # not also its S3 access: an untrusted role is not simulated further
    assert f"the execution role {untrusted} does not let SageMaker assume it" in problems[0]
    assert '"Service": "sagemaker.amazonaws.com"' in problems[0] and "sts:AssumeRole" in problems[0]


def test_a_role_without_s3_read_is_a_problem_per_access_data_and_jumpstart_included(fake, tmp_path):
    bare = create_role(fake, "bare", SAGEMAKER_TRUST, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::study-data/output/*"}]})

    problems = plan_problems(tmp_path, role_arn=bare)

    denied = {(problem.split(" may not ")[1].split(" on ")[0], problem.split(" on ")[1].split(",")[0].split(" ")[0])
              for problem in problems}
    for channel in ("training", "validation", "test"):
        assert ("s3:GetObject", f"arn:aws:s3:::study-data/pets/{channel}/*") in denied
    assert ("s3:ListBucket", "arn:aws:s3:::study-data") in denied
    assert ("s3:ListBucket", f"arn:aws:s3:::{JUMPSTART_BUCKET}") in denied
    jumpstart_objects = [resource for action, resource in denied
                         if action == "s3:GetObject" and resource.startswith(f"arn:aws:s3:::{JUMPSTART_BUCKET}/")]
    assert len(jumpstart_objects) == 2, denied  # the training script and the pretrained model
    assert not any("s3:PutObject" in problem for problem in problems)  # the output path is writable
    assert all("(implicitDeny)" in problem and "grant it in the role's policy" in problem for problem in problems)


def test_an_explicit_deny_of_the_output_path_is_named(fake, tmp_path):
    fake.client("iam").put_role_policy(RoleName=ROLE.rsplit("/", 1)[-1], PolicyName="no-output", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::study-data/output*"}]}))

    problems = plan_problems(tmp_path)

    assert len(problems) == 1, problems
    assert "may not s3:PutObject on arn:aws:s3:::study-data/output/*" in problems[0]
    assert "output_path" in problems[0] and "(explicitDeny)" in problems[0]


def test_a_quota_below_the_parallel_training_jobs_is_a_problem_with_its_value_and_name(fake, tmp_path):
    fake.training_quotas = {"ml.g4dn.xlarge": 1.0}

    problems = plan_problems(tmp_path)

    code = preflight.find_quota(fake.client("service-quotas"), "ml.g4dn.xlarge for training job usage")["QuotaCode"]
    assert problems == [
        f"the account's Service Quotas quota 'ml.g4dn.xlarge for training job usage' ({code}) is 1 in {REGION}, "
        "below the 2 instance(s) one tuning job asks for (2 parallel training jobs x 1 instance): every launch would "
        "fail as one that can never fit; request an increase in Service Quotas, or lower parallel_training_jobs"]
    fake.training_quotas = {"ml.g4dn.xlarge": 2.0}  # exactly enough
    assert plan_task(params(tmp_path), tmp_path)["launches"]


def test_a_quota_service_quotas_does_not_list_is_a_warning_not_a_problem(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    fake.training_quotas = {}

    assert plan_task(params(tmp_path), tmp_path)["launches"]
    # moto lists no default SageMaker quotas either (NoSuchResource); the real service lists them
    assert any(warning.startswith("preflight could not check the") and
               "'ml.g4dn.xlarge for training job usage'" in warning for warning in warnings(caplog))


def test_a_data_bucket_in_another_region_is_a_problem(fake, tmp_path):
    import boto3

    s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=fake.endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="far-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for label in ("cat", "dog"):
        s3.put_object(Bucket="far-data", Key=f"pets/training/{label}/0001.jpg", Body=b"jpeg")
    dataset = {**params(tmp_path)["dataset"], "training": "s3://far-data/pets/training"}

    problems = [problem for problem in plan_problems(tmp_path, dataset=dataset) if "far-data is in" in problem]

    assert problems == [f"dataset.training: bucket far-data is in eu-west-1, but the jobs train in {REGION}: SageMaker "
                        "uses S3 buckets of its own region only; copy the data or set region_name"]


def grant(fake: FakeSageMaker, monkeypatch, user: str, actions: list[str]) -> None:
    """Adds an IAM policy to a user while moto enforces authorization (lifted for this one call)."""
    with monkeypatch.context() as lifted:
        lifted.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", math.inf)
        fake.client("iam").put_user_policy(UserName=user, PolicyName="preflight", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))


def as_planner(fake: FakeSageMaker, monkeypatch, iam_actions: list[str]) -> None:
    """The connection's identity: the IAM user `planner`, with S3 on the data and catalogue and `iam_actions`."""
    keys = enforce_moto_auth(monkeypatch, fake.client("iam"), {"planner": [
        "arn:aws:s3:::study-data", "arn:aws:s3:::study-data/*",
        f"arn:aws:s3:::{JUMPSTART_BUCKET}", f"arn:aws:s3:::{JUMPSTART_BUCKET}/*"]})
    if iam_actions:
        grant(fake, monkeypatch, "planner", iam_actions)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(fake.endpoint, login=keys["planner"][0],
                                                                  password=keys["planner"][1]))


def test_an_identity_that_may_not_pass_the_role_is_a_problem(fake, tmp_path, monkeypatch):
    as_planner(fake, monkeypatch, ["iam:GetRole", "iam:SimulatePrincipalPolicy", "servicequotas:ListServiceQuotas"])

    problems = plan_problems(tmp_path)

    planner = f"arn:aws:iam::{ACCOUNT}:user/planner"
    assert problems == [
        f"Airflow's identity {planner} may not pass the execution role {ROLE} to SageMaker (implicitDeny of "
        f"iam:PassRole): every launch would be refused with AccessDenied; allow iam:PassRole on {ROLE} (condition "
        "iam:PassedToService sagemaker.amazonaws.com)"]
    grant(fake, monkeypatch, "planner", ["iam:GetRole", "iam:SimulatePrincipalPolicy", "iam:PassRole",
                                         "servicequotas:ListServiceQuotas"])
    assert plan_task(params(tmp_path), tmp_path)["launches"]


def test_a_refused_simulator_is_a_warning_that_says_what_was_not_checked(fake, tmp_path, monkeypatch, caplog):
    """The role lacks every S3 permission, but Airflow's identity may not ask the simulator: the plan passes,
    and its log names each access it could not check."""
    caplog.set_level(logging.WARNING)
    fake.client("iam").delete_role_policy(RoleName=ROLE.rsplit("/", 1)[-1], PolicyName="s3")
    as_planner(fake, monkeypatch, ["iam:GetRole", "servicequotas:ListServiceQuotas"])

    assert plan_task(params(tmp_path), tmp_path)["launches"]

    logged = warnings(caplog)
    assert len(logged) == 2, logged  # passing the role, and the role's S3 access
    assert f"may pass the execution role {ROLE} (iam:PassRole, with IAM's policy simulator): AccessDenied" in logged[0]
    unchecked = logged[1]
    assert unchecked.startswith(f"preflight could not check with IAM's policy simulator (iam:SimulatePrincipalPolicy) "
                                f"that the execution role {ROLE} may ")
    assert "AccessDenied" in unchecked
    for access in ("s3:GetObject on arn:aws:s3:::study-data/pets/training/* (dataset.training)",
                   "s3:ListBucket on arn:aws:s3:::study-data (dataset.test)",
                   f"s3:ListBucket on arn:aws:s3:::{JUMPSTART_BUCKET} ({MODEL}'s JumpStart model channel)",
                   f"({MODEL}'s JumpStart training script)",
                   "s3:PutObject on arn:aws:s3:::study-data/output/* (output_path)"):
        assert access in unchecked


def test_an_identity_without_any_iam_access_warns_and_plans(fake, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    as_planner(fake, monkeypatch, [])

    assert plan_task(params(tmp_path), tmp_path)["launches"]

    logged = "\n".join(warnings(caplog))
    assert "exists and SageMaker may assume it (iam:GetRole): AccessDenied" in logged
    assert "the Service Quotas quota 'ml.g4dn.xlarge for training job usage'" in logged


def test_trust_policies_sagemaker_may_and_may_not_assume():
    def trust(*statements: dict) -> dict:
        return {"Version": "2012-10-17", "Statement": list(statements)}

    allow = {"Effect": "Allow", "Principal": {"Service": ["ec2.amazonaws.com", "sagemaker.amazonaws.com"]},
             "Action": ["sts:AssumeRole", "sts:TagSession"], "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}}}
    assert preflight.trusts_sagemaker(trust(allow))
    assert preflight.trusts_sagemaker(trust({**allow, "Action": "sts:*"}))
    assert not preflight.trusts_sagemaker(trust({**allow, "Action": "sts:AssumeRoleWithWebIdentity"}))
    assert not preflight.trusts_sagemaker(trust(allow, {**allow, "Effect": "Deny"}))
    assert not preflight.trusts_sagemaker(trust({**allow, "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}))


def test_the_role_needs_s3_arns_in_the_roles_partition():
    from model_selection.backends.preflight import role_needs

    definition = {"RoleArn": "arn:aws-cn:iam::123456789012:role/sagemaker", "StaticHyperParameters": {},
                  "InputDataConfig": [{"ChannelName": "training",
                                       "DataSource": {"S3DataSource": {"S3Uri": "s3://data/pets/training/"}}}],
                  "OutputDataConfig": {"S3OutputPath": "s3://out/study"}}
    resources = {access.resource for access in role_needs({"m": {"TrainingJobDefinition": definition}})}
    assert resources == {"arn:aws-cn:s3:::data", "arn:aws-cn:s3:::data/pets/training/*", "arn:aws-cn:s3:::out/study/*"}
