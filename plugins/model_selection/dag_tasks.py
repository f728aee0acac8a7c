"""The bodies of the DAG's Python tasks, kept out of the DAG file so that it parses fast."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


PLAN_TASK = "plan"
SCREEN_TASK = "screen"  # returns the launches the lanes run: the plan's, or the screen's best
LANE = "lane"  # the mapped task group of one model's launch and wait
LAUNCH_TASK, WAIT_TASK = f"{LANE}.launch", f"{LANE}.wait"


def hook_params(study_settings: Mapping[str, Any]) -> dict[str, Any]:
    """How any task reaches the study's backend: a jobs folder, or an Airflow AWS connection."""
    if study_settings["backend"] == "local":
        from model_selection.local.jobstore import default_jobs_root

        return {"backend": "local", "jobs_root": str(default_jobs_root())}
    return {"backend": "sagemaker", "aws_conn_id": study_settings["aws_conn_id"],
            "region_name": study_settings["region_name"]}


def plan_task(params: Mapping[str, Any], project_root: Path) -> dict[str, Any]:
    """Bad input fails the task at once, without retries: retrying cannot fix a typo."""
    from airflow.sdk.exceptions import AirflowFailException

    from model_selection.local.jobstore import default_jobs_root
    from model_selection.naming import study_prefix
    from model_selection.planning import plan_study
    from model_selection.study import StudyError

    try:
        planned = plan_study(dict(params), project_root, str(default_jobs_root()))
    except StudyError as error:
        raise AirflowFailException(f"the run's inputs cannot be used:\n{error}") from error
    study = planned["study"]
    settings = hook_params(study)
    prefix = study_prefix(study["dataset"]["name"], study["config_hash"])
    for map_index, launch in enumerate(planned["launches"]):  # the map index of its lane
        launch.update(hook_params=settings, study_prefix=prefix, map_index=map_index,
                      max_concurrent_tuning_jobs=study["max_concurrent_tuning_jobs"],
                      max_capacity_wait_seconds=study["max_capacity_wait_hours"] * 3600)
    attaching = [launch["model_id"] for launch in planned["launches"] if launch["attaching"]]
    log.info("study %s on %s: %d model(s) to launch, %d already have results%s%s", study["config_hash"],
             study["dataset"]["name"], len(planned["launches"]), len(planned["skipped"]),
             f" (skipped: {', '.join(planned['skipped'])})" if planned["skipped"] else "",
             f"; attaching to the running jobs of {', '.join(attaching)}" if attaching else "")
    return {**planned, "hook_params": settings}


def screen_task(ti: Any, launches: list[dict[str, Any]], waited: Mapping[str, Any] | None,
                run_id: str) -> list[dict[str, Any]]:
    """The launches the lanes run. With a screen, the screen job scored every candidate it could; only the
    `keep_top` best are launched, and the others get `Screened out` rows with their scores. Candidates it
    could not score (no exact timm twin) are launched too, or left out when `screen.unscored` says so.

    A model whose job is already running is never screened out: its launch attaches to that job. Models
    fine-tuned already under this configuration (the plan's `finished`) are ranked too and hold their places
    among the best, without training again; only models still to train get `Screened out` rows.
    `waited` is what `screen_wait` returned (None when no screen job ran). Idempotent: a retry reads the same
    job's scores and replaces this run's rows and record.
    """
    from model_selection.screening import screen_settings

    study = ti.xcom_pull(task_ids=PLAN_TASK, key="study")
    settings = screen_settings(study.get("screen"))
    planned_job = ti.xcom_pull(task_ids=PLAN_TASK, key="screen_job") or {}
    if settings is None or not planned_job:
        log.info("no screen: all %d planned model(s) are fine-tuned", len(launches))
        return launches

    from model_selection.hooks import tuning_job_hook
    from model_selection.results import ResultsStore
    from model_selection.screening import select_top

    results: dict[str, dict[str, Any]] = {}
    document: dict[str, Any] = {}
    if waited:  # the job ran (it does unless no candidate has a twin to score it on)
        hook = tuning_job_hook(planned_job["hook_params"])
        document = hook.screen_scores(hook.describe_training_job(waited["job_name"]))
        results = document["candidates"]
        log.info("scores of %s (%s): %d candidate(s), %s images each", waited["job_name"], waited["job_status"],
                 len(results), document.get("images"))
    unscored = dict(planned_job.get("unscored") or {})
    scores = {model_id: result["scores"][settings.score] for model_id, result in results.items() if not result["error"]}
    ranked, below = select_top(scores, settings.keep_top) if scores else ([], [])
    rank = {model_id: position for position, model_id in enumerate(ranked + below, start=1)}

    def screen_fields(model_id: str) -> dict[str, Any]:
        result = results.get(model_id) or {"scores": None, "seconds": None, "note": unscored.get(model_id)}
        return {"screen_score_name": settings.score, "screen_score": scores.get(model_id), "screen_rank": rank.get(model_id),
                "screen_candidates": len(results) + len(unscored), "screen_keep_top": settings.keep_top,
                **{f"screen_{name}": value for name, value in (result["scores"] or {}).items()},
                "screen_seconds": result["seconds"], "screen_weights": result.get("weights"),
                "screen_note": unscored.get(model_id)}

    by_id = {launch["model_id"]: launch for launch in launches if not launch["attaching"]}
    failed = [model_id for model_id, result in results.items() if result["error"] and model_id in by_id]
    finished = [model_id for model_id in ranked if model_id not in by_id]  # fine-tuned already: not again
    passed_unscored = list(unscored) if settings.unscored == "fine_tune" else []
    left_out_unscored = [model_id for model_id in unscored if model_id not in passed_unscored]
    kept = ([launch for launch in launches if launch["attaching"]]
            + [by_id[model_id] for model_id in ranked + passed_unscored if model_id in by_id])
    kept = [{**launch, "map_index": index,
             "screen": screen_fields(launch["model_id"]) if launch["model_id"] in by_id else {}}
            for index, launch in enumerate(kept)]
    reasons = {model_id: f"ranked {rank[model_id]} of {len(scores)} by {settings.score} score; the screen kept the "
                         f"top {settings.keep_top}" for model_id in below if model_id in by_id}
    reasons.update({model_id: results[model_id]["error"] for model_id in failed})
    reasons.update({model_id: f"{unscored[model_id]}; screen.unscored is leave_out" for model_id in left_out_unscored})
    screened_out = [screened_out_row(study, by_id[model_id], screen_fields(model_id), run_id, reason)
                    for model_id, reason in reasons.items()]
    store = ResultsStore(study["results_uri"], conn_id=study["aws_conn_id"])
    if screened_out:
        store.append(screened_out, run_id=run_id, batch="screened")
    saved = len(reasons) * len(study["learning_rate_multipliers"])  # every trial of every model screened out
    seconds = sum(result["seconds"] or 0 for result in results.values())
    store.write_record("screen", study["dataset"]["name"], study["config_hash"], run_id, {
        "score": settings.score, "keep_top": settings.keep_top, "kept": ranked, "finished": finished,
        "screened_out": list(reasons),
        "unscored": unscored, "unscored_policy": settings.unscored, "sample_per_class": settings.sample_per_class,
        "job_name": planned_job.get("job_name"),
        "candidates": results,
        "seconds": seconds, "images": document.get("images"), "training_jobs_saved": saved,
    })
    log.info("screen by %s score: fine-tuning %s; fine-tuned already %s; screened out %s (%d training jobs saved); "
             "%.1f s", settings.score, ", ".join(launch["model_id"] for launch in kept) or "none",
             ", ".join(finished) or "none", ", ".join(reasons) or "none", saved, seconds)
    return kept


def screened_out_row(study: Mapping[str, Any], launch: Mapping[str, Any], fields: Mapping[str, Any], run_id: str,
                     reason: str) -> dict[str, Any]:
    """A model the screen did not pass on: its scores and why, so a later run that names it can train it."""
    import datetime as dt

    from model_selection.names import model_family
    from model_selection.results import SCREENED_OUT

    return {"dataset": study["dataset"]["name"], "model_id": launch["model_id"], "family": model_family(launch["model_id"]),
            "config_hash": study["config_hash"], "backend": study["backend"], "model_version": launch.get("model_version"),
            "tuning_job_name": None, "status": SCREENED_OUT, "failure_reason": reason, **fields,
            **(launch.get("twin") or {}), "dag_run_id": run_id, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat()}


def collect_task(ti: Any, run_id: str) -> dict[str, Any]:
    """Rows for every planned model, whatever its lane did; pulled here, not passed in, so that a
    failed plan skips this task instead of failing it on a missing XCom.

    Idempotent: the rows are written as this run's batch, so a retry replaces them.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from model_selection.collection import collect_row
    from model_selection.hooks import tuning_job_hook
    from model_selection.results import ResultsStore

    study = ti.xcom_pull(task_ids=PLAN_TASK, key="study")
    if study is None:
        raise AirflowSkipException("the plan did not succeed: there is nothing to collect")
    launches = ti.xcom_pull(task_ids=SCREEN_TASK)
    if launches is None:
        raise AirflowSkipException("the screen did not succeed: no model was launched")
    hook = tuning_job_hook(ti.xcom_pull(task_ids=PLAN_TASK, key="hook_params"))
    rows = [{**collect_row(hook, launch, study, run_id), **airflow_figures(ti, launch)} for launch in launches]
    for row in rows:
        log.info("%s: %s%s", row["model_id"], row["status"], f" ({row['failure_reason']})" if row["failure_reason"] else "")
    store = ResultsStore(study["results_uri"], conn_id=study["aws_conn_id"])
    written = store.append(rows, run_id=run_id, batch="collected") if rows else []
    failed = [row["model_id"] for row in rows if row["status"] != "Completed"]
    return {"collected": len(rows), "completed": len(rows) - len(failed), "failed": failed, "files": written}


def airflow_figures(ti: Any, launch: Mapping[str, Any]) -> dict[str, Any]:
    """Where the model's lane is and what its launch and wait cost, from their XComs (none if they failed)."""
    launched = ti.xcom_pull(task_ids=LAUNCH_TASK, map_indexes=launch["map_index"]) or {}
    waited = ti.xcom_pull(task_ids=WAIT_TASK, map_indexes=launch["map_index"]) or {}
    return {
        "dag_id": ti.dag_id,
        "map_index": launch["map_index"],
        "attempt": launch["attempt"],
        "launch_try_number": launched.get("launch_try_number"),
        "launch_waits": launched.get("launch_waits"),
        "launch_wait_seconds": launched.get("launch_wait_seconds"),
        "throttled_describes": waited.get("throttled_describes"),
        "wait_try_number": waited.get("wait_try_number"),
    }


def measure_speed_task(study: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Local backend: time every trained model of the study (this run's and earlier ones) in one process,
    side by side, and record the pass for the report. SageMaker jobs keep the figures their jobs reported.

    Never fails for a model it cannot time: that model keeps its job's figure, and the report says so.
    """
    if study["backend"] != "local":
        return {"measured": 0, "why": "SageMaker jobs report their own throughput (per batch, on their instance)"}
    if not study["dataset"].get("test"):
        return {"measured": 0, "why": "the data set has no test channel"}
    if not study["speed_rounds"]:
        return {"measured": 0, "why": "speed_rounds is 0: each model keeps its own job's figures"}
    from model_selection.local.hyperparameters import parse_hyperparameters
    from model_selection.local.speed import speed_pass_for_rows
    from model_selection.results import ResultsStore

    store = ResultsStore(study["results_uri"], conn_id=study["aws_conn_id"])
    dataset, config_hash = study["dataset"]["name"], study["config_hash"]
    batch_size = parse_hyperparameters(study["hyperparameters"])[0].batch_size  # the trainer's, default included
    speed = speed_pass_for_rows(store.read_latest(dataset=dataset, config_hash=config_hash), study["dataset"]["test"],
                                batch_size, jobs_root=hook_params(study)["jobs_root"], rounds=study["speed_rounds"])
    written = store.write_record("speed", dataset, config_hash, run_id, speed)
    for model_id, figures in sorted(speed["models"].items()):
        log.info("%s: %s", model_id, figures.get("error") or
                 f"{figures['throughput']:.1f} images/s at batch size {batch_size} "
                 f"({figures['throughput_low']:.1f}-{figures['throughput_high']:.1f}), "
                 f"latency at batch size 1 {figures['latency_bs1_median'] * 1000:.2f} ms (p90 "
                 f"{figures['latency_bs1_p90'] * 1000:.2f} ms), end to end {figures['end_to_end_throughput']:.1f} images/s")
    return {"measured": sum("error" not in figures for figures in speed["models"].values()),
            "not_measured": speed["not_measured"], "record": written}


def report_task(study: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Write the report of every result under this data set and configuration; returns where it is and
    what it recommends (the Asset event's extra).

    The rows and the study's records (measurement pass, screen) become the report's inputs through
    `read_report_inputs`, as on the plugin page; the study's report settings are recorded first, so the
    page decides by the same objectives and constraints.
    """
    from model_selection.recommendation import recommend
    from model_selection.report import write_report
    from model_selection.report.inputs import REPORT_RECORD, read_report_inputs, report_settings
    from model_selection.results import ResultsStore, safe_file_name

    store = ResultsStore(study["results_uri"], conn_id=study["aws_conn_id"])
    dataset, config_hash = study["dataset"]["name"], study["config_hash"]
    settings = report_settings(study)
    store.write_record(REPORT_RECORD, dataset, config_hash, run_id or _current_run_id(), settings)
    inputs = read_report_inputs(store, dataset, config_hash, settings=settings)
    rows = inputs.rows
    destination = store.root / "reports" / safe_file_name(study["dataset"]["name"]) / study["config_hash"]
    options = {**inputs.options(), "settings": dict(study), "title": f"Model selection: {study['dataset']['name']}"}
    if isinstance(destination, Path):
        write_report(rows, destination, **options)
    else:  # object storage: write here, then copy
        with tempfile.TemporaryDirectory() as scratch:
            written = write_report(rows, Path(scratch), **options)
            destination.mkdir(parents=True, exist_ok=True)
            for path in written.values():
                (destination / path.name).write_bytes(path.read_bytes())
    decision = recommend(rows, inputs.objectives, inputs.constraints)
    log.info("report of %d model(s): %s/report.html; %s", len(rows), destination, decision.summary())
    return {
        "report": str(destination), "dataset": study["dataset"]["name"], "config_hash": study["config_hash"],
        "recommended": decision.chosen["model_id"] if decision.chosen else None,
        "runners_up": [row["model_id"] for row in decision.runners_up],
        "indistinguishable_from_recommended": list(decision.indistinguishable),
        "closest": decision.closest["model_id"] if decision.closest else None,
        "summary": decision.summary(),
    }


def _current_run_id() -> str:
    """The DAG run's id inside a task; "manual" when called outside one."""
    try:
        from airflow.sdk import get_current_context

        return str(get_current_context()["run_id"])
    except (ImportError, RuntimeError, KeyError):
        return "manual"
