"""A SageMaker JumpStart model id, resolved into what a tuning job request needs.

The JumpStart catalogue (`models_manifest.json` plus one spec per model in the S3 bucket
`jumpstart-cache-prod-{region}`) says which image, training script, pretrained weights and
default hyperparameters a model id stands for. The sagemaker 3.x SDK reads and caches it; we
only call its public retrieve functions and turn its assorted KeyError / ValueError failures
into one `JumpStartError` that names the model. With `AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE`
and `AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE` set to folders, the SDK reads local copies
and `resolve` needs no network at all.

sagemaker is imported inside the functions: the import takes seconds and DAG files are parsed often.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# What the JumpStart TensorFlow image-classification container runs when the spec names no
# `sagemaker_program` container hyperparameter.
DEFAULT_ENTRY_POINT = "transfer_learning.py"


@dataclass(frozen=True)
class JumpStartModel:
    """Everything a CreateHyperParameterTuningJob request takes from the JumpStart catalogue.

    `training_script_uri` becomes the `sagemaker_submit_directory` hyperparameter,
    `entry_point` the `sagemaker_program` one, and `model_artifact_uri` an input channel named
    `model`. `default_hyperparameters` holds only the algorithm's own (tunable) ones.
    """

    model_id: str
    model_version: str
    training_image_uri: str
    training_script_uri: str
    model_artifact_uri: str
    default_hyperparameters: dict[str, str]
    entry_point: str


class JumpStartError(ValueError):
    """A model id that cannot be trained as asked: unknown, wrong instance type or wrong region."""


@functools.lru_cache(maxsize=None)
def _session(region: str) -> Any:
    """One SDK session per region, built without a network call.

    The SDK's default session is pinned to us-west-2; a regional one reads the region's bucket
    with a client of that region (other partitions need that). Reusing it keeps the SDK's
    metadata cache, which it drops whenever it is handed a different S3 client.
    """
    import boto3
    from sagemaker.core.helper.session_helper import Session

    return Session(boto_session=boto3.Session(region_name=region))


def resolve(model_id: str, instance_type: str, region: str, model_version: str = "*") -> JumpStartModel:
    """The image, script, weights and default hyperparameters of a JumpStart model for one instance type.

    Raises JumpStartError when the catalogue has no such model (or version), when the model does
    not list the instance type for training, or when it has no training image in the region.
    """
    from sagemaker.core import hyperparameters, image_uris, model_uris, script_uris
    from sagemaker.core.jumpstart.utils import verify_model_region_and_return_specs

    session = _session(region)
    try:
        specs = verify_model_region_and_return_specs(
            model_id=model_id, version=model_version, scope="training",
            region=region, sagemaker_session=session,
        )
    except KeyError as error:  # the SDK's manifest lookup: no such id (or version) in the catalogue
        raise JumpStartError(
            f"unknown JumpStart model {model_id!r} (version {model_version!r}) in {region}: {error.args[0]}"
        ) from error
    except ValueError as error:  # no JumpStart in the region, no training, deprecated or vulnerable
        raise JumpStartError(f"JumpStart model {model_id!r} cannot be trained in {region}: {error}") from error

    supported = specs.supported_training_instance_types or []
    if supported and instance_type not in supported:
        raise JumpStartError(
            f"JumpStart model {model_id!r} does not support training instance type {instance_type!r}; "
            f"it supports {', '.join(supported)}"
        )

    # Pin the version found, so every call below and the caller's records mean the same spec.
    lookup = {"model_id": model_id, "model_version": specs.version, "region": region, "sagemaker_session": session}
    try:
        image_uri = image_uris.retrieve(framework=None, image_scope="training", instance_type=instance_type, **lookup)
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
    )


def list_models(filter: str | Sequence[str], region: str) -> list[str]:  # noqa: A002 - the SDK's name
    """Model ids in the region's JumpStart catalogue that match every filter, e.g. "task == ic".

    Reads the catalogue from S3 (the SDK's local-folder override does not serve this call).
    """
    from sagemaker.core.jumpstart.filters import And
    from sagemaker.core.jumpstart.notebook_utils import list_jumpstart_models

    filters = [filter] if isinstance(filter, str) else list(filter)
    return list_jumpstart_models(filter=And(*filters), region=region, sagemaker_session=_session(region))
