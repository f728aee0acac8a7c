"""The `plan` step: validate the whole run, resolve each model, skip models that have results.

Everything that can fail before a job is launched fails here, with every problem named
in one message, so a typo in the model list is not found hours into a study.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from model_selection.metrics import metric_definitions
from model_selection.naming import tuning_job_name
from model_selection.results import ResultsStore, model_histories
from model_selection.study import Study, StudyError
from model_selection.tuning_request import LOCAL_ROLE_ARN, learning_rate_values

# Hyperparameters the study itself sets for every model (the notebook's fair-comparison rules).
STUDY_HYPERPARAMETERS = ("model_id", "epochs", "early_stopping", "early_stopping_patience", "early_stopping_min_delta")


def study_hyperparameters(study: Study) -> dict[str, str]:
    return {
        **study.hyperparameters,
        "epochs": str(study.epochs),
        "early_stopping": "True",
        "early_stopping_patience": str(study.early_stopping_patience),
        "early_stopping_min_delta": "0.0",
    }


# What the local backend trains with (requirements-local.txt); a SageMaker-only worker has none of it.
LOCAL_TRAINING_STACK = ("torch", "torchvision", "timm")


def missing_local_stack() -> list[str]:
    import importlib.util

    missing = []
    for name in LOCAL_TRAINING_STACK:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # a module set to None in sys.modules: deliberately absent
            found = False
        if not found:
            missing.append(name)
    return missing


def local_problems(study: Study) -> list[str]:
    """Data folders, hyperparameter names and values, and model ids, for the local backend."""
    missing = missing_local_stack()
    if missing:
        return [f"backend 'local' trains on this worker, which lacks {', '.join(missing)} (requirements-local.txt): "
                "install them here, or choose backend 'sagemaker'"]
    from model_selection.local.data import DataError, class_folders
    from model_selection.local.hyperparameters import HyperparameterError, parse_hyperparameters
    from model_selection.local.model import ModelError, check_model_id

    problems = []
    for channel, location in study.dataset.channels().items():
        if location.startswith("s3://"):
            continue  # already reported by the study
        try:
            classes = class_folders(channel, Path(location))
            if channel == "training" and len(classes) < 2:
                problems.append(f"dataset {study.dataset.name!r}: the training channel has {len(classes)} class; "
                                "at least two are needed")
        except DataError as error:
            problems.append(f"dataset {study.dataset.name!r}: {error}")
    overridden = sorted(set(study.hyperparameters) & set(STUDY_HYPERPARAMETERS))
    if overridden:
        problems.append(f"hyperparameters {overridden} are set by the study (use its own fields); remove them")
    try:
        parse_hyperparameters(study_hyperparameters(study))
    except HyperparameterError as error:
        problems.append(str(error))
    for model_id in study.model_ids:
        try:
            check_model_id(model_id)
        except ModelError as error:
            problems.append(str(error))
    return problems


def local_launch_spec(study: Study, model_id: str, jobs_root: str) -> dict[str, Any]:
    """The `build_tuning_request` arguments of one model on the local backend."""
    from model_selection.local.data import class_folders
    from model_selection.local.hyperparameters import Hyperparameters, parse_hyperparameters

    hyperparameters = study_hyperparameters(study)
    default_rate = float(study.hyperparameters.get("learning_rate", Hyperparameters.learning_rate))
    classes = class_folders("training", Path(study.dataset.training))
    return {
        "static_hyperparameters": {**hyperparameters, "model_id": model_id},
        "learning_rates": learning_rate_values(default_rate, study.learning_rate_multipliers),
        "channels": {channel: Path(location).as_uri() for channel, location in study.dataset.channels().items()},
        "metric_definitions": metric_definitions(len(classes), parse_hyperparameters(hyperparameters)[0].binary_mode),
        "role_arn": LOCAL_ROLE_ARN,
        "output_path": Path(jobs_root).as_uri(),
        "instance_type": study.instance_type,
    }


def plan_study(params: dict[str, Any], project_root: Path, jobs_root: str) -> dict[str, Any]:
    """The study's settings, one launch per model still to train, and the models skipped.

    The results store is read once for the whole plan. A model whose latest job is still
    running keeps that job's name, so its launch attaches to it; only ended attempts
    (Failed, Stopped, NotLaunched) move a model on to a new job name.
    """
    study, problems = Study.parse(params, project_root)
    specs: dict[str, dict[str, Any]] = {}
    timm_names: dict[str, str] = {}  # JumpStart TF ic id -> the timm model the local trainer loads
    if study.backend == "local":
        from model_selection.local.jumpstart_map import is_jumpstart_id, translate_jumpstart_ids

        timm_names, map_problems = translate_jumpstart_ids(study.model_ids, project_root)
        problems += map_problems
        trained = tuple(timm_names.get(m, m) for m in study.model_ids if m in timm_names or not is_jumpstart_id(m))
        problems += local_problems(dataclasses.replace(study, model_ids=trained))
    elif study.backend == "sagemaker":
        from model_selection.backends.sagemaker import sagemaker_launch_specs

        specs, sagemaker_problems = sagemaker_launch_specs(study, study_hyperparameters(study))
        problems += sagemaker_problems
    store = ResultsStore(study.results_uri, conn_id=study.aws_conn_id)
    try:
        store.check_writable()
        rows = store.read_all()
    except Exception as error:  # noqa: BLE001 - any storage error means "cannot use results there"
        problems.append(f"results_uri {study.results_uri!r} cannot be used: {type(error).__name__}: {error}")
    if problems:
        raise StudyError("\n".join(f"- {problem}" for problem in problems))

    if study.backend == "local":
        specs = {model_id: local_launch_spec(study, model_id, jobs_root) for model_id in study.model_ids}
        for model_id, timm_name in timm_names.items():  # launches keep the JumpStart id; the trainer gets timm's
            specs[model_id]["static_hyperparameters"]["model_id"] = timm_name
    launches, skipped = [], []
    for model_id, spec in specs.items():
        version = spec.get("jumpstart_model_version")
        history = model_histories(rows, study.dataset.name, study.config_hash, version).get(model_id)
        if history and history.completed and not study.force:
            skipped.append(model_id)
            continue
        previous = history.ended_attempts if history else 0
        launches.append({
            "model_id": model_id,
            "model_version": version,
            "job_name": tuning_job_name(study.dataset.name, study.config_hash, model_id, previous, version),
            "attempt": previous + 1,
            "attaching": bool(history and history.running_job),
            "spec": {key: value for key, value in spec.items() if key != "jumpstart_model_version"},
        })
    names = [launch["job_name"] for launch in launches]
    if len(set(names)) != len(names):
        raise StudyError(f"two models were given the same tuning-job name: {sorted(names)}")
    return {"study": {**study.settings(), "test_examples": test_examples(study)}, "launches": launches,
            "skipped": skipped}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def test_examples(study: Study) -> int | None:
    """Images in the test channel: the size behind each test accuracy's confidence interval."""
    location = study.dataset.test
    if not location:
        return None
    if study.backend == "sagemaker":
        from model_selection.backends.sagemaker import count_images

        return count_images(location, study.aws_conn_id, study.region_name, IMAGE_SUFFIXES)
    return sum(1 for path in Path(location).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
