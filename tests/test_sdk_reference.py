"""The SageMaker SDK's own tuning request is the reference for ours.

For one JumpStart model and the same settings, the sagemaker 3.x SDK builds its
`CreateHyperParameterTuningJob` request (`ModelTrainer.from_jumpstart_config` with a
`HyperparameterTuner`) and the project launches its own through the Airflow operator, both
against the moto endpoint of `fake_sagemaker`. Both requests are taken off the wire (botocore
events) and compared field by field. The test passes only when they agree on every field
except those in `DELIBERATE`, and each of those differs exactly as stated there (so a drift on
either side, or a gap that has closed, fails and the table and the README are brought up to date).

Offline: the SDK's V3 JumpStart trainer reads model metadata with `DescribeHubContent` (the
SageMaker public hub), which moto does not serve. A `before-call` handler answers it with a hub
document made from the same spec `jumpstart_fixtures` writes for the project (see
`hub_document`), so both sides see one model. The SDK's S3 metadata functions
(`metric_definitions.retrieve_default`) read the local override folders `serving` sets.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_sagemaker import ACCOUNT, REGION, ROLE, serving
from jumpstart_fixtures import MODEL_VERSION, model_spec

MODEL = "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"
INSTANCE_TYPE = "ml.g4dn.xlarge"
LEARNING_RATES = [0.001, 0.0002]  # the spec's default learning rate times the study's multipliers 1 and 0.2
DATA = "s3://study-data/pets"
OUTPUT = "s3://study-data/output"
CHANNELS = ("training", "validation", "test")
# The notebook's fair-comparison rules, which the project applies to every model (planning.study_hyperparameters).
STUDY_HYPERPARAMETERS = {"epochs": "10", "early_stopping": "True", "early_stopping_patience": "3",
                         "early_stopping_min_delta": "0.0"}
OBJECTIVE = {"Name": "val_accuracy", "Regex": r"- val_accuracy: ([0-9\.]+)"}
CONTEXT = {"dag": SimpleNamespace(dag_id="sdk-reference"), "run_id": "manual__sdk_reference"}
README_SECTION = "How our tuning request differs from the SageMaker SDK's"


# -- how a difference is stated -----------------------------------------------------------------------
class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ABSENT = _Absent()  # the request has no such field
ANY = _Any()  # present, any value (for values that carry a time stamp or are the project's own)


@dataclass(frozen=True)
class Match:
    """A value that fully matches a regular expression."""

    pattern: str

    def __repr__(self) -> str:
        return f"Match({self.pattern!r})"


def _as_stated(expected: Any, value: Any) -> bool:
    if expected is ANY:
        return value is not ABSENT
    if isinstance(expected, Match):
        return isinstance(value, str) and re.fullmatch(expected.pattern, value) is not None
    return value == expected


@dataclass(frozen=True)
class Difference:
    fields: str  # a regular expression over the flattened field names below (fullmatch)
    sdk: Any
    ours: Any
    why: str


# Every field where our request deliberately differs from the SDK's, by the name the README's
# section uses. Field names are the flattened request: see `flatten`. The first entry whose
# `fields` match a differing field explains it.
DELIBERATE: dict[str, Difference] = {
    "tuning-job name": Difference(
        r"HyperParameterTuningJobName", ANY, Match(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}"),
        "the SDK names a job after its image and the time; ours is derived from the data set, study and model, "
        "so a retried or re-planned launch attaches to its job instead of launching it twice"),
    "strategy": Difference(
        r"Strategy", "Bayesian", "Grid",
        "Grid trains each listed learning rate exactly once, all in parallel; the SDK's default strategy chooses "
        "among them"),
    "stopping condition": Difference(
        r"StoppingCondition\.MaxRuntimeInSeconds", 3600, 86400,
        "the V3 SDK's default is one hour; a study's training jobs run up to the service's one day"),
    "JumpStart metric name": Difference(
        r"MetricDefinitions\.tensorflow-ic:val-accuracy", r"- val_accuracy: ([0-9\.]+)", ABSENT,
        "the spec's default metric is read under the notebook's name val_accuracy, with the same regex"),
    "per-problem metric list": Difference(
        r"MetricDefinitions\..+", ABSENT, ANY,
        "every figure the training script prints for this problem type (loss, accuracy, binary or top-5 "
        "metrics, parameters, durations, test latency and throughput), so FinalMetricDataList holds them all"),
    "log level": Difference(
        r"Environment\.SM_LOG_LEVEL", "20", ABSENT,
        "the V3 SDK turns the spec's sagemaker_container_log_level into an environment variable; "
        "we send it as a hyperparameter, as the V2 SDK's script mode did (next row)"),
    "script-mode hyperparameters": Difference(
        r"HyperParameter\.(sagemaker_container_log_level|sagemaker_region)", ABSENT, ANY,
        "the script-mode hyperparameters the V2 SDK sent to the JumpStart TensorFlow container"),
    "V3 driver channel": Difference(
        r"Channel\.sm_drivers\..+", ANY, ABSENT,
        "the V3 SDK uploads its own launcher (sm_drivers) to the default bucket; the JumpStart container "
        "runs sagemaker_program from sagemaker_submit_directory and does not use it"),
    "data channel content type": Difference(
        r"Channel\.(training|validation|test)\.ContentType", ABSENT, "application/x-image",
        "names what the channels hold (class folders of images); File-mode channels need no content type"),
    "our tags": Difference(
        r"Tags\.model-selection:.+", ABSENT, ANY,
        "the DAG, run and model of the job, so a job is found again and attributed"),
    "data channel prefix": Difference(
        r"Channel\.(training|validation|test)\.S3Uri", Match(r"s3://.*[^/]"), Match(r"s3://.*/"),
        "a data channel is a prefix: without a trailing '/', s3://b/train would also read s3://b/train-old/..., "
        "whose folders become extra classes; the SDK sends the URI as given"),
}

# With the account settings of `SETTINGS` on both sides, these differ too (besides DELIBERATE).
WITH_SETTINGS: dict[str, Difference] = {
    "volume KMS key dropped by the V3 tuner": Difference(
        r"ResourceConfig\.VolumeKmsKeyId", ABSENT, Match(r"alias/.+"),
        "the V3 HyperparameterTuner builds ResourceConfig from instance type, count and volume size only, so "
        "Compute.volume_kms_key_id never reaches the tuning job; the V2 SDK sent it"),
    "isolation and encryption dropped by the V3 tuner": Difference(
        r"Enable(NetworkIsolation|InterContainerTrafficEncryption)", False, True,
        "the V3 HyperparameterTuner passes Networking's subnets and security groups on, but not "
        "enable_network_isolation or enable_inter_container_traffic_encryption; the V2 SDK sent both"),
    "script as the code channel": Difference(
        r"HyperParameter\.sagemaker_submit_directory", Match(r"s3://.+/sourcedir\.tar\.gz"),
        "/opt/ml/input/data/code/sourcedir.tar.gz",
        "an isolated container cannot fetch its script from S3: as the V2 JumpStartEstimator does with network "
        "isolation, SageMaker delivers it as the code channel and the hyperparameter names its path there"),
    "code channel": Difference(
        r"Channel\.code\..+", ABSENT, ANY,
        "the JumpStart training script tarball, as the V2 SDK's code channel (S3Prefix, FullyReplicated, no "
        "content type)"),
}

# Fields the API gives a default when they are left out: absent and the default mean the same request.
API_DEFAULTS = {
    r"OutputDataConfig\.CompressionType": "GZIP",
    r"Channel\.[^.]+\.CompressionType": "None",
    r"Channel\.[^.]+\.RecordWrapperType": "None",
    r"TrainingJobEarlyStoppingType": "Off",
    r"Enable(NetworkIsolation|InterContainerTrafficEncryption|ManagedSpotTraining)": False,
}

# Shorter names for the request's nested fields, as the table and the README use them.
SHORTER = [
    ("HyperParameterTuningJobConfig.", ""), ("TrainingJobDefinition.", ""), ("AlgorithmSpecification.", ""),
    ("HyperParameterTuningJobObjective.", "Objective."), ("ParameterRanges.CategoricalParameterRanges.", "CategoricalRange."),
    ("InputDataConfig.", "Channel."), ("DataSource.S3DataSource.", ""), ("StaticHyperParameters.", "HyperParameter."),
    ("HyperParameters.", "HyperParameter."),  # a training job's own (after the tuning job's StaticHyperParameters)
]
NAMING_KEYS = ("ChannelName", "Key", "Name")


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """One entry per leaf field; lists of named items (channels, tags, metrics, ranges) are keyed by name."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        key = next((k for k in NAMING_KEYS if all(k in item for item in value)), None)
        if key is None:
            return {path: value}
        items = []
        for item in value:
            rest = {k: v for k, v in item.items() if k != key}
            only = next(iter(rest.values())) if len(rest) == 1 else None
            items.append((item[key], only if only is not None and not isinstance(only, dict) else rest))
    else:
        return {} if value is None or value == [] or value == {} else {path: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten(item, f"{path}.{key}" if path else str(key)))
    return flat


def fields(request: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for path, value in flatten(request).items():
        for long, short in SHORTER:
            path = path.replace(long, short)
        flat[path] = value
    return flat


def with_api_defaults(flat: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Fills in the API's default where this request leaves out a field the other one sets."""
    filled = dict(flat)
    for path in other.keys() - flat.keys():
        if re.fullmatch(r"Channel\.[^.]+\.InputMode", path):
            filled[path] = flat.get("TrainingInputMode", "File")
            continue
        default = next((value for pattern, value in API_DEFAULTS.items() if re.fullmatch(pattern, path)), ABSENT)
        if default is not ABSENT:
            filled[path] = default
    return filled


def differences(sdk: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    sdk_fields, our_fields = fields(sdk), fields(ours)
    sdk_fields, our_fields = with_api_defaults(sdk_fields, our_fields), with_api_defaults(our_fields, sdk_fields)
    return {path: (sdk_fields.get(path, ABSENT), our_fields.get(path, ABSENT))
            for path in sorted(sdk_fields.keys() | our_fields.keys())
            if sdk_fields.get(path, ABSENT) != our_fields.get(path, ABSENT)}


# -- the SDK's request ---------------------------------------------------------------------------------
def hub_document(model_id: str, region: str) -> dict[str, Any]:
    """What DescribeHubContent holds for the model: the fixture's S3 spec in the hub's document schema.

    URIs are the spec's keys in the region's JumpStart bucket, as the SDK's S3 retrieve functions
    build them. The V3 trainer takes a variant's ImageUri as it is, so variants carry the image
    the spec's regional alias names.
    """
    spec = model_spec(model_id, region)
    bucket = f"s3://jumpstart-cache-prod-{region}"
    variants = spec["training_instance_type_variants"]
    aliases = variants["regional_aliases"][region]
    hyperparameters = []
    for hyperparameter in spec["hyperparameters"]:
        entry = {"Name": hyperparameter["name"], "Type": hyperparameter["type"], "Default": hyperparameter["default"],
                 "Scope": hyperparameter["scope"]}
        entry.update({key.capitalize(): hyperparameter[key] for key in ("min", "max", "options") if key in hyperparameter})
        hyperparameters.append(entry)
    return {
        "ModelTypes": ["OPEN_WEIGHTS"],
        "Url": f"https://example.com/{model_id}",
        "MinSdkVersion": spec["min_sdk_version"],
        "TrainingSupported": spec["training_supported"],
        "IncrementalTrainingSupported": spec["incremental_training_supported"],
        "Hyperparameters": hyperparameters,
        "TrainingScriptUri": f"{bucket}/{spec['training_script_key']}",
        "TrainingArtifactUri": f"{bucket}/{spec['training_artifact_key']}",
        "TrainingMetrics": spec["metrics"],
        "DefaultTrainingInstanceType": spec["default_training_instance_type"],
        "SupportedTrainingInstanceTypes": spec["supported_training_instance_types"],
        "TrainingVolumeSize": spec["training_volume_size"],
        "TrainingEnableNetworkIsolation": spec["training_enable_network_isolation"],
        "EncryptInterContainerTraffic": spec["estimator_kwargs"]["encrypt_inter_container_traffic"],
        "TrainingInstanceTypeVariants": {
            "Aliases": aliases,
            "Variants": {family: {"Properties": {"ImageUri": aliases[variant["regional_properties"]["image_uri"].lstrip("$")]}}
                         for family, variant in variants["variants"].items()},
        },
        "ResourceNameBase": spec["resource_name_base"],
    }


def answer_describe_hub_content(params: dict[str, Any], **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """A before-call handler: the public hub's answer, without a request."""
    from botocore.awsrequest import AWSResponse

    asked = json.loads(params["body"])
    name, hub = asked["HubContentName"], asked["HubName"]
    return AWSResponse(params["url"], 200, {}, None), {
        "HubContentName": name, "HubContentVersion": MODEL_VERSION, "HubContentType": "Model",
        "HubContentArn": f"arn:aws:sagemaker:{REGION}:aws:hub-content/{hub}/Model/{name}/{MODEL_VERSION}",
        "DocumentSchemaVersion": "2.3.0", "HubName": hub, "HubArn": f"arn:aws:sagemaker:{REGION}:aws:hub/{hub}",
        "HubContentDocument": json.dumps(hub_document(name, REGION)), "HubContentStatus": "Available",
        "CreationTime": dt.datetime.now(dt.timezone.utc),
    }


def sdk_session(monkeypatch: Any, endpoint: str, operation: str, handlers: dict[str, Any] | None = None,
                ) -> tuple[Any, list[dict[str, Any]]]:
    """An SDK session whose every client reaches moto, and the list that receives each `operation` request it sends.

    `handlers`: more botocore event handlers, by event name, registered before any client is made.
    """
    import boto3
    from botocore.awsrequest import AWSResponse
    from sagemaker.core.helper.session_helper import Session

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # every client the SDK makes reaches moto
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # the SDK's client-side IAM check; not part of the request
    sent: list[dict[str, Any]] = []
    boto_session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    # moto's IAM policy simulation knows no SDK default bucket; the SDK asks whether the role may write to it.
    boto_session.events.register("before-call.iam.SimulatePrincipalPolicy", lambda params, **kwargs: (
        AWSResponse(params["url"], 200, {}, None), {"EvaluationResults": [{"EvalDecision": "allowed"}]}))
    boto_session.events.register(f"before-call.sagemaker.{operation}",
                                 lambda params, **kwargs: sent.append(json.loads(params["body"])))
    for event, handler in (handlers or {}).items():
        boto_session.events.register(event, handler)
    # A default bucket named as the SDK names it (it would ask STS's fixed regional endpoint for the account).
    return Session(boto_session=boto_session, default_bucket=f"sagemaker-{REGION}-{ACCOUNT}"), sent


def sdk_request(monkeypatch: Any, endpoint: str, max_parallel_jobs: int = len(LEARNING_RATES),
                **trainer_settings: Any) -> dict[str, Any]:
    """The request the SDK sends for the model and settings, as it went on the wire (to moto).

    `trainer_settings` are `ModelTrainer.from_jumpstart_config` arguments (compute, networking, ...).
    """
    from sagemaker.core import metric_definitions
    from sagemaker.core.jumpstart.configs import JumpStartConfig
    from sagemaker.core.parameter import CategoricalParameter
    from sagemaker.core.training.configs import Compute, InputData, OutputDataConfig
    from sagemaker.train.model_trainer import ModelTrainer
    from sagemaker.train.tuner import HyperparameterTuner

    session, sent = sdk_session(monkeypatch, endpoint, "CreateHyperParameterTuningJob",
                                {"before-call.sagemaker.DescribeHubContent": answer_describe_hub_content})
    trainer = ModelTrainer.from_jumpstart_config(
        JumpStartConfig(model_id=MODEL),
        hyperparameters=dict(STUDY_HYPERPARAMETERS),
        sagemaker_session=session,
        role=ROLE,
        **{"compute": Compute(instance_type=INSTANCE_TYPE), "output_data_config": OutputDataConfig(s3_output_path=OUTPUT),
           **trainer_settings},
    )
    jumpstart_metrics = metric_definitions.retrieve_default(
        model_id=MODEL, model_version="*", region=REGION, sagemaker_session=session)
    tuner = HyperparameterTuner(
        trainer, OBJECTIVE["Name"], {"learning_rate": CategoricalParameter(LEARNING_RATES)},
        metric_definitions=[*jumpstart_metrics, OBJECTIVE],  # the model's own, and the objective's
        objective_type="Maximize", max_jobs=len(LEARNING_RATES), max_parallel_jobs=max_parallel_jobs,
    )
    tuner.tune(inputs=[InputData(channel_name=channel, data_source=f"{DATA}/{channel}") for channel in CHANNELS],
               wait=False)
    assert len(sent) == 1, sent
    return sent[0]


# -- the project's request -----------------------------------------------------------------------------
def our_request(tmp_path: Path, hooked: list, **settings: Any) -> dict[str, Any]:
    """The request the project's launch operator sends for the same model and settings (`settings`: more Params)."""
    from model_selection.dag_tasks import plan_task
    from model_selection.operators import TuningJobLaunchOperator

    sent: list[dict[str, Any]] = []

    def record(request: Any, event_name: str, **kwargs: Any) -> None:
        if event_name.endswith(".CreateHyperParameterTuningJob"):
            sent.append(json.loads(request.body))

    hooked.append(record)
    params = {
        "backend": "sagemaker", "model_ids": [MODEL],
        "dataset": {"name": "pets", **{channel: f"{DATA}/{channel}" for channel in CHANNELS}},
        "hyperparameters": {}, "learning_rate_multipliers": [1.0, 0.2],
        "epochs": int(STUDY_HYPERPARAMETERS["epochs"]),
        "early_stopping_patience": int(STUDY_HYPERPARAMETERS["early_stopping_patience"]),
        "instance_type": INSTANCE_TYPE, "role_arn": ROLE, "output_path": OUTPUT,
        "results_uri": str(tmp_path / "results"), **settings,
    }
    [launch] = plan_task(params, tmp_path)["launches"]
    TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    hooked.remove(record)
    assert len(sent) == 1, sent
    return sent[0]


# -- the test ------------------------------------------------------------------------------------------
def table(rows: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {path}: SDK {sdk!r} | ours {ours!r}" for path, (sdk, ours) in rows.items())


def problems_with(sdk: dict[str, Any], ours: dict[str, Any], stated: dict[str, Difference] = DELIBERATE) -> list[str]:
    """Each difference `stated` does not state, each one not as stated, and each stated one gone."""
    problems = []
    explained: dict[str, list[str]] = {name: [] for name in stated}
    for path, (sdk_value, our_value) in differences(sdk, ours).items():
        name = next((name for name, entry in stated.items() if re.fullmatch(entry.fields, path)), None)
        if name is None:
            problems.append(f"{path}: SDK {sdk_value!r} | ours {our_value!r} is not a stated difference")
            continue
        entry = stated[name]
        if not (_as_stated(entry.sdk, sdk_value) and _as_stated(entry.ours, our_value)):
            problems.append(f"{path}: SDK {sdk_value!r} | ours {our_value!r}, but {name!r} states "
                            f"SDK {entry.sdk!r} | ours {entry.ours!r}")
        explained[name].append(path)
    problems += [f"{name!r} no longer differs: remove it from DELIBERATE and the README"
                 for name, paths in explained.items() if not paths]
    return problems


def test_our_tuning_request_differs_from_the_sdks_only_where_stated(tmp_path, monkeypatch, hooked):
    with serving(tmp_path, monkeypatch, [MODEL], run_seconds=3600) as fake:  # jobs stay InProgress
        ours = our_request(tmp_path, hooked)
        sdk = sdk_request(monkeypatch, fake.endpoint)

    problems = problems_with(sdk, ours)
    assert not problems, "\n".join(problems) + "\n\nevery difference:\n" + table(differences(sdk, ours))

    # What the rows above allow must still hold as concepts: we read every figure the SDK reads
    # (under any name), and the objective's definition is the SDK's.
    def regexes(request):
        return {d["Regex"] for d in request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]}

    assert regexes(sdk) <= regexes(ours)
    objective = ours["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    assert objective == {"Type": "Maximize", "MetricName": OBJECTIVE["Name"]}
    assert OBJECTIVE in ours["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]


# The account settings of the second comparison, as Params (ours) and as the SDK's arguments.
SUBNETS, SECURITY_GROUPS = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"], ["sg-0123456789abcdef0"]
VOLUME_KEY, OUTPUT_KEY = "alias/training-volumes", "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SETTINGS = {"parallel_training_jobs": 1, "volume_size_gb": 100, "vpc_subnets": SUBNETS,
            "vpc_security_group_ids": SECURITY_GROUPS, "volume_kms_key_id": VOLUME_KEY, "output_kms_key_id": OUTPUT_KEY,
            "enable_network_isolation": True, "encrypt_inter_container_traffic": True, "managed_spot_training": True,
            "spot_max_wait_hours": 30}


def sdk_settings(checkpoint_uri: str) -> dict[str, Any]:
    """`SETTINGS` as the V3 SDK takes them (`ModelTrainer.from_jumpstart_config` arguments, the tuner's parallelism)."""
    from sagemaker.core.shapes import StoppingCondition
    from sagemaker.core.training.configs import CheckpointConfig, Compute, Networking, OutputDataConfig

    return {
        "max_parallel_jobs": 1,
        "compute": Compute(instance_type=INSTANCE_TYPE, volume_size_in_gb=100, volume_kms_key_id=VOLUME_KEY,
                           enable_managed_spot_training=True),
        "networking": Networking(subnets=SUBNETS, security_group_ids=SECURITY_GROUPS, enable_network_isolation=True,
                                 enable_inter_container_traffic_encryption=True),
        # the V3 SDK's default run limit, as in the first comparison ("stopping condition")
        "stopping_condition": StoppingCondition(max_runtime_in_seconds=3600, max_wait_time_in_seconds=30 * 3600),
        "output_data_config": OutputDataConfig(s3_output_path=OUTPUT, kms_key_id=OUTPUT_KEY),
        "checkpoint_config": CheckpointConfig(s3_uri=checkpoint_uri),
    }


def test_with_account_settings_our_request_differs_from_the_sdks_only_where_stated(tmp_path, monkeypatch, hooked):
    """VPC, KMS keys, volume, isolation, encryption, spot and parallelism: the fields the SDK sends for them."""
    with serving(tmp_path, monkeypatch, [MODEL], run_seconds=3600) as fake:
        ours = our_request(tmp_path, hooked, **SETTINGS)
        # The checkpoint folder is ours to choose (one per tuning job, under the output path); given the same, the
        # SDK must send the same CheckpointConfig.
        checkpoint_uri = ours["TrainingJobDefinition"]["CheckpointConfig"]["S3Uri"]
        sdk = sdk_request(monkeypatch, fake.endpoint, **sdk_settings(checkpoint_uri))

    problems = problems_with(sdk, ours, {**DELIBERATE, **WITH_SETTINGS})
    assert not problems, "\n".join(problems) + "\n\nevery difference:\n" + table(differences(sdk, ours))

    definition = ours["TrainingJobDefinition"]
    assert checkpoint_uri == f"{OUTPUT}/checkpoints/{ours['HyperParameterTuningJobName']}/"
    assert definition["StoppingCondition"]["MaxWaitTimeInSeconds"] >= definition["StoppingCondition"]["MaxRuntimeInSeconds"]
    code = next(c for c in definition["InputDataConfig"] if c["ChannelName"] == "code")
    assert code["DataSource"]["S3DataSource"]["S3Uri"] == sdk["TrainingJobDefinition"]["StaticHyperParameters"][
        "sagemaker_submit_directory"]  # the very script the SDK would have the container download


def test_the_readme_states_every_deliberate_difference():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert README_SECTION in readme, f"README.md has no section {README_SECTION!r}"
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    missing = [name for name in {**DELIBERATE, **WITH_SETTINGS} if name.lower() not in section.lower()]
    assert not missing, f"README section {README_SECTION!r} does not state: {missing}"


# -- the screen's training job ----------------------------------------------------------------------------
# The same screen through the SDK's own `ModelTrainer` (the V3 way to run a script in a framework image) and
# through the project (`screen_request.build_screen_request`, sent by the hook), both against moto.
SCREEN_CANDIDATES = [{"model_id": MODEL, "static_hyperparameters": {"model_id": "tf_mobilenetv3_large_100"}}]
SCREEN_SETTINGS = {"sample_per_class": 4, "seed": 7, "score": "combined"}
SCREEN_TAGS = {"model-selection:dag-id": "sdk-reference"}
SCREEN_CHANNELS = ("training", "validation")

# Where our screen request deliberately differs from ModelTrainer's. The first four rows are one choice:
# ModelTrainer ships the source as a `code` channel plus its own launcher (`sm_drivers`) and replaces the
# image's entrypoint with that launcher; we stage one archive and name it in the hyperparameters the PyTorch
# image's training toolkit reads, as JumpStart's training jobs do (and the tuning jobs of this project).
SCREEN_DELIBERATE: dict[str, Difference] = {
    "screen job name": Difference(
        r"TrainingJobName", Match(r"ms-screen-\d{4}(-\d{2}){5}-\d{3}|ms-screen-\d{14}"),
        Match(r"ms-screen-[a-z0-9-]+-[0-9a-f]{12}-[0-9a-f]{10}"),
        "the SDK names a job after its base name and the time; ours is derived from the data set, study and "
        "screen, so a retried or re-planned screen attaches to its job instead of running it twice"),
    "toolkit source hyperparameters": Difference(
        r"HyperParameter\.sagemaker_(program|submit_directory)", ABSENT, ANY,
        "the training toolkit of the PyTorch image downloads sagemaker_submit_directory, installs its "
        "requirements.txt and runs sagemaker_program, as for JumpStart's scripts"),
    "V3 launcher entrypoint": Difference(
        r"Container(Entrypoint|Arguments)", ANY, ABSENT,
        "ModelTrainer replaces the image's entrypoint with its launcher (bash sm_train.sh); ours keeps the "
        "image's own, the training toolkit"),
    "source as a code channel": Difference(
        r"Channel\.code\..+", ANY, ABSENT,
        "ModelTrainer uploads the source folder file by file and delivers it as the code channel; ours is one "
        "reproducible archive staged under the output path, named by sagemaker_submit_directory"),
    "V3 driver channel": Difference(
        r"Channel\.sm_drivers\..+", ANY, ABSENT,
        "ModelTrainer uploads its launcher (sm_drivers) to the default bucket; the toolkit needs none"),
    "data channel content type": Difference(
        r"Channel\.(training|validation)\.ContentType", ABSENT, "application/x-image",
        "names what the channels hold (class folders of images), as the tuning jobs' channels do"),
}
# What must be the same on both sides: the same job runs on the same data, in the same place, as the same role.
SCREEN_EQUAL = (r"TrainingImage", r"TrainingInputMode", r"ResourceConfig\..+", r"RoleArn", r"OutputDataConfig\..+",
                r"Channel\.(training|validation)\.(S3Uri|S3DataType|S3DataDistributionType|InputMode)",
                r"StoppingCondition\..+", r"HyperParameter\.(sample_per_class|seed|score)", r"Tags\..+",
                r"VpcConfig\..+", r"EnableInterContainerTrafficEncryption")


def screen_study(**settings: Any) -> Any:
    from model_selection.study import Study

    parsed, problems = Study.parse({
        "backend": "sagemaker", "model_ids": [MODEL], "role_arn": ROLE, "output_path": OUTPUT, "region_name": REGION,
        "dataset": {"name": "pets", **{channel: f"{DATA}/{channel}" for channel in CHANNELS}}, **settings},
        Path(__file__).resolve().parents[1])
    assert problems == []
    return parsed


def our_screen_request(hooked: list, instance_type: str, **settings: Any) -> dict[str, Any]:
    """What the project sends for the screen: the archive staged, the request built and created by the hook."""
    from model_selection.hooks import tuning_job_hook
    from model_selection.screen_request import build_screen_request, screen_job_name
    from model_selection.screen_source import SOURCE_ARCHIVE, source_archive

    sent: list[dict[str, Any]] = []

    def record(request: Any, event_name: str, **kwargs: Any) -> None:
        if event_name.endswith(".CreateTrainingJob"):
            sent.append(json.loads(request.body))

    hooked.append(record)
    study = screen_study(**settings)
    hook = tuning_job_hook({"backend": "sagemaker", "aws_conn_id": "aws_default", "region_name": REGION})
    name = screen_job_name("pets", study.config_hash, SCREEN_CANDIDATES, **SCREEN_SETTINGS)
    source = hook.stage(name, SOURCE_ARCHIVE, source_archive(SCREEN_CANDIDATES), OUTPUT)
    hook.create_or_attach_training_job(build_screen_request(
        study, name, source_uri=source, output_path=OUTPUT, instance_type=instance_type, tags=SCREEN_TAGS,
        **SCREEN_SETTINGS))
    hooked.remove(record)
    assert len(sent) == 1, sent
    return sent[0]


def sdk_screen_request(monkeypatch: Any, endpoint: str, source_dir: Path, ours: dict[str, Any],
                       **trainer_settings: Any) -> dict[str, Any]:
    """What `ModelTrainer` sends for the same screen: our image, our source folder (the archive extracted) with
    its program and requirements, our channels' URIs, run limit and tags (`trainer_settings`: compute, ...)."""
    from sagemaker.core.shapes import StoppingCondition, Tag
    from sagemaker.core.training.configs import InputData, SourceCode
    from sagemaker.train.model_trainer import ModelTrainer

    from model_selection.screen_source import REQUIREMENTS_FILE, SCREEN_PROGRAM

    session, sent = sdk_session(monkeypatch, endpoint, "CreateTrainingJob")
    trainer = ModelTrainer(
        training_image=ours["AlgorithmSpecification"]["TrainingImage"],
        source_code=SourceCode(source_dir=str(source_dir), entry_script=SCREEN_PROGRAM, requirements=REQUIREMENTS_FILE),
        role=ROLE, sagemaker_session=session, base_job_name="ms-screen",
        stopping_condition=StoppingCondition(max_runtime_in_seconds=ours["StoppingCondition"]["MaxRuntimeInSeconds"]),
        hyperparameters=dict(SCREEN_SETTINGS), tags=[Tag(key=key, value=value) for key, value in SCREEN_TAGS.items()],
        **trainer_settings,
    )
    trainer.train(input_data_config=[
        InputData(channel_name=channel["ChannelName"], data_source=channel["DataSource"]["S3DataSource"]["S3Uri"])
        for channel in ours["InputDataConfig"]], wait=False)
    assert len(sent) == 1, sent
    return sent[0]


@pytest.mark.parametrize("account_settings", [False, True], ids=["defaults", "vpc-kms-encryption"])
def test_our_screen_request_differs_from_model_trainers_only_where_stated(tmp_path, monkeypatch, hooked,
                                                                          account_settings):
    """The screen's CreateTrainingJob beside ModelTrainer's for the same image, source, data and compute; with
    `account_settings`, the study's VPC, KMS keys, volume and encryption, given to ModelTrainer as its own settings
    (on an instance type without local storage, where SageMaker takes a volume KMS key)."""
    import tarfile

    from sagemaker.core.training.configs import Compute, Networking, OutputDataConfig

    from model_selection.screen_source import SOURCE_ARCHIVE, source_archive

    instance_type = "ml.p3.2xlarge" if account_settings else INSTANCE_TYPE
    settings = {"vpc_subnets": SUBNETS, "vpc_security_group_ids": SECURITY_GROUPS, "volume_kms_key_id": VOLUME_KEY,
                "output_kms_key_id": OUTPUT_KEY, "encrypt_inter_container_traffic": True,
                "volume_size_gb": 100} if account_settings else {}
    trainer_settings = {
        "compute": Compute(instance_type=instance_type, **({"volume_size_in_gb": 100, "volume_kms_key_id": VOLUME_KEY}
                                                           if account_settings else {})),
        "output_data_config": OutputDataConfig(s3_output_path=OUTPUT, **({"kms_key_id": OUTPUT_KEY}
                                                                          if account_settings else {})),
        **({"networking": Networking(subnets=SUBNETS, security_group_ids=SECURITY_GROUPS,
                                     enable_inter_container_traffic_encryption=True)} if account_settings else {}),
    }
    source_dir = tmp_path / "source"
    with tarfile.open(fileobj=io.BytesIO(source_archive(SCREEN_CANDIDATES)), mode="r:gz") as archive:
        archive.extractall(source_dir, filter="data")
    with serving(tmp_path, monkeypatch, [], run_training_jobs=False) as fake:
        ours = our_screen_request(hooked, instance_type, **settings)
        sdk = sdk_screen_request(monkeypatch, fake.endpoint, source_dir, ours, **trainer_settings)
        staged = ours["HyperParameters"]["sagemaker_submit_directory"]
        assert staged == f"{OUTPUT}/{ours['TrainingJobName']}/source/{SOURCE_ARCHIVE}"
        shipped = {item["Key"].rsplit("/", 1)[-1] for item in fake.client("s3").list_objects_v2(
            Bucket=f"sagemaker-{REGION}-{ACCOUNT}")["Contents"] if "/input/code/" in item["Key"]}
        assert {"screen_job.py", "requirements.txt", "candidates.json"} <= shipped  # the same source, as files

    problems = problems_with(sdk, ours, SCREEN_DELIBERATE)
    assert not problems, "\n".join(problems) + "\n\nevery difference:\n" + table(differences(sdk, ours))
    ours_flat, sdk_flat = fields(ours), fields(sdk)
    equal = {path for path in ours_flat if any(re.fullmatch(pattern, path) for pattern in SCREEN_EQUAL)}
    assert {"TrainingImage", "ResourceConfig.InstanceType", "ResourceConfig.InstanceCount", "RoleArn",
            "ResourceConfig.VolumeSizeInGB", "OutputDataConfig.S3OutputPath", "StoppingCondition.MaxRuntimeInSeconds",
            "Channel.training.S3Uri", "Channel.validation.S3Uri"} <= equal
    assert {path: ours_flat[path] for path in equal} == {path: sdk_flat.get(path, ABSENT) for path in equal}
    if account_settings:
        assert {"VpcConfig.Subnets", "ResourceConfig.VolumeKmsKeyId", "OutputDataConfig.KmsKeyId",
                "EnableInterContainerTrafficEncryption"} <= equal
