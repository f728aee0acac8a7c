"""Preflight of a SageMaker study: what would otherwise fail only after tuning jobs were created and paid for.

The plan's other S3 checks use Airflow's identity; a training job runs as the execution role, so a
role that cannot read the data or the JumpStart artifacts fails every job after minutes of start-up
("Data download failed ... AccessDenied"), once per model. Each check here is one function over
boto3 clients of the study's Airflow AWS connection:

- `role_problems`: the role exists and its trust policy lets SageMaker assume it;
- `pass_role_problems`: Airflow's identity may pass the role to SageMaker (`iam:PassRole`);
- `role_access_problems`: the role may read each data prefix and the JumpStart artifacts and write
  the output path, asked of IAM's policy simulator (`SimulatePrincipalPolicy`);
- `quota_problems`: the account's Service Quotas quota for the training instance type holds the
  training jobs one tuning job runs at once;
- `bucket_region_problems`: the data and output buckets are in the training region.

A check that cannot be made (Airflow's identity may not call IAM, the simulator or Service Quotas,
or the role is in another account) is not a problem: `NotChecked` says exactly what was not checked,
and the plan logs it as a warning. These clients are IAM, STS, S3 and Service Quotas ones: SageMaker's
service model (`api.hold_to_service_model`) applies to SageMaker requests only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from model_selection.backends.api import error_code

log = logging.getLogger(__name__)

SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
DATA_CHANNELS = ("training", "validation", "test")
ROLE_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?:[^/]+/)*(?P<name>[^/]+)")
ASSUMED_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:sts::\d{12}:assumed-role/(?P<name>[^/]+)/.+")
IAM_USER_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:user/.+")
ROOT_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:root")
NO_SUCH_ENTITY = "NoSuchEntity"


class NotChecked(Exception):
    """A check that could not be made; its message says what was not checked and why."""


def _not_checked(what: str, error: BaseException) -> NotChecked:
    reason = error_code(error) or type(error).__name__
    answer = (str(error).splitlines() or [""])[0]  # an error page's body need not follow
    return NotChecked(f"could not check {what}: {reason}: {answer}")


@dataclass(frozen=True)
class S3Access:
    """One S3 action the execution role needs, on one resource, and why (for the message)."""

    action: str
    resource: str
    purpose: str
    prefix: str | None = None  # the `s3:prefix` of a listing, for policies that condition ListBucket on it


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def prefix_access(uri: str, purpose: str, partition: str, write: bool = False) -> list[S3Access]:
    """What SageMaker does with an S3Prefix channel (list, then get every object) or an output path (put)."""
    if not uri.startswith("s3://"):
        return []  # not an S3 location: the plan has said so already
    bucket, key = split_s3_uri(uri)
    if write:  # SageMaker writes under the path, in a folder per job
        return [S3Access("s3:PutObject", f"arn:{partition}:s3:::{bucket}/{key.rstrip('/')}/*", purpose)]
    return [S3Access("s3:ListBucket", f"arn:{partition}:s3:::{bucket}", purpose, key),
            S3Access("s3:GetObject", f"arn:{partition}:s3:::{bucket}/{key}*", purpose)]


def object_access(uri: str, purpose: str, partition: str) -> S3Access:
    bucket, key = split_s3_uri(uri)
    return S3Access("s3:GetObject", f"arn:{partition}:s3:::{bucket}/{key}", purpose)


def role_partition(role_arn: str) -> str:
    """The role's AWS partition (aws, aws-cn, aws-us-gov): S3 ARNs in the simulation must be in it."""
    found = ROLE_ARN.fullmatch(role_arn)
    return found["partition"] if found else "aws"


def role_needs(requests: Mapping[str, Mapping[str, Any]]) -> list[S3Access]:
    """Every S3 access the execution role needs for these tuning requests (model id -> request): each input
    channel (data, JumpStart weights, a `code` channel), each JumpStart training script, the output path and
    the spot checkpoints."""
    needs = []
    for model_id, request in requests.items():
        definition = request["TrainingJobDefinition"]
        partition = role_partition(definition["RoleArn"])
        for channel in definition["InputDataConfig"]:
            name = channel["ChannelName"]
            purpose = f"dataset.{name}" if name in DATA_CHANNELS else f"{model_id}'s JumpStart {name} channel"
            needs += prefix_access(channel["DataSource"]["S3DataSource"]["S3Uri"], purpose, partition)
        script = definition["StaticHyperParameters"].get("sagemaker_submit_directory", "")
        if script.startswith("s3://"):
            needs.append(object_access(script, f"{model_id}'s JumpStart training script", partition))
        needs += prefix_access(definition["OutputDataConfig"]["S3OutputPath"], "output_path", partition, write=True)
        if "CheckpointConfig" in definition:
            needs += prefix_access(definition["CheckpointConfig"]["S3Uri"], "spot checkpoints", partition, write=True)
    unique: dict[tuple[str, str, str | None], S3Access] = {}
    for access in needs:
        unique.setdefault((access.action, access.resource, access.prefix), access)
    return list(unique.values())


# -- the checks -------------------------------------------------------------------------------------

def role_problems(iam: Any, role_arn: str) -> list[str]:
    """The role (an IAM role ARN) exists and its trust policy lets SageMaker assume it."""
    name = ROLE_ARN.fullmatch(role_arn)["name"]
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except Exception as error:
        if error_code(error) == NO_SUCH_ENTITY:
            return [f"the execution role {role_arn} does not exist: create it, or set role_arn to an existing role"]
        raise _not_checked(f"that the execution role {role_arn} exists and SageMaker may assume it (iam:GetRole)",
                           error) from error
    if role["Arn"] != role_arn:
        return [f"the execution role is {role['Arn']}, not {role_arn}: correct role_arn (its path)"]
    if not trusts_sagemaker(role.get("AssumeRolePolicyDocument") or {}):
        return [f"the execution role {role_arn} does not let SageMaker assume it: its trust policy needs a statement "
                f'{{"Effect": "Allow", "Principal": {{"Service": "{SAGEMAKER_PRINCIPAL}"}}, "Action": "sts:AssumeRole"}}']
    return []


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def trusts_sagemaker(document: Mapping[str, Any]) -> bool:
    """An Allow of sts:AssumeRole to the SageMaker service principal, and no Deny of it."""

    def names_sagemaker(statement: Mapping[str, Any]) -> bool:
        principal = statement.get("Principal")
        services = _as_list(principal.get("Service", [])) if isinstance(principal, Mapping) else []
        actions = _as_list(statement.get("Action", []))
        return (principal == "*" or SAGEMAKER_PRINCIPAL in services) and bool(
            {"sts:AssumeRole", "sts:*", "*"} & set(actions))

    statements = [statement for statement in _as_list(document.get("Statement", [])) if names_sagemaker(statement)]
    return any(s.get("Effect") == "Allow" for s in statements) and not any(s.get("Effect") == "Deny" for s in statements)


def simulate(iam: Any, principal_arn: str, action: str, resources: list[str],
             context: Mapping[str, str] | None = None) -> dict[str, str]:
    """IAM's policy simulator: resource -> decision (allowed, implicitDeny, explicitDeny) of one action."""
    entries = [{"ContextKeyName": key, "ContextKeyValues": [value], "ContextKeyType": "string"}
               for key, value in (context or {}).items()]
    decisions: dict[str, str] = {}
    pages = iam.get_paginator("simulate_principal_policy").paginate(
        PolicySourceArn=principal_arn, ActionNames=[action], ResourceArns=resources,
        **({"ContextEntries": entries} if entries else {}))
    for page in pages:
        for result in page["EvaluationResults"]:
            for specific in result.get("ResourceSpecificResults") or [
                    {"EvalResourceName": result["EvalResourceName"], "EvalResourceDecision": result["EvalDecision"]}]:
                decisions[specific["EvalResourceName"]] = specific["EvalResourceDecision"]
    return decisions


def iam_principal(iam: Any, caller_arn: str) -> str | None:
    """The IAM user or role behind STS's caller identity, as the simulator takes it; None for the account's root."""
    if ROOT_ARN.fullmatch(caller_arn):
        return None
    if IAM_USER_ARN.fullmatch(caller_arn):
        return caller_arn
    assumed = ASSUMED_ROLE_ARN.fullmatch(caller_arn)
    if assumed is None:
        raise NotChecked(f"could not check that Airflow's identity {caller_arn} may pass the execution role "
                         "(iam:PassRole): it is neither an IAM user nor an assumed role, which is all the policy "
                         "simulator evaluates")
    try:
        return iam.get_role(RoleName=assumed["name"])["Role"]["Arn"]
    except Exception as error:
        raise _not_checked(f"that Airflow's identity {caller_arn} may pass the execution role (iam:PassRole; "
                           f"iam:GetRole on its own role {assumed['name']} was needed first)", error) from error


def pass_role_problems(iam: Any, caller_arn: str, role_arn: str) -> list[str]:
    """Airflow's identity may pass the role to SageMaker, else CreateHyperParameterTuningJob is refused."""
    principal = iam_principal(iam, caller_arn)
    if principal is None:
        return []  # the account's root user may pass any role
    try:
        decision = simulate(iam, principal, "iam:PassRole", [role_arn],
                            {"iam:PassedToService": SAGEMAKER_PRINCIPAL})[role_arn]
    except Exception as error:
        raise _not_checked(f"that Airflow's identity {principal} may pass the execution role {role_arn} "
                           "(iam:PassRole, with IAM's policy simulator)", error) from error
    if decision == "allowed":
        return []
    return [f"Airflow's identity {principal} may not pass the execution role {role_arn} to SageMaker ({decision} "
            f"of iam:PassRole): every launch would be refused with AccessDenied; allow iam:PassRole on {role_arn} "
            f"(condition iam:PassedToService {SAGEMAKER_PRINCIPAL})"]


def role_access_problems(iam: Any, role_arn: str, needs: list[S3Access]) -> list[str]:
    """The role may do each S3 access SageMaker does on its behalf (IAM's policy simulator)."""
    role = role_arn.rsplit("/", 1)[-1]
    groups: dict[tuple[str, str | None], list[S3Access]] = {}
    for access in needs:
        groups.setdefault((access.action, access.prefix), []).append(access)
    problems = []
    for (action, prefix), accesses in groups.items():
        resources = list(dict.fromkeys(access.resource for access in accesses))
        try:
            decisions = simulate(iam, role_arn, action, resources, {"s3:prefix": prefix} if prefix is not None else None)
        except Exception as error:  # the simulator is refused per principal: none of the rest can be checked either
            what = "; ".join(f"{access.action} on {access.resource} ({access.purpose})" for access in needs)
            raise _not_checked(f"with IAM's policy simulator (iam:SimulatePrincipalPolicy) that the execution role "
                               f"{role_arn} may {what}", error) from error
        for access in accesses:
            decision = decisions.get(access.resource, "implicitDeny")
            if decision != "allowed":
                problems.append(
                    f"the execution role {role} may not {access.action} on {access.resource}"
                    f"{f' (s3:prefix {prefix!r})' if prefix is not None else ''}, which {access.purpose} needs "
                    f"({decision}): every training job would fail after start-up with an S3 AccessDenied; grant it in "
                    "the role's policy")
    return problems


def training_quota_name(instance_type: str, spot: bool) -> str:
    """Service Quotas' name of the account's instances of a type for (spot) training jobs."""
    return f"{instance_type} for {'spot ' if spot else ''}training job usage"


def find_quota(quotas: Any, name: str) -> dict[str, Any] | None:
    """The account's applied SageMaker quota of that name, else its default (Service Quotas lists some only there)."""
    for operation in ("list_service_quotas", "list_aws_default_service_quotas"):
        for page in quotas.get_paginator(operation).paginate(ServiceCode="sagemaker"):
            for quota in page["Quotas"]:
                if quota.get("QuotaName") == name:
                    return quota
    return None


def quota_problems(quotas: Any, request: Mapping[str, Any], region: str) -> list[str]:
    """A tuning job holds MaxParallelTrainingJobs x InstanceCount instances at once: a smaller quota never runs it."""
    definition = request["TrainingJobDefinition"]
    resources = definition["ResourceConfig"]
    name = training_quota_name(resources["InstanceType"], bool(definition.get("EnableManagedSpotTraining")))
    try:
        quota = find_quota(quotas, name)
    except Exception as error:
        raise _not_checked(f"the Service Quotas quota {name!r} in {region} (servicequotas:ListServiceQuotas)",
                           error) from error
    if quota is None:
        raise NotChecked(f"could not check the quota {name!r}: Service Quotas lists no SageMaker quota of that name in "
                         f"{region}")
    parallel = request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"]
    needed = parallel * resources["InstanceCount"]
    if quota["Value"] >= needed:
        return []
    return [f"the account's Service Quotas quota {name!r} ({quota['QuotaCode']}) is {quota['Value']:g} in {region}, "
            f"below the {needed} instance(s) one tuning job asks for ({parallel} parallel training jobs x "
            f"{resources['InstanceCount']} instance): every launch would fail as one that can never fit; request an "
            "increase in Service Quotas, or lower parallel_training_jobs"]


def bucket_region(s3: Any, bucket: str) -> str:
    """S3's answer in the region's own terms: no constraint is us-east-1, `EU` is eu-west-1."""
    constraint = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(constraint, constraint)


def bucket_region_problems(s3: Any, uses: Mapping[str, str], region: str) -> list[str]:
    """SageMaker reads channels from and writes output to buckets of its own region only. `uses`: what -> s3 URI."""
    by_bucket: dict[str, list[str]] = {}
    for what, uri in uses.items():
        by_bucket.setdefault(split_s3_uri(uri)[0], []).append(what)
    problems = []
    for bucket, whats in by_bucket.items():
        try:
            location = bucket_region(s3, bucket)
        except Exception as error:  # the other buckets can still be checked
            log.warning("preflight %s", _not_checked(f"the region of bucket {bucket} ({', '.join(whats)}; "
                                                     "s3:GetBucketLocation)", error))
            continue
        if location != region:
            problems.append(f"{', '.join(whats)}: bucket {bucket} is in {location}, but the jobs train in {region}: "
                            "SageMaker uses S3 buckets of its own region only; copy the data or set region_name")
    return problems


# -- the whole preflight ------------------------------------------------------------------------------

def aws_client(service: str, aws_conn_id: str | None, region: str) -> Any:
    """A boto3 client of the Airflow connection (credentials, endpoint, verify), retrying little, as the
    catalogue reads do: a refused call is an answer here, not something to wait for."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config

    from model_selection.backends.jumpstart import LOOKUP_RETRIES

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type=service, region_name=region)
    return hook.get_client_type(region_name=region, config=(hook.config or Config()).merge(Config(retries=LOOKUP_RETRIES)))


def preflight_problems(study: Any, specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every preflight problem of a SageMaker plan whose models resolved (`specs`: model id -> launch spec),
    read off the tuning requests they make; what could not be checked is logged as a warning instead."""
    from model_selection.tuning_request import build_tuning_request

    requests = {model_id: build_tuning_request("preflight", **{key: value for key, value in spec.items()
                                                               if key != "jumpstart_model_version"})
                for model_id, spec in specs.items()}
    first = next(iter(requests.values()))
    definition = first["TrainingJobDefinition"]
    region = definition["StaticHyperParameters"]["sagemaker_region"]
    role_arn = definition["RoleArn"]

    def client(service: str) -> Any:
        return aws_client(service, study.aws_conn_id, region)

    locations = {**{f"dataset.{channel['ChannelName']}": channel["DataSource"]["S3DataSource"]["S3Uri"]
                    for channel in definition["InputDataConfig"] if channel["ChannelName"] in DATA_CHANNELS},
                 "output_path": definition["OutputDataConfig"]["S3OutputPath"]}
    buckets = {what: uri for what, uri in locations.items() if uri.startswith("s3://")}
    return checked([
        lambda: quota_problems(client("service-quotas"), first, region),
        lambda: bucket_region_problems(client("s3"), buckets, region),
        *([lambda: execution_role_problems(client("iam"), client("sts"), role_arn, role_needs(requests))]
          if role_arn else []),  # no role at all is the plan's problem already
    ])


def checked(checks: Iterable[Callable[[], list[str]]]) -> list[str]:
    """The problems of every check, in order; each one that could not be made is a warning in the plan log."""
    problems: list[str] = []
    for check in checks:
        try:
            problems += check()
        except NotChecked as unchecked:
            log.warning("preflight %s", unchecked)
    return problems


def execution_role_problems(iam: Any, sts: Any, role_arn: str, needs: list[S3Access]) -> list[str]:
    """The role's own checks, then (once it exists and trusts SageMaker) passing it and its S3 access."""
    arn = ROLE_ARN.fullmatch(role_arn)
    if arn is None:
        return [f"role_arn {role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"]
    try:
        caller = sts.get_caller_identity()
    except Exception as error:
        raise _not_checked(f"the execution role {role_arn} (sts:GetCallerIdentity)", error) from error
    if arn["account"] != caller["Account"]:
        raise NotChecked(f"could not check the execution role {role_arn}: it is in account {arn['account']}, Airflow's "
                         f"identity in {caller['Account']}, and IAM answers for its own account only (whether it "
                         "exists, trusts SageMaker, may be passed, and may read and write S3)")
    found = checked([lambda: role_problems(iam, role_arn)])
    if found:  # simulating a role that does not exist or that SageMaker cannot assume tells nothing more
        return found
    return checked([lambda: pass_role_problems(iam, caller["Arn"], role_arn),
                    lambda: role_access_problems(iam, role_arn, needs)])
