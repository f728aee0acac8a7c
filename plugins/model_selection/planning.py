"""The `plan` step: validate the whole run, resolve each model, skip models that have results.

Everything that can fail before a job is launched fails here, with every problem named
in one message, so a typo in the model list is not found hours into a study.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_selection.metrics import metric_definitions
from model_selection.naming import tuning_job_name
from model_selection.results import ResultsStore, model_histories
from model_selection.study import Study, StudyError
from model_selection.tuning_request import LOCAL_ROLE_ARN, learning_rate_values, training_settings

if TYPE_CHECKING:
    from model_selection.local.jumpstart_map import Translation

log = logging.getLogger(__name__)

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
    from model_selection.local.train import refuse_top_layer_on_random_weights

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
        hyperparameters, _ = parse_hyperparameters(study_hyperparameters(study))
        if hyperparameters.pretrained == "false":  # the trainer would refuse each job as bad input
            refuse_top_layer_on_random_weights(hyperparameters, pretrained=False)
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
        **training_settings(study),
    }


def plan_study(params: dict[str, Any], project_root: Path, jobs_root: str) -> dict[str, Any]:
    """The study's settings, one launch per model still to train, and the models skipped.

    The results store is read once for the whole plan. A model whose latest job is still
    running keeps that job's name, so its launch attaches to it; only ended attempts
    (Failed, Stopped, NotLaunched) move a model on to a new job name.
    """
    study, problems = Study.parse(params, project_root)
    specs: dict[str, dict[str, Any]] = {}
    translation: Translation | None = None  # the local backend's JumpStart ids -> timm models
    left_out: dict[str, str] = {}  # model -> why a named list runs without it here
    if study.backend == "local":
        from model_selection.local.jumpstart_map import translate_jumpstart_ids

        translation = translate_jumpstart_ids(study.model_ids, project_root, study.allow_approximate_twins)
        if study.model_list:
            study, left_out, list_problems = runnable_part_of_list(study, translation)
            problems += list_problems
        else:
            problems += translation.problems()
        log_approximations(study, translation)
        trained = tuple(translation.timm_names.get(m, m) for m in study.model_ids if m not in translation.not_run())
        problems += local_problems(dataclasses.replace(study, model_ids=trained))
    elif study.backend == "sagemaker":
        from model_selection.backends.sagemaker import sagemaker_launch_specs

        specs, sagemaker_problems = sagemaker_launch_specs(study, study_hyperparameters(study))
        problems += sagemaker_problems
        if specs:  # the connection works and models resolved: what only the account can tell, before anything is paid
            from model_selection.backends.preflight import preflight_problems

            problems += preflight_problems(study, specs)
        if study.screen and specs:
            from model_selection.screen_request import screen_problems_for_study
            from model_selection.screening import screen_settings

            problems += screen_problems_for_study(study, screen_settings(study.screen).instance_type,
                                                  training_region(study))
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
        give_trainers_timm_names(specs, translation, image_size_is_auto(study))
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
            # a JumpStart id on the local backend: the timm twin that trains it and how close it is (its row says so)
            **({"twin": translation.twin(model_id)} if translation and translation.twin(model_id) else {}),
        })
    names = [launch["job_name"] for launch in launches]
    if len(set(names)) != len(names):
        raise StudyError(f"two models were given the same tuning-job name: {sorted(names)}")
    return {"study": {**study.settings(), "test_examples": test_examples(study)}, "launches": launches,
            "skipped": skipped, "left_out": left_out,
            "screen_job": plan_screen_job(study, launches, finished_entries(skipped, specs), specs, rows,
                                          project_root, jobs_root)}


def finished_entries(skipped: list[str], specs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The models already fine-tuned under this configuration, shaped as launches for the screen to rank beside
    the others (they are never launched again)."""
    return [{"model_id": model_id, "spec": specs[model_id], "attaching": False} for model_id in skipped]


def training_region(study: Study) -> str | None:
    """The region SageMaker jobs run in: the study's, else its AWS connection's."""
    from model_selection.backends.jumpstart import aws_connection

    return study.region_name or aws_connection(study.aws_conn_id).region_name


def plan_screen_job(study: Study, launches: list[dict[str, Any]], finished: list[dict[str, Any]],
                    specs: dict[str, dict[str, Any]], rows: list[dict[str, Any]], project_root: Path,
                    jobs_root: str) -> dict[str, Any]:
    """The screen's one training job, as the plan's XCom `screen_job` carries it to `screen_launch`; {} for none.

    The screen ranks the study's whole list: the models still to train and those `finished` under this
    configuration, which hold their places among the best `keep_top` without training again. So the same conf
    run again screens the same candidates (and attaches to the same job) and trains nothing it screened out,
    and a larger `keep_top` later reuses the scores to train the next best.

    The plan names the job (from the study, the candidates and the sample) and stages its source archive
    (the screen code and the candidates): a retried plan or a re-run finds the same job and attaches,
    and a screen of these inputs that ended without scores moves on to a new attempt's name. A job that
    exists keeps the source it was launched with; nothing is staged over it.
    """
    from model_selection.screen_plan import saving_estimate, scorable_candidates, screen_log_line
    from model_selection.screening import screen_settings, training_jobs_saved

    screen = screen_settings(study.screen)
    pending = {launch["model_id"] for launch in launches if not launch["attaching"]}
    if screen is None or not pending:
        return {}
    order = list(specs)  # the study's order, so a re-run names the same candidates in the same order
    pool = sorted([launch for launch in launches if launch["model_id"] in pending] + finished,
                  key=lambda entry: order.index(entry["model_id"]))
    candidates, unscored = scorable_candidates(study.backend, pool, project_root)
    unscored = {model_id: reason for model_id, reason in unscored.items() if model_id in pending}
    finished_ids = [candidate["model_id"] for candidate in candidates if candidate["model_id"] not in pending]
    trials = len(study.learning_rate_multipliers)
    log.info(screen_log_line(screen, len(candidates), unscored, trials, study.backend, finished=len(finished_ids)))
    if study.backend == "sagemaker":
        log.info(saving_estimate(rows, study.dataset.name, study.config_hash, study.instance_type, screen.instance_type,
                                 training_jobs_saved(len(candidates) - len(finished_ids), screen.keep_top, trials)))
    if len(candidates) == len(finished_ids):  # nothing still to train can be scored
        return {"unscored": unscored} if unscored else {}
    from model_selection.dag_tasks import hook_params
    from model_selection.hooks import tuning_job_hook
    from model_selection.screen_request import build_screen_request, screen_job_name
    from model_selection.screen_source import SOURCE_ARCHIVE, source_archive

    settings = hook_params(study.settings())
    hook = tuning_job_hook(settings)
    attempt = 0
    while True:
        name = screen_job_name(study.dataset.name, study.config_hash, candidates, screen.sample_per_class, screen.seed,
                               screen.score, attempt)
        existing = hook.describe_training_job(name)
        if existing is None or existing["TrainingJobStatus"] not in ("Failed", "Stopped"):
            break
        attempt += 1
    if study.backend == "local":
        output_path, role_arn, region = (Path(jobs_root) / "screen-jobs").as_uri(), None, None
    else:
        any_spec = next(iter(specs.values()))
        output_path, role_arn, region = any_spec["output_path"], any_spec["role_arn"], training_region(study)
    source_uri = (existing["HyperParameters"]["sagemaker_submit_directory"] if existing
                  else hook.stage(name, SOURCE_ARCHIVE, source_archive(candidates), output_path))
    request = build_screen_request(study, name, source_uri=source_uri, output_path=output_path,
                                   instance_type=screen.instance_type, sample_per_class=screen.sample_per_class,
                                   seed=screen.seed, score=screen.score, role_arn=role_arn, region=region)
    return {"job_name": name, "model_id": f"screen of {len(candidates)} candidate(s)", "hook_params": settings,
            "request": request, "candidates": [candidate["model_id"] for candidate in candidates],
            "finished": finished_ids, "unscored": unscored, "attempt": attempt + 1,
            "max_capacity_wait_seconds": study.max_capacity_wait_hours * 3600}


def runnable_part_of_list(study: Study, translation: Translation) -> tuple[Study, dict[str, str], list[str]]:
    """A named list on the local backend runs its mapped models and leaves the others out, each logged with why:
    no timm equivalent, or only an approximate twin while `allow_approximate_twins` is off.

    Ids given one by one stay strict (each such id is a problem); a curated list such as
    jumpstart-caltech256-frontier is meant for both backends, so it runs what has an equivalent here.
    """
    reasons = translation.left_out()
    left_out = {model_id: reasons[model_id] for model_id in study.model_ids if model_id in reasons}
    kept = tuple(model_id for model_id in study.model_ids if model_id not in left_out)
    for model_id, reason in left_out.items():
        if model_id in translation.withheld:
            log.warning("model_list %s on the local backend leaves out %s for being approximate: %s",
                        study.model_list, model_id, reason)
        else:
            log.warning("model_list %s on the local backend leaves out %s: no timm equivalent (%s)",
                        study.model_list, model_id, reason)
    withheld = [model_id for model_id in left_out if model_id in translation.withheld]

    def named(ids: list[str]) -> str:
        return f"{len(ids)} ({', '.join(ids)})" if ids else "none"

    log.info("model_list %s on the local backend: %d of its %d models run; as approximate twins: %s; left out without "
             "a timm equivalent: %s; left out for being approximate: %s", study.model_list, len(kept),
             len(study.model_ids), named([model_id for model_id in kept if model_id in translation.approximations]),
             named([model_id for model_id in left_out if model_id not in translation.withheld]), named(withheld))
    problems = []
    if not kept:
        problems.append(f"model_list {study.model_list!r}: none of its {len(left_out)} models has a timm equivalent "
                        f"for the local backend: {', '.join(left_out)}"
                        + (f"; {', '.join(withheld)} only approximately: set allow_approximate_twins to true to run "
                           "them" if withheld else ""))
    return dataclasses.replace(study, model_ids=kept), left_out, problems


def log_approximations(study: Study, translation: Translation) -> None:
    """The plan log names every JumpStart id that runs as an approximate timm twin, with its kind."""
    for model_id, kind in translation.approximations.items():
        if model_id in study.model_ids:
            log.warning("%s on the local backend runs %s as an approximate twin: %s (%s)",
                        f"model_list {study.model_list}" if study.model_list else "model_ids", model_id,
                        translation.timm_names[model_id], kind)


def image_size_is_auto(study: Study) -> bool:
    from model_selection.local.hyperparameters import AUTO, parse_hyperparameters

    return parse_hyperparameters(study_hyperparameters(study))[0].image_size == AUTO


def give_trainers_timm_names(specs: dict[str, dict[str, Any]], translation: Translation, image_size_auto: bool) -> None:
    """Launches keep the JumpStart id; its trainer gets the timm name and, when image_size is auto,
    the JumpStart model's own input size for its pretrained weights (include/model_maps)."""
    for model_id, timm_name in translation.timm_names.items():
        static = specs[model_id]["static_hyperparameters"]
        static["model_id"] = timm_name
        if image_size_auto:
            static["pretrained_image_size"] = str(translation.input_sizes[model_id])


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
