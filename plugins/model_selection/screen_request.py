"""The screen's training job: one `CreateTrainingJob` request that scores every candidate, on either backend.

The job runs the project's screen code the way JumpStart's own scripts run: a PyTorch training image
whose default entrypoint (SageMaker's training toolkit) reads the hyperparameters `sagemaker_program`
and `sagemaker_submit_directory`, extracts the staged `sourcedir.tar.gz` into its code folder, installs
its requirements.txt and runs the program there. The job reads the data channels the tuning jobs read
and runs under the study's VPC, KMS and encryption settings, as they do.

Pure python: importable wherever the DAG is parsed. The SageMaker SDK (for the image URI) is imported
only when a SageMaker request is built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_selection.naming import slug
from model_selection.screen_source import SCREEN_PROGRAM, sample_hyperparameter
from model_selection.tuning_request import (
    LOCAL_ROLE_ARN,
    LOCAL_TRAINING_IMAGE,
    MAX_RUNTIME_SECONDS,
    build_tuning_request,
    data_prefix,
    training_settings,
)

if TYPE_CHECKING:
    from model_selection.study import Study

SCREEN_NAME_PREFIX = "ms-screen-"
MAX_TRAINING_JOB_NAME = 63
DIGEST_LENGTH = 10
# The channels the screen scores: a sample of training and of validation; never the test set.
SCREEN_CHANNELS = ("training", "validation")
DEFAULT_SCREEN_INSTANCE_TYPE = "ml.g4dn.xlarge"
# The PyTorch training image (SageMaker's deep learning container) the screen runs in.
PYTORCH_VERSION = "2.3"
PYTHON_VERSION = "py311"
# The study's training settings the screen does not take: it is one job (no parallelism), and the
# whole study waits on it, so it does not wait for spot capacity either.
NOT_FOR_THE_SCREEN = ("max_parallel_training_jobs", "spot_max_wait_seconds")


def screen_job_name(dataset_name: str, config_hash: str, candidates: Sequence[Any], sample_per_class: int | None,
                    seed: int, score: str, attempt: int = 0) -> str:
    """`ms-screen-<dataset slug>-<config hash>-<digest>`, at most 63 characters, the same for the same inputs.

    The digest covers the candidates (as given: ids or {"model_id", "static_hyperparameters"}), the
    sample, the seed and the score, so a retried or re-run plan finds its screen instead of paying twice,
    and a different screen of the same study gets a name of its own. `attempt` (from 0) moves on past
    screens of these inputs that ended without scores (Failed, Stopped).
    """
    identity = json.dumps([list(candidates), sample_per_class, seed, score] + ([attempt] if attempt else []),
                          sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:DIGEST_LENGTH]
    tail = f"-{slug(config_hash)}-{digest}"
    room = MAX_TRAINING_JOB_NAME - len(SCREEN_NAME_PREFIX) - len(tail)
    readable = slug(dataset_name)[:room].strip("-") or "data"
    return f"{SCREEN_NAME_PREFIX}{readable}{tail}"


def screen_training_image(region: str, instance_type: str) -> str:
    """The PyTorch training image for the instance type (GPU or CPU build) in the region, from the SDK's table."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("pytorch", region=region, version=PYTORCH_VERSION, py_version=PYTHON_VERSION,
                               instance_type=instance_type, image_scope="training")


def screen_channels(study: "Study") -> dict[str, str]:
    """The screen's channels, with the URIs the study's tuning jobs get: S3 prefixes ending in '/', or local
    folders as file:// URIs."""
    channels = {name: uri for name, uri in study.dataset.channels().items() if name in SCREEN_CHANNELS}
    if study.backend == "sagemaker":
        return {name: data_prefix(uri) for name, uri in channels.items()}
    return {name: Path(uri).as_uri() for name, uri in channels.items()}


def build_screen_request(
    study: "Study",
    name: str,
    *,
    source_uri: str,
    output_path: str,
    instance_type: str = DEFAULT_SCREEN_INSTANCE_TYPE,
    sample_per_class: int | None,
    seed: int,
    score: str,
    tags: Mapping[str, str] | None = None,
    role_arn: str | None = None,
    region: str | None = None,
    max_runtime_seconds: int = MAX_RUNTIME_SECONDS,
) -> dict[str, Any]:
    """The screen's CreateTrainingJob request for the study's backend.

    `source_uri`: the staged archive (`hook.stage(...)`); `output_path`: where the job's model.tar.gz
    goes (SageMaker: the study's output path; local: a file:// URI under the jobs root). On SageMaker,
    `role_arn` is the resolved execution role (default: the study's) and `region` the training region
    (default: the study's); both are required there. On the local backend the image and role are the
    local stand-ins.

    The fields a training job shares with a tuning job's training-job definition are built by
    `build_tuning_request`, so both kinds of job run with the same channels, resources and settings.
    """
    on_sagemaker = study.backend == "sagemaker"
    role = (role_arn or study.role_arn) if on_sagemaker else LOCAL_ROLE_ARN
    region = region or study.region_name
    if on_sagemaker and not (role and region):
        raise ValueError("a SageMaker screen request needs the execution role and the region "
                         f"(got role {role!r}, region {region!r})")
    settings = {key: value for key, value in training_settings(study).items() if key not in NOT_FOR_THE_SCREEN}
    hyperparameters = {
        "sagemaker_program": SCREEN_PROGRAM,
        "sagemaker_submit_directory": source_uri,
        "sample_per_class": sample_hyperparameter(sample_per_class),
        "seed": str(seed),
        "score": score,
    }
    tuning = build_tuning_request(
        name,
        static_hyperparameters=hyperparameters,
        learning_rates=(),
        channels=screen_channels(study),
        role_arn=role,
        output_path=output_path,
        metric_definitions=(),
        training_image=screen_training_image(region, instance_type) if on_sagemaker else LOCAL_TRAINING_IMAGE,
        instance_type=instance_type,
        max_runtime_seconds=max_runtime_seconds,
        tags=tags,
        **settings,
    )
    definition = dict(tuning["TrainingJobDefinition"])
    algorithm = {key: value for key, value in definition.pop("AlgorithmSpecification").items()
                 if key != "MetricDefinitions"}  # the screen reports through its output, not metrics
    return {
        "TrainingJobName": name,
        "HyperParameters": definition.pop("StaticHyperParameters"),
        "AlgorithmSpecification": algorithm,
        **definition,
        **({"Tags": tuning["Tags"]} if "Tags" in tuning else {}),
    }


def screen_problems_for_study(study: "Study", instance_type: str | None = None, region: str | None = None) -> list[str]:
    """What keeps the screen's training job from running on SageMaker for this study; none on the local backend.

    With `instance_type` (and a region, the study's by default), also that SageMaker has the screen's
    PyTorch image for it.
    """
    if study.backend != "sagemaker":
        return []
    problems = []
    if study.enable_network_isolation:
        problems.append(
            "screen cannot run with enable_network_isolation: its training job installs timm from PyPI "
            "(requirements.txt) and downloads each twin's pretrained weights from the Hugging Face hub, and an "
            "isolated container reaches neither; turn enable_network_isolation off or drop screen")
    region = region or study.region_name
    if instance_type and region:
        try:
            screen_training_image(region, instance_type)
        except ValueError as error:
            problems.append(f"screen instance type {instance_type!r}: SageMaker has no PyTorch {PYTORCH_VERSION} "
                            f"({PYTHON_VERSION}) training image for it in {region}: {error}")
    return problems
