"""The bodies of the DAG's Python tasks, kept out of the DAG file so that it parses fast."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def collect_task(ti: Any, run_id: str) -> dict[str, Any]:
    """Rows for every planned model, whatever its lane did; pulled here, not passed in, so that a
    failed plan skips this task instead of failing it on a missing XCom.

    Idempotent: the rows are written as this run's batch, so a retry replaces them.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from model_selection.collection import collect_row
    from model_selection.hooks import tuning_job_hook
    from model_selection.results import ResultsStore

    launches = ti.xcom_pull(task_ids="plan")
    study = ti.xcom_pull(task_ids="plan", key="study")
    if study is None:
        raise AirflowSkipException("the plan did not succeed: there is nothing to collect")
    hook = tuning_job_hook(ti.xcom_pull(task_ids="plan", key="hook_params"))
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


def report_task(study: Mapping[str, Any]) -> dict[str, Any]:
    """Write the report of every result under this data set and configuration; returns where it is and
    what it recommends (the Asset event's extra)."""
    from model_selection.recommendation import recommend
    from model_selection.report import with_costs, write_report
    from model_selection.results import ResultsStore, safe_file_name

    store = ResultsStore(study["results_uri"], conn_id=study["aws_conn_id"])
    rows = with_costs(store.read_latest(dataset=study["dataset"]["name"], config_hash=study["config_hash"]),
                      local_usd_per_hour=study["local_usd_per_hour"])
    destination = store.root / "reports" / safe_file_name(study["dataset"]["name"]) / study["config_hash"]
    options = {"objectives": study["objectives"], "settings": dict(study), "constraints": study["constraints"],
               "title": f"Model selection: {study['dataset']['name']}"}
    if isinstance(destination, Path):
        write_report(rows, destination, **options)
    else:  # object storage: write here, then copy
        with tempfile.TemporaryDirectory() as scratch:
            written = write_report(rows, Path(scratch), **options)
            destination.mkdir(parents=True, exist_ok=True)
            for path in written.values():
                (destination / path.name).write_bytes(path.read_bytes())
    decision = recommend(rows, study["objectives"], study["constraints"])
    log.info("report of %d model(s): %s/report.html; %s", len(rows), destination, decision.summary())
    return {
        "report": str(destination), "dataset": study["dataset"]["name"], "config_hash": study["config_hash"],
        "recommended": decision.chosen["model_id"] if decision.chosen else None,
        "runners_up": [row["model_id"] for row in decision.runners_up],
        "indistinguishable_from_recommended": list(decision.indistinguishable),
        "closest": decision.closest["model_id"] if decision.closest else None,
        "summary": decision.summary(),
    }
