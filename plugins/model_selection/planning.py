"""The `plan` step: validate the whole run, resolve each model, skip models that have results.

Everything that can fail before a job is launched fails here, with every problem named
in one message, so a typo in the model list is not found hours into a study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_selection.naming import tuning_job_name
from model_selection.results import ResultsStore
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


def local_problems(study: Study) -> list[str]:
    """Data folders, hyperparameter names and values, and model ids, for the local backend."""
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
    from model_selection.local.hyperparameters import Hyperparameters

    default_rate = float(study.hyperparameters.get("learning_rate", Hyperparameters.learning_rate))
    return {
        "static_hyperparameters": {**study_hyperparameters(study), "model_id": model_id},
        "learning_rates": learning_rate_values(default_rate, study.learning_rate_multipliers),
        "channels": {channel: Path(location).as_uri() for channel, location in study.dataset.channels().items()},
        "role_arn": LOCAL_ROLE_ARN,
        "output_path": Path(jobs_root).as_uri(),
        "instance_type": study.instance_type,
    }


def plan(params: dict[str, Any], project_root: Path, jobs_root: str) -> dict[str, Any]:
    """The study's settings, one launch per model still to train, and the models skipped."""
    study, problems = Study.parse(params, project_root)
    specs: dict[str, dict[str, Any]] = {}
    if study.backend == "local":
        problems += local_problems(study)
    elif study.backend == "sagemaker":
        from model_selection.backends.sagemaker import sagemaker_launch_specs

        specs, sagemaker_problems = sagemaker_launch_specs(study, study_hyperparameters(study))
        problems += sagemaker_problems
    store = ResultsStore(study.results_uri, conn_id=study.aws_conn_id)
    try:
        store.check_writable()
    except Exception as error:  # noqa: BLE001 - any storage error means "cannot write results there"
        problems.append(f"results_uri {study.results_uri!r} cannot be written: {type(error).__name__}: {error}")
    if problems:
        raise StudyError("\n".join(f"- {problem}" for problem in problems))

    if study.backend == "local":
        specs = {model_id: local_launch_spec(study, model_id, jobs_root) for model_id in study.model_ids}
    launches, skipped = [], []
    for model_id in specs:
        attempts, completed = store.attempts(study.dataset.name, model_id, study.config_hash)
        if completed and not study.force:
            skipped.append(model_id)
            continue
        launches.append({
            "model_id": model_id,
            "job_name": tuning_job_name(study.dataset.name, study.config_hash, model_id, attempts),
            "attempt": attempts + 1,
            "spec": specs[model_id],
        })
    names = [launch["job_name"] for launch in launches]
    if len(set(names)) != len(names):
        raise StudyError(f"two models were given the same tuning-job name: {sorted(names)}")
    return {"study": study.settings(), "launches": launches, "skipped": skipped}
