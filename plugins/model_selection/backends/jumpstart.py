"""A SageMaker JumpStart model id, resolved into what a tuning job request needs.

The JumpStart catalogue (`models_manifest.json` plus one spec per model in the S3 bucket
`jumpstart-cache-prod-{region}`) says which image, training script, pretrained weights and
default hyperparameters a model id stands for. The sagemaker 3.x SDK reads and caches it; we
only call its public retrieve functions and turn its assorted KeyError / ValueError failures
into one `JumpStartError` that names the model. With `AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE`
and `AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE` set to folders, the SDK reads local copies
and `resolve` needs no network at all.

Every look-up goes through the Airflow AWS connection: the SDK session is built from the Amazon
provider's hook (credentials, assumed role, profile) and its S3 and SageMaker clients use the
connection's `endpoint_url`, `verify` and botocore settings. boto3's default chain is consulted
only where the provider itself does so: a connection that carries no credentials at all. A
connection id that names no connection is an error, never a silent fall-back.

What is wrong with the connection rather than with a model (refused or missing credentials, a
missing permission, a region without JumpStart or an endpoint that cannot be reached) is raised
as `AwsAccessError`, which callers report once for the whole plan.

sagemaker is imported inside the functions: the import takes seconds and DAG files are parsed often.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# What the JumpStart TensorFlow image-classification container runs when the spec names no
# `sagemaker_program` container hyperparameter.
DEFAULT_ENTRY_POINT = "transfer_learning.py"
# Where a network-isolated container finds the training script: the V2 SDK's
# `Framework.CONTAINER_CODE_CHANNEL_SOURCEDIR_PATH`, inside the `code` input channel.
CODE_CHANNEL = "code"
CODE_CHANNEL_SCRIPT_PATH = "/opt/ml/input/data/code/sourcedir.tar.gz"

log = logging.getLogger(__name__)

# Catalogue reads are few and small: a throttled or dropped connection is retried a little, but
# refused credentials and missing permissions are never retried (botocore's standard mode does
# not retry them) and an unreachable endpoint gives up after three attempts, whatever retry
# settings the connection gives its SageMaker calls.
LOOKUP_RETRIES = {"mode": "standard", "total_max_attempts": 3}

# botocore error codes, by what the person who owns the connection has to fix.
CREDENTIAL_ERROR_CODES = frozenset({
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "InvalidSignatureException",
    "IncompleteSignature", "MissingAuthenticationToken", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
    "ExpiredTokenException", "TokenRefreshRequired", "AuthFailure",
})
PERMISSION_ERROR_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AllAccessDisabled", "Forbidden", "403",
})
# S3 operations the catalogue reads and the IAM actions they need.
S3_ACTIONS = {"GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket",
              "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket"}


@dataclass(frozen=True)
class JumpStartModel:
    """Everything a CreateHyperParameterTuningJob request takes from the JumpStart catalogue.

    `training_script_uri` becomes the `sagemaker_submit_directory` hyperparameter (with network
    isolation, the `code` channel: `ship_script_as_code_channel`),
    `entry_point` the `sagemaker_program` one, and `model_artifact_uri` an input channel named
    `model`. `default_hyperparameters` holds only the algorithm's own (tunable) ones;
    `hyperparameter_ranges` says, for each of them, what the spec allows ("float in [1e-06, 0.5]").
    """

    model_id: str
    model_version: str
    training_image_uri: str
    training_script_uri: str
    model_artifact_uri: str
    default_hyperparameters: dict[str, str]
    entry_point: str
    hyperparameter_ranges: dict[str, str] = field(default_factory=dict)


class JumpStartError(ValueError):
    """A model id that cannot be trained as asked: unknown, wrong instance type or wrong region."""


class AwsAccessError(Exception):
    """The AWS connection cannot be used at all: one problem for the whole plan, not one per model.

    `kind` is one of "missing connection", "missing credentials", "credentials", "permissions",
    "region" (no JumpStart there, or the endpoint cannot be reached) and "service" (any other
    error the catalogue read got from AWS).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def connection_label(aws_conn_id: str | None) -> str:
    return f"AWS connection {aws_conn_id!r}" if aws_conn_id else "boto3's default credentials (no aws_conn_id)"


def access_error(error: BaseException, aws_conn_id: str | None, region: str | None,
                 doing: str = "calling AWS") -> AwsAccessError | None:
    """The connection-level problem behind a botocore error, or None when it is about something else."""
    from botocore import exceptions

    who = connection_label(aws_conn_id)
    if isinstance(error, (exceptions.NoCredentialsError, exceptions.PartialCredentialsError)):
        return AwsAccessError("missing credentials", (
            f"{who} gives no usable AWS credentials ({type(error).__name__}: {error}) while {doing}: set its login "
            "(access key id) and password (secret access key), or role_arn or profile_name in its extra"))
    if isinstance(error, (exceptions.ProfileNotFound, exceptions.CredentialRetrievalError)):
        return AwsAccessError("credentials", (
            f"{who}: its credentials cannot be loaded ({type(error).__name__}: {error}) while {doing}: fix "
            "profile_name or role_arn in its extra, or the AWS_PROFILE environment variable of the workers"))
    if isinstance(error, exceptions.NoRegionError):
        return AwsAccessError("region", (
            f"{who} has no region while {doing}: set region_name in the study or in the connection's extra"))
    if isinstance(error, (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError)):
        return AwsAccessError("region", (
            f"{who}: cannot reach AWS in region {region!r} while {doing} ({error}): check the region and the "
            "connection's endpoint_url (extra), and that the workers can reach it"))
    if not isinstance(error, exceptions.ClientError):
        return None
    details = error.response.get("Error", {})
    code = str(details.get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
    message = details.get("Message") or str(error)
    if code in CREDENTIAL_ERROR_CODES:
        return AwsAccessError("credentials", (
            f"{who}: AWS refused its credentials ({code}: {message}) while {doing}: fix the connection's "
            "login (access key id), password (secret access key), aws_session_token or role_arn"))
    if code in PERMISSION_ERROR_CODES:
        action = S3_ACTIONS.get(error.operation_name, error.operation_name)
        return AwsAccessError("permissions", (
            f"{who} lacks a permission: {code} on {error.operation_name} while {doing} ({message}): grant the "
            f"connection's identity {action} on it"))
    return None


@contextlib.contextmanager
def aws_calls(aws_conn_id: str | None, region: str | None, doing: str) -> Iterator[None]:
    """Re-raises botocore's connection-level errors as `AwsAccessError`; everything else as it is."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as error:
        problem = access_error(error, aws_conn_id, region, doing)
        if problem is None:
            if isinstance(error, ClientError):  # e.g. NoSuchBucket: the same for every model
                raise AwsAccessError("service", f"{connection_label(aws_conn_id)}: {doing} failed: {error}") from error
            raise
        raise problem from error


def aws_connection(aws_conn_id: str | None) -> Any:
    """The provider's view of the connection (AwsConnectionWrapper); AwsAccessError when the id names none."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    wrapper = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sagemaker").conn_config
    if aws_conn_id and not wrapper:  # the provider would fall back to boto3's default chain
        raise AwsAccessError("missing connection", (
            f"AWS connection {aws_conn_id!r} is not defined: create it (credentials, region_name and, for a "
            "test endpoint, endpoint_url in its extra) or set aws_conn_id to an existing connection"))
    return wrapper


def check_region(region: str, aws_conn_id: str | None = None) -> None:
    """AwsAccessError unless the SDK lists the region as one with JumpStart. No network call."""
    from sagemaker.core.jumpstart.constants import JUMPSTART_REGION_NAME_SET

    if region not in JUMPSTART_REGION_NAME_SET:
        raise AwsAccessError("region", (
            f"region {region!r} (the study's region_name, else the region of {connection_label(aws_conn_id)}) is "
            f"not a region with SageMaker JumpStart: use one of {', '.join(sorted(JUMPSTART_REGION_NAME_SET))}"))


@functools.lru_cache(maxsize=None)
def _session(aws_conn_id: str | None, region: str) -> Any:
    """One SDK session per (connection, region), built from the connection without a network call.

    The boto3 session comes from the provider's hook, so credentials (keys, profile or an assumed
    role) are the connection's. The SDK makes its own S3 client from that session without an
    endpoint; ours carries the connection's endpoint_url, verify and botocore settings. Reusing the
    session keeps the SDK's metadata cache, which it drops whenever it is handed a different S3
    client. Raises AwsAccessError for a missing connection, an unknown region or unloadable credentials.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config
    from sagemaker.core.helper.session_helper import Session

    from model_selection.backends.api import hold_to_service_model

    check_region(region, aws_conn_id)
    connection = aws_connection(aws_conn_id)
    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sagemaker", region_name=region)
    config = (hook.config or Config()).merge(Config(retries=LOOKUP_RETRIES))
    with aws_calls(aws_conn_id, region, "opening a session for the JumpStart catalogue"):
        boto_session = hook.get_session(region_name=region)

        def client(service: str) -> Any:
            return boto_session.client(service, region_name=region, config=config, verify=connection.verify,
                                       endpoint_url=connection.get_service_endpoint_url(service))

        # the SDK's SageMaker calls are held to the service model as the hook's are
        session = Session(boto_session=boto_session, sagemaker_client=hold_to_service_model(client("sagemaker")))
        session.s3_client = client("s3")
        session.s3_resource = boto_session.resource(
            "s3", region_name=region, config=config, verify=connection.verify,
            endpoint_url=connection.get_service_endpoint_url("s3"))
    return session


def _catalogue(region: str) -> str:
    """Where the region's JumpStart catalogue lives (the SDK's content bucket)."""
    from sagemaker.core.jumpstart.utils import get_jumpstart_content_bucket

    return f"s3://{get_jumpstart_content_bucket(region)}/"


def _describe_range(spec: Any) -> str:
    """What a JumpStart hyperparameter spec allows, in words: "one of a, b", "float in [0.0, 1.0]", "int >= 1"."""
    options = getattr(spec, "options", None)
    if options:
        return "one of " + ", ".join(str(option) for option in options)
    low = (f"[{spec.min}" if hasattr(spec, "min") else
           f"({spec.exclusive_min}" if hasattr(spec, "exclusive_min") else None)
    high = (f"{spec.max}]" if hasattr(spec, "max") else
            f"{spec.exclusive_max})" if hasattr(spec, "exclusive_max") else None)
    if low and high:
        return f"{spec.type} in {low}, {high}"
    if low:
        return f"{spec.type} {'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high:
        return f"{spec.type} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    return spec.type


def _tolerance(tolerate_flagged: bool) -> dict[str, bool]:
    """The SDK's arguments that accept a spec the catalogue marks deprecated or vulnerable (every look-up checks)."""
    return {"tolerate_deprecated_model": tolerate_flagged, "tolerate_vulnerable_model": tolerate_flagged}


def resolve(model_id: str, instance_type: str, region: str, aws_conn_id: str | None,
            model_version: str = "*", tolerate_flagged: bool = False) -> JumpStartModel:
    """The image, script, weights and default hyperparameters of a JumpStart model for one instance type.

    Raises JumpStartError when the catalogue has no such model (or version) in the region, when
    the model does not list the instance type for training, when it has no training image in
    the region, or when the catalogue marks it deprecated or its training script vulnerable and
    `tolerate_flagged` is off (with it on, the log names what was accepted); AwsAccessError when
    the connection or region cannot be used at all.
    """
    from sagemaker.core import hyperparameters, image_uris, model_uris, script_uris
    from sagemaker.core.jumpstart.utils import verify_model_region_and_return_specs

    session = _session(aws_conn_id, region)
    with aws_calls(aws_conn_id, region, f"reading the JumpStart catalogue {_catalogue(region)}"):
        try:  # flags are judged below, with what the catalogue says about them
            specs = verify_model_region_and_return_specs(
                model_id=model_id, version=model_version, scope="training",
                region=region, sagemaker_session=session, **_tolerance(True),
            )
        except KeyError as error:  # the SDK's manifest lookup: no such id (or version) in the region's catalogue
            raise JumpStartError(
                f"unknown JumpStart model {model_id!r} (version {model_version!r}): the {region} catalogue does not "
                f"offer it: {error.args[0]}"
            ) from error
        except ValueError as error:  # no JumpStart in the region, or no training
            raise JumpStartError(f"JumpStart model {model_id!r} cannot be trained in {region}: {error}") from error
        flags = _flags(specs)
        if flags and not tolerate_flagged:
            raise JumpStartError(f"JumpStart model {model_id!r} version {specs.version} is refused: {'; '.join(flags)}. "
                                 "Set tolerate_deprecated_or_vulnerable_models to true to train it knowingly")
        for flag in flags:
            log.warning("JumpStart model %s version %s is accepted although %s (tolerate_deprecated_or_vulnerable_models)",
                        model_id, specs.version, flag)

        supported = specs.supported_training_instance_types or []
        if supported and instance_type not in supported:
            raise JumpStartError(
                f"JumpStart model {model_id!r} does not support training instance type {instance_type!r}; "
                f"it supports {', '.join(supported)}"
            )

        # Pin the version found, so every call below and the caller's records mean the same spec.
        lookup = {"model_id": model_id, "model_version": specs.version, "region": region, "sagemaker_session": session,
                  **_tolerance(bool(flags))}
        try:
            image_uri = image_uris.retrieve(framework=None, image_scope="training", instance_type=instance_type,
                                            **lookup)
        except ValueError as error:  # the spec has no image for this instance type in this region
            raise JumpStartError(
                f"JumpStart model {model_id!r} is not available in region {region} for {instance_type!r}: {error}"
            ) from error

        algorithm = hyperparameters.retrieve_default(instance_type=instance_type, **lookup)
        with_container = hyperparameters.retrieve_default(
            instance_type=instance_type, include_container_hyperparameters=True, **lookup
        )
        return JumpStartModel(
            model_id=model_id,
            model_version=specs.version,
            training_image_uri=image_uri,
            training_script_uri=script_uris.retrieve(script_scope="training", **lookup),
            model_artifact_uri=model_uris.retrieve(model_scope="training", instance_type=instance_type, **lookup),
            default_hyperparameters=algorithm,
            entry_point=with_container.get("sagemaker_program", DEFAULT_ENTRY_POINT),
            hyperparameter_ranges={spec.name: _describe_range(spec) for spec in specs.hyperparameters
                                   if spec.name in algorithm},
        )


def _flags(specs: Any) -> list[str]:
    """What the catalogue holds against a spec for training, in words."""
    flags = []
    if specs.deprecated:
        flags.append(f"the catalogue marks it deprecated ({specs.deprecated_message or 'no reason given'})")
    if specs.training_vulnerable:
        flags.append("the catalogue marks its training script vulnerable "
                     f"({', '.join(specs.training_vulnerabilities) or 'no dependency named'})")
    return flags


def hyperparameter_problems(model: JumpStartModel, values: Mapping[str, str], region: str,
                            aws_conn_id: str | None, tolerate_flagged: bool = False) -> list[str]:
    """Each value the model's spec refuses (type, range, options), by the SDK's own validation.

    `values` are checked one by one, so every bad one is named, with what the spec allows.
    `tolerate_flagged` as for `resolve`: the SDK's validation checks the flags again.
    """
    from sagemaker.core import hyperparameters
    from sagemaker.core.jumpstart.exceptions import JumpStartHyperparametersError

    def refusal(checked: Mapping[str, str]) -> str | None:
        with aws_calls(aws_conn_id, region, f"reading the JumpStart catalogue {_catalogue(region)}"):
            try:
                hyperparameters.validate(region=region, model_id=model.model_id, model_version=model.model_version,
                                         hyperparameters=dict(checked), sagemaker_session=_session(aws_conn_id, region),
                                         **_tolerance(tolerate_flagged))
            except JumpStartHyperparametersError as error:
                return str(error)
        return None

    if not values or refusal(values) is None:
        return []
    problems = []
    for name, value in values.items():
        reason = refusal({name: value})
        if reason:
            allowed = model.hyperparameter_ranges.get(name, "see the model's spec")
            problems.append(f"{model.model_id} (version {model.model_version}): hyperparameter {name}={value!r} is "
                            f"refused: {reason} Allowed: {allowed}")
    return problems


def ship_script_as_code_channel(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its training script as a `code` input channel, for a network-isolated container.

    An isolated container cannot download `sagemaker_submit_directory` from S3 itself, so, as the
    V2 SDK's JumpStartEstimator does with network isolation, SageMaker delivers the script tarball
    as the `code` channel and the hyperparameter points at its path inside the container.
    """
    from model_selection.tuning_request import channel

    static = dict(spec["static_hyperparameters"])
    script_uri = static["sagemaker_submit_directory"]
    static["sagemaker_submit_directory"] = CODE_CHANNEL_SCRIPT_PATH
    return {**spec, "static_hyperparameters": static,
            "extra_channels": [*spec["extra_channels"], channel(CODE_CHANNEL, script_uri, content_type=None)]}


def sdk_tags(model: JumpStartModel) -> dict[str, str]:
    """The tags the SDK itself puts on JumpStart training jobs: model id and resolved version."""
    from sagemaker.core.jumpstart.enums import JumpStartTag

    return {JumpStartTag.MODEL_ID.value: model.model_id, JumpStartTag.MODEL_VERSION.value: model.model_version}


def list_models(filter: str | Sequence[str], region: str, aws_conn_id: str | None) -> list[str]:  # noqa: A002 - the SDK's name
    """Model ids in the region's JumpStart catalogue that match every filter, e.g. "task == ic".

    Reads the catalogue from S3 through the connection (the SDK's local-folder override does not
    serve this call). Raises AwsAccessError when the connection or region cannot be used.
    """
    from sagemaker.core.jumpstart.filters import And
    from sagemaker.core.jumpstart.notebook_utils import list_jumpstart_models

    filters = [filter] if isinstance(filter, str) else list(filter)
    session = _session(aws_conn_id, region)
    with aws_calls(aws_conn_id, region, f"listing the JumpStart catalogue {_catalogue(region)}"):
        return list_jumpstart_models(filter=And(*filters), region=region, sagemaker_session=session)
