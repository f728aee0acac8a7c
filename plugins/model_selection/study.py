"""The validated settings of one model-selection run, and the hash that keys its results.

`Study.parse` is the only reader of the DAG's Params. It checks every field and returns
every problem at once, so the plan can add the backend's own checks and report all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BACKENDS = ("local", "sagemaker")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}$")
# A JumpStart catalogue filter in the model list: "filter: task == ic & framework == tensorflow".
FILTER_PREFIX = "filter:"
FILTER_CONDITION = re.compile(r"^[a-z_]+ (==|!=) [A-Za-z0-9._\-]+$")
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
CHANNELS = ("training", "validation", "test")


class StudyError(ValueError):
    """The run's inputs cannot be used; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    training: str
    validation: str | None = None
    test: str | None = None

    def channels(self) -> dict[str, str]:
        return {channel: getattr(self, channel) for channel in CHANNELS if getattr(self, channel)}


@dataclasses.dataclass(frozen=True)
class Study:
    backend: str
    model_ids: tuple[str, ...]
    dataset: Dataset
    hyperparameters: Mapping[str, str]
    learning_rate_multipliers: tuple[float, ...]
    epochs: int
    early_stopping_patience: int
    instance_type: str
    max_concurrent_tuning_jobs: int
    max_capacity_wait_hours: float
    results_uri: str
    force: bool
    role_arn: str | None = None
    output_path: str | None = None
    aws_conn_id: str = "aws_default"
    region_name: str | None = None
    model_filters: tuple[tuple[str, ...], ...] = ()
    # The curated list the ids came from (`model_list`), None when they were given one by one.
    model_list: str | None = None
    # How the report decides (not part of the configuration: changing them re-trains nothing).
    objectives: tuple[str, ...] = ("test_accuracy:max", "test_throughput:max")
    constraints: tuple[str, ...] = ()
    local_usd_per_hour: float | None = None
    # Fine-tune only the best-scoring candidates: {"keep_top": K, "score": ...}; None fine-tunes every model.
    screen: Mapping[str, Any] | None = None
    # Local backend: rounds of the pass that times every trained model side by side (0: each job's own figure).
    speed_rounds: int = 7
    # Local backend: JumpStart ids whose timm twin is only approximate (another resolution, pretraining data or
    # weights; include/model_maps) run too. Not part of the configuration: it decides which models run, not how.
    allow_approximate_twins: bool = False
    # Training jobs one tuning job runs at once (both backends); None: every learning rate at once.
    parallel_training_jobs: int | None = None
    # SageMaker only: where and how each training job runs in the account, never what it learns, so none of
    # them is part of config_hash. The local backend refuses them at anything but these defaults.
    volume_size_gb: int = 30
    vpc_subnets: tuple[str, ...] = ()
    vpc_security_group_ids: tuple[str, ...] = ()
    volume_kms_key_id: str | None = None
    output_kms_key_id: str | None = None
    enable_network_isolation: bool = False
    encrypt_inter_container_traffic: bool = False
    managed_spot_training: bool = False
    # Managed spot: how long a training job may take in all, waiting for spot capacity included; None: twice
    # the run limit.
    spot_max_wait_hours: float | None = None
    # Train JumpStart models whose catalogue entry is marked deprecated or vulnerable (the plan log names them).
    tolerate_deprecated_or_vulnerable_models: bool = False

    @property
    def config_hash(self) -> str:
        """What makes two results comparable: everything but the model list and run mechanics.

        Parallelism, volume, network, encryption and spot settings change where and how jobs run,
        not what they learn, so they stay out: a study keeps its hash (and its results) when they change.
        """
        relevant = {
            "backend": self.backend,
            "dataset": dataclasses.asdict(self.dataset),
            "hyperparameters": dict(sorted(self.hyperparameters.items())),
            "learning_rate_multipliers": list(self.learning_rate_multipliers),
            "epochs": self.epochs,
            "early_stopping_patience": self.early_stopping_patience,
            "instance_type": self.instance_type if self.backend == "sagemaker" else None,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]

    def settings(self) -> dict[str, Any]:
        """What the report shows of this run."""
        return {**dataclasses.asdict(self), "config_hash": self.config_hash}

    @classmethod
    def parse(cls, params: Mapping[str, Any], project_root: Path) -> tuple["Study", list[str]]:
        """The study, with safe stand-ins where a field is bad, and every problem found."""
        problems: list[str] = []
        backend = params.get("backend", "local")
        if backend not in BACKENDS:
            problems.append(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")

        model_ids, filters = _model_ids(params, project_root / "include", problems)
        if filters and backend != "sagemaker":
            problems.append("model list filters select JumpStart models: they need the sagemaker backend")
        dataset = _dataset(params.get("dataset"), project_root, backend, problems)

        hyperparameters = _string_map(params, "hyperparameters", problems)
        if backend == "local":  # settings only the local trainer understands never reach SageMaker
            hyperparameters = {**_string_map(params, "local_hyperparameters", problems), **hyperparameters}

        multipliers = params.get("learning_rate_multipliers", [1.0, 0.2])
        if not isinstance(multipliers, list) or not multipliers:
            problems.append("learning_rate_multipliers must be a non-empty list of positive numbers")
            multipliers = []
        for multiplier in multipliers:
            if not _positive_number(multiplier):
                problems.append(f"learning rate multiplier {multiplier!r} is not a positive number")

        epochs = _integer(params, "epochs", 10, 1, problems)
        # The JumpStart spec refuses 0, and the local trainer would stop after the first epoch.
        patience = _integer(params, "early_stopping_patience", 3, 1, problems)
        max_concurrent = _integer(params, "max_concurrent_tuning_jobs", 10, 1, problems)
        max_capacity_wait_hours = params.get("max_capacity_wait_hours", 24)
        if not _positive_number(max_capacity_wait_hours):
            problems.append(f"max_capacity_wait_hours must be a positive number, got {max_capacity_wait_hours!r}")
            max_capacity_wait_hours = 24
        instance_type = str(params.get("instance_type") or "ml.g4dn.xlarge")
        if not re.fullmatch(r"ml\.[a-z0-9]+\.[a-z0-9]+", instance_type):
            problems.append(f"instance_type {instance_type!r} is not a SageMaker instance type such as ml.g4dn.xlarge")

        objectives = _texts(params, "objectives", ["test_accuracy:max", "test_throughput:max"], problems)
        constraints = _texts(params, "constraints", [], problems)
        _check_report_settings(objectives, constraints, problems)
        local_usd_per_hour = params.get("local_usd_per_hour")
        if local_usd_per_hour is not None and not (_positive_number(local_usd_per_hour) or local_usd_per_hour == 0):
            problems.append(f"local_usd_per_hour must be a number of at least 0, got {local_usd_per_hour!r}")
            local_usd_per_hour = None
        speed_rounds = _integer(params, "speed_rounds", 7, 0, problems)
        allow_approximate_twins = _boolean(params, "allow_approximate_twins", problems)
        valid_multipliers = {float(m) for m in multipliers if _positive_number(m)}
        training_settings = _parse_training_settings(params, backend, len(valid_multipliers), problems)
        screen = params.get("screen") or None
        from model_selection.screening import screen_problems

        problems += screen_problems(screen, len(model_ids), backend)

        from model_selection.results import default_results_uri

        study = cls(
            backend=backend,
            model_ids=tuple(model_ids),
            dataset=dataset,
            hyperparameters=hyperparameters,
            learning_rate_multipliers=tuple(float(m) for m in multipliers if _positive_number(m)),
            epochs=epochs,
            early_stopping_patience=patience,
            instance_type=instance_type,
            max_concurrent_tuning_jobs=max_concurrent,
            max_capacity_wait_hours=float(max_capacity_wait_hours),
            results_uri=str(params.get("results_uri") or "") or default_results_uri(),
            force=bool(params.get("force", False)),
            role_arn=params.get("role_arn") or None,
            output_path=params.get("output_path") or None,
            aws_conn_id=str(params.get("aws_conn_id") or "aws_default"),
            model_filters=tuple(filters),
            model_list=str(params.get("model_list")) if params.get("model_list") else None,
            region_name=params.get("region_name") or None,
            objectives=tuple(objectives),
            constraints=tuple(constraints),
            local_usd_per_hour=None if local_usd_per_hour is None else float(local_usd_per_hour),
            screen=dict(screen) if isinstance(screen, Mapping) else None,
            speed_rounds=speed_rounds,
            allow_approximate_twins=allow_approximate_twins,
            **training_settings,
        )
        return study, problems


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _boolean(params: Mapping[str, Any], name: str, problems: list[str]) -> bool:
    value = params.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        problems.append(f"{name} must be true or false, got {value!r}")
        return False
    return value


# Settings of SageMaker training jobs that the local backend cannot honour.
SAGEMAKER_ONLY_SETTINGS = ("volume_size_gb", "vpc_subnets", "vpc_security_group_ids", "volume_kms_key_id",
                           "output_kms_key_id", "enable_network_isolation", "encrypt_inter_container_traffic",
                           "managed_spot_training", "spot_max_wait_hours", "tolerate_deprecated_or_vulnerable_models")


def _parse_training_settings(params: Mapping[str, Any], backend: str, learning_rates: int,
                             problems: list[str]) -> dict[str, Any]:
    """How each training job runs: parallelism, volume, network, encryption, spot. Valid values or the defaults.

    Limits and patterns come from SageMaker's service model where it states them, so a value the
    service would refuse at create is named here, before anything is launched.
    """
    settings: dict[str, Any] = {"volume_size_gb": _integer(params, "volume_size_gb", 30, 1, problems)}
    parallel = params.get("parallel_training_jobs")
    if parallel is not None:
        if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= max(learning_rates, 1):
            problems.append(f"parallel_training_jobs must be an integer from 1 to {learning_rates} (the number of "
                            f"learning rates each tuning job tries), got {parallel!r}")
        else:
            settings["parallel_training_jobs"] = parallel
    settings["vpc_subnets"], settings["vpc_security_group_ids"] = _vpc(params, problems)
    for name in ("volume_kms_key_id", "output_kms_key_id"):
        settings[name] = _kms_key(params, name, problems)
    for name in ("enable_network_isolation", "encrypt_inter_container_traffic", "managed_spot_training",
                 "tolerate_deprecated_or_vulnerable_models"):
        settings[name] = _boolean(params, name, problems)
    settings["spot_max_wait_hours"] = _spot_max_wait_hours(params, settings["managed_spot_training"], problems)
    if backend == "local":
        problems += _refused_on_local(settings)
    return settings


def _vpc(params: Mapping[str, Any], problems: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Subnet and security group ids: both or neither (SageMaker's VpcConfig needs both), within its counts."""
    from model_selection.backends.api import member_limit

    subnets = _texts(params, "vpc_subnets", [], problems)
    groups = _texts(params, "vpc_security_group_ids", [], problems)
    if bool(subnets) != bool(groups):
        problems.append("vpc_subnets and vpc_security_group_ids go together (SageMaker's VpcConfig needs both): "
                        f"got {len(subnets)} subnets and {len(groups)} security groups")
    for name, ids, prefix, member in (("vpc_subnets", subnets, "subnet", "Subnets"),
                                      ("vpc_security_group_ids", groups, "sg", "SecurityGroupIds")):
        limit = member_limit("VpcConfig", member)
        if len(ids) > limit:
            problems.append(f"{name}: {len(ids)} given, SageMaker takes at most {limit}")
        wrong = [item for item in ids if not re.fullmatch(rf"{prefix}-[0-9a-f]{{8,17}}", item)]
        if wrong:
            problems.append(f"{name}: {wrong} are not ids such as {prefix}-0123456789abcdef0")
    return tuple(subnets), tuple(groups)


def _kms_key(params: Mapping[str, Any], name: str, problems: list[str]) -> str | None:
    """A KMS key id, key ARN, alias or alias ARN, by the service model's KmsKeyId pattern and length."""
    from model_selection.backends.api import compiled_pattern, member_limit

    key = params.get(name) or None
    pattern = compiled_pattern(member_limit("ResourceConfig", "VolumeKmsKeyId", "pattern"))
    if key is not None and not (isinstance(key, str) and len(key) <= member_limit("ResourceConfig", "VolumeKmsKeyId")
                                and pattern.fullmatch(key)):
        problems.append(f"{name} {key!r} is not a KMS key id, key ARN, alias name or alias ARN "
                        "(letters, digits, ':', '/', '_' and '-')")
        return None
    return key


def _spot_max_wait_hours(params: Mapping[str, Any], spot: bool, problems: list[str]) -> float | None:
    """Only with managed spot, and never under the run limit (MaxWaitTimeInSeconds >= MaxRuntimeInSeconds)."""
    from model_selection.tuning_request import MAX_RUNTIME_SECONDS

    max_wait = params.get("spot_max_wait_hours")
    run_limit_hours = MAX_RUNTIME_SECONDS / 3600
    if max_wait is None:
        return None
    if not spot:
        problems.append("spot_max_wait_hours is a managed spot setting: set managed_spot_training to true or "
                        "leave spot_max_wait_hours empty")
    elif not _positive_number(max_wait) or max_wait < run_limit_hours:
        problems.append(f"spot_max_wait_hours must be a number of at least {run_limit_hours:g} (each training "
                        f"job's run limit, which SageMaker's MaxWaitTimeInSeconds may not undercut), got {max_wait!r}")
    else:
        return float(max_wait)
    return None


def _refused_on_local(settings: Mapping[str, Any]) -> list[str]:
    """One problem per SageMaker-only setting away from its default: the local backend would silently ignore it."""
    defaults = {field.name: field.default for field in dataclasses.fields(Study)}
    return [f"{name} {_as_in_form(settings[name])} is a SageMaker setting the local backend cannot honour: leave it "
            f"at {_as_in_form(defaults[name])} or choose backend 'sagemaker'"
            for name in SAGEMAKER_ONLY_SETTINGS if settings[name] != defaults[name]]


def _as_in_form(value: Any) -> str:
    """A setting as the trigger form shows it: JSON, and "empty" for null."""
    return "empty" if value is None else json.dumps(list(value) if isinstance(value, tuple) else value)


def _texts(params: Mapping[str, Any], name: str, default: list[str], problems: list[str]) -> list[str]:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(f"{name} must be a list of texts, got {value!r}")
        return default
    return [item.strip() for item in value if item.strip()]


def _check_report_settings(objectives: list[str], constraints: list[str], problems: list[str]) -> None:
    """Objectives such as `test_accuracy:max` and constraints such as `num_params<=10e6`, each named when wrong."""
    from model_selection.frontier import Objective
    from model_selection.recommendation import Constraint

    if not objectives:
        problems.append("objectives must name at least one metric, e.g. 'test_accuracy:max'")
    for text in objectives:
        try:
            Objective.parse(text)
        except ValueError as error:
            problems.append(str(error))
    for text in constraints:
        try:
            Constraint.parse(text)
        except ValueError as error:
            problems.append(str(error))


def _string_map(params: Mapping[str, Any], name: str, problems: list[str]) -> dict[str, str]:
    value = params.get(name) or {}
    if not isinstance(value, Mapping):
        problems.append(f"{name} must be an object of name: value")
        return {}
    return {str(key): str(item) for key, item in value.items()}


def _integer(params: Mapping[str, Any], name: str, default: int, low: int, problems: list[str]) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems.append(f"{name} must be an integer of at least {low}, got {value!r}")
        return default
    return value


def model_list_file(include_dir: Path, name: str) -> Path:
    """A curated list `include/model_lists/NAME.txt`; the name cannot leave that folder."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise StudyError(f"model_list {name!r} is not a list name (letters, digits, '-' and '_')")
    return include_dir / "model_lists" / f"{name}.txt"


def _model_filter(entry: str, problems: list[str]) -> tuple[str, ...]:
    conditions = tuple(part.strip() for part in entry[len(FILTER_PREFIX):].split("&"))
    for condition in conditions:
        if not FILTER_CONDITION.match(condition):
            problems.append(f"model filter condition {condition!r} is not of the form 'field == value' or 'field != value'")
    return conditions


def _model_ids(params: Mapping[str, Any], include_dir: Path, problems: list[str]) -> tuple[list[str], list[tuple[str, ...]]]:
    """Model ids, and JumpStart filters, from `model_ids` or, when one is named, a curated list file."""
    raw = params.get("model_ids") or []
    if not isinstance(raw, list):
        problems.append("model_ids must be a list of model ids")
        raw = []
    list_name = params.get("model_list") or ""
    if list_name:  # a curated list replaces model_ids
        raw = []
        try:
            path = model_list_file(include_dir, str(list_name))
            if not path.is_file():
                available = sorted(p.stem for p in (include_dir / "model_lists").glob("*.txt"))
                problems.append(f"model_list {list_name!r} does not exist; available: {available}")
            else:
                raw = [line.split("#")[0].strip() for line in path.read_text().splitlines()
                             if line.split("#")[0].strip()]
        except StudyError as error:
            problems.append(str(error))
    entries = [str(model_id).strip() for model_id in raw]
    filters = [_model_filter(entry, problems) for entry in entries if entry.startswith(FILTER_PREFIX)]
    ids = [entry for entry in entries if not entry.startswith(FILTER_PREFIX)]
    if not ids and not filters:
        problems.append("the model list is empty: give model_ids, a filter or a model_list")
    duplicates = sorted({model_id for model_id in ids if ids.count(model_id) > 1})
    if duplicates:
        problems.append(f"duplicate model ids: {duplicates}")
    for model_id in dict.fromkeys(ids):
        if not SAFE_ID.match(model_id):
            problems.append(f"model id {model_id!r} has characters other than letters, digits, '.', '_', '-' and '/'")
    return list(dict.fromkeys(ids)), filters


def _dataset(raw: Any, project_root: Path, backend: str, problems: list[str]) -> Dataset:
    if not isinstance(raw, Mapping):
        problems.append("dataset must be an object with name, training and optionally validation and test")
        return Dataset("invalid", "")
    name = str(raw.get("name") or "")
    if not DATASET_NAME.match(name):
        problems.append(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    locations: dict[str, str | None] = {}
    for channel in CHANNELS:
        location = raw.get(channel) or None
        if location is None:
            if channel == "training":
                problems.append("dataset.training is required")
            locations[channel] = None
            continue
        location = str(location)
        if backend == "local":
            if location.startswith("s3://"):
                problems.append(f"dataset.{channel} {location!r}: the local backend reads local folders, not S3")
                locations[channel] = location
                continue
            path = Path(location.removeprefix("file://"))
            location = str(path if path.is_absolute() else (project_root / path).resolve())
        elif not location.startswith("s3://"):
            problems.append(f"dataset.{channel} {location!r}: the sagemaker backend reads s3:// locations")
        locations[channel] = location
    unknown = sorted(set(raw) - {"name", *CHANNELS})
    if unknown:
        problems.append(f"dataset has unknown fields {unknown}")
    return Dataset(name or "invalid", locations["training"] or "", locations["validation"], locations["test"])
