"""Each model's lane in one DAG run, live: the per-run view of the model-selection page.

A deferred task's map-index label is not re-rendered while it waits (Airflow renders it before
`execute` and when the task ends), so a launch waiting for capacity or a job in progress shows no
progress in the grid. This view reads what Airflow does keep while a task waits (its state and
`next_kwargs`), the lane's XComs once its tasks end, and the tuning job's own description.

The functions that turn those into text are pure, so tests can feed them real values; `read_run`
reads the metadata database in the API server, and `render_run_page` escapes every value.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from model_selection.dag_tasks import LAUNCH_TASK, PLAN_TASK, SCREEN_TASK, WAIT_TASK

REPORT_TASK = "frontier_report"
MISSING = "—"
# What `TuningJobLaunchOperator._wait` defers for; its next_kwargs say how often, since when and why.
WAIT_KINDS = {"capacity": "capacity", "quota": "quota", "throttled": "throttling"}
UNKNOWN_WAIT = "capacity, quota or throttling"
# Launch states in which its tuning job may exist: only then is the job described.
DESCRIBED_LAUNCH_STATES = {"success", "running", "up_for_retry", "restarting"}
UNFINISHED_RUN_STATES = {"queued", "running"}


class Links(Protocol):
    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str: ...

    def dag_run(self, dag_id: str, run_id: str) -> str: ...

    def results_page(self, dataset: str, config_hash: str) -> str: ...


def duration(seconds: float | None) -> str:
    """`45 s`, `12 min`, `2 h 5 min`, `3 d 4 h`."""
    if seconds is None:
        return MISSING
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def epoch(value: Any) -> float | None:
    """Seconds since the epoch from a datetime (boto3, the local backend), an ISO string or a number."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    return None


def launch_text(state: str | None, next_kwargs: Mapping[str, Any] | None, launched: Mapping[str, Any] | None,
                now: float, try_number: int | None = None) -> str:
    """How the lane's launch stands, from its task instance (state, next_kwargs) and its XCom once done.

    While it is deferred, `next_kwargs` are `{"waits": n, "waiting_since": epoch seconds, "kind": ...}`:
    it has checked n times and found no room, and waits for its next check.
    """
    kwargs = next_kwargs or {}
    waits = int(kwargs.get("waits") or 0)
    since = epoch(kwargs.get("waiting_since"))
    waited = duration(now - since) if since is not None else MISSING
    kind = WAIT_KINDS.get(str(kwargs.get("kind")), UNKNOWN_WAIT)
    retry = f" (try {try_number})" if try_number and try_number > 1 else ""
    state = state or "none"
    if state == "deferred" and waits:
        return f"waiting for {kind}: {waited}, {_count(waits, 'check')}{retry}"
    if state in ("scheduled", "queued", "running") and waits:
        return f"checking again (waited {waited}, {_count(waits, 'check')}){retry}"
    if state == "success":
        launched = launched or {}
        spent = int(launched.get("launch_waits") or 0)
        after = (f" after {_count(spent, 'wait')} ({duration(launched.get('launch_wait_seconds'))})"
                 if spent else "")
        return f"launched{after}{retry}"
    if state == "running":
        return f"launching{retry}"
    if state == "failed":
        return (f"failed after waiting {waited}, {_count(waits, 'check')}{retry}" if waits
                else f"failed{retry} (its log says why)")
    if state == "upstream_failed":
        return "not run: an upstream task failed"
    if state == "up_for_retry":
        return f"up for retry{retry}"
    if state == "none":
        return "not started"
    return state.replace("_", " ") + retry


@dataclass
class JobView:
    status: str = MISSING
    elapsed: str = MISSING
    training_jobs: str = MISSING
    best: str = MISSING
    failure_reason: str = ""


def job_view(description: Mapping[str, Any] | None | Exception, now: float) -> JobView:
    """A DescribeHyperParameterTuningJob answer as text: status, time since created, counters, best so far.

    `None` is no such job yet; an exception (no access to the service from the API server,
    throttling) is shown as not readable, for this lane only.
    """
    if isinstance(description, Exception):
        reason = str(description).strip().splitlines()[0][:300] if str(description).strip() else ""
        return JobView(status=f"not readable: {type(description).__name__}{': ' + reason if reason else ''}")
    if description is None:
        return JobView(status="no job yet")
    status = str(description.get("HyperParameterTuningJobStatus") or MISSING)
    created, ended = epoch(description.get("CreationTime")), epoch(description.get("HyperParameterTuningEndTime"))
    elapsed = MISSING
    if created is not None:
        elapsed = f"ran {duration(ended - created)}" if ended is not None else f"{duration(now - created)} so far"
    counters = description.get("TrainingJobStatusCounters") or {}
    training = ", ".join(f"{value} {name}" for name, value in counters.items() if value) or "none yet"
    metric = (description.get("BestTrainingJob") or {}).get("FinalHyperParameterTuningJobObjectiveMetric")
    best = MISSING
    if metric and metric.get("Value") is not None:
        value = metric["Value"]
        best = f"{metric.get('MetricName', 'objective')} = {value:.4g}" if isinstance(value, (int, float)) else (
            f"{metric.get('MetricName', 'objective')} = {value}")
    reason = str(description.get("FailureReason") or "") if status in ("Failed", "Stopped") else ""
    return JobView(status=status, elapsed=elapsed, training_jobs=training, best=best, failure_reason=reason)


def end_text(launch_state: str | None, wait_state: str | None, waited: Mapping[str, Any] | None,
             job: JobView) -> str:
    """How the lane ended, or empty while it runs."""
    if wait_state == "success":
        return str((waited or {}).get("job_status") or job.status)
    if wait_state == "failed":
        if job.status in ("Failed", "Stopped"):
            return job.status
        known = job.status not in (MISSING, "no job yet") and not job.status.startswith("not readable")
        return f"wait failed (job {job.status})" if known else "wait failed"
    if launch_state == "failed":
        return "launch failed"
    if "upstream_failed" in (launch_state, wait_state):
        return "not launched"
    if wait_state in ("skipped", "removed"):
        return wait_state
    return ""


@dataclass
class Lane:
    model_id: str
    map_index: int
    attempt: Any
    job_name: str
    launch: str
    job: JobView
    throttled_describes: str
    ended: str
    reason: str
    launch_state: str | None = None
    wait_state: str | None = None


@dataclass
class RunState:
    """What the metadata database holds about one run of the DAG, as plain values."""

    dag_id: str
    run_id: str
    state: str | None
    # (task_id, map_index) -> {"state", "try_number", "next_kwargs", "rendered_map_index"}
    instances: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    # (task_id, map_index, key) -> value
    xcoms: dict[tuple[str, int, str], Any] = field(default_factory=dict)

    def xcom(self, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
        return self.xcoms.get((task_id, map_index, key))

    def instance(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self.instances.get((task_id, map_index), {})


def lanes(run: RunState, describe: Callable[[Mapping[str, Any]], Any], now: float) -> list[Lane]:
    """One lane per launch the screen passed on; `describe(launch)` returns the job's description or raises.

    Jobs are described in parallel (a few calls to the service at most, one per lane whose job may exist).
    """
    launches = [launch for launch in (run.xcom(SCREEN_TASK) or []) if isinstance(launch, Mapping)]

    def described(launch: Mapping[str, Any]) -> Any:
        if run.instance(LAUNCH_TASK, int(launch["map_index"])).get("state") not in DESCRIBED_LAUNCH_STATES:
            return None
        try:
            return describe(launch)
        except Exception as error:  # noqa: BLE001 - shown as "not readable" for this lane only
            return error

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(launches)))) as pool:
        descriptions = list(pool.map(described, launches))
    result = []
    for launch, description in zip(launches, descriptions):
        map_index = int(launch["map_index"])
        launch_ti, wait_ti = run.instance(LAUNCH_TASK, map_index), run.instance(WAIT_TASK, map_index)
        launch_state = launch_ti.get("state")
        job = job_view(description, now) if launch_state in DESCRIBED_LAUNCH_STATES else JobView(
            status="no job yet" if launch_state not in ("failed", "upstream_failed") else MISSING)
        waited = run.xcom(WAIT_TASK, map_index)
        throttled = (waited or {}).get("throttled_describes")
        result.append(Lane(
            model_id=str(launch.get("model_id")),
            map_index=map_index,
            attempt=launch.get("attempt", MISSING),
            job_name=str(launch.get("job_name") or MISSING),
            launch=launch_text(launch_state, launch_ti.get("next_kwargs"), run.xcom(LAUNCH_TASK, map_index), now,
                               launch_ti.get("try_number")),
            job=job,
            throttled_describes=MISSING if throttled is None else str(throttled),
            ended=end_text(launch_state, wait_ti.get("state"), waited, job),
            reason=job.failure_reason,
            launch_state=launch_state,
            wait_state=wait_ti.get("state"),
        ))
    return result


def read_run(dag_id: str, run_id: str) -> RunState | None:
    """The run's task instances and the XComs the view needs, from Airflow's metadata database.

    Runs in the API server, which has the database configured; None when there is no such run.
    """
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    task_ids = (PLAN_TASK, SCREEN_TASK, LAUNCH_TASK, WAIT_TASK, REPORT_TASK)
    with create_session(scoped=False) as session:
        dag_run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
        if dag_run is None:
            return None
        run = RunState(dag_id=dag_id, run_id=run_id, state=str(dag_run.state) if dag_run.state else None)
        for ti in session.scalars(select(TaskInstance).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id.in_(task_ids))):
            run.instances[(ti.task_id, ti.map_index)] = {
                "state": str(ti.state) if ti.state else None, "try_number": ti.try_number,
                "next_kwargs": dict(ti.next_kwargs) if ti.next_kwargs else None,
                "rendered_map_index": ti.rendered_map_index,
            }
        for xcom in session.scalars(select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id.in_(task_ids),
                XComModel.key.in_(("return_value", "study")))):
            run.xcoms[(xcom.task_id, xcom.map_index, xcom.key)] = XComModel.deserialize_value(xcom)
    return run


def describe_with_hooks(run: RunState) -> Callable[[Mapping[str, Any]], Any]:
    """`describe(launch)` through the lane's own hook parameters (one hook per backend setting)."""
    from model_selection.hooks import tuning_job_hook

    hooks: dict[str, Any] = {}

    def describe(launch: Mapping[str, Any]) -> Any:
        params = launch.get("hook_params") or run.xcom(PLAN_TASK, key="hook_params")
        if not params:
            raise ValueError("the plan gave no hook parameters")
        key = repr(sorted(dict(params).items()))
        if key not in hooks:
            hooks[key] = tuning_job_hook(params)
        return hooks[key].describe(str(launch["job_name"]))

    return describe


# -- HTML ------------------------------------------------------------------------------------------

HEADERS = ("model", "lane", "attempt", "launch", "tuning job", "job status", "elapsed", "training jobs",
           "best objective so far", "throttled describes", "ended", "reason", "task instances")
STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
tr.failed td { background: #fff0f0; }
tr.waiting td { background: #fffbe6; }
.scroll { overflow-x: auto; }
</style>"""


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _link(text: str, href: str) -> str:
    return f'<a href="{_escape(href)}" target="_top">{_escape(text)}</a>'


def _row_class(lane: Lane) -> str:
    if lane.ended and lane.ended != "Completed":
        return "failed"
    if lane.launch_state == "deferred":
        return "waiting"
    return ""


def render_lanes_table(dag_id: str, run_id: str, lanes_: Sequence[Lane], links: Links) -> str:
    rows = []
    for lane in lanes_:
        task_links = " ".join(
            _link(f"{task_id.rsplit('.', 1)[-1]}[{lane.map_index}]",
                  links.task_instance(dag_id, run_id, task_id, lane.map_index))
            for task_id in (LAUNCH_TASK, WAIT_TASK))
        cells = [lane.model_id, lane.map_index, lane.attempt, lane.launch, lane.job_name, lane.job.status,
                 lane.job.elapsed, lane.job.training_jobs, lane.job.best, lane.throttled_describes,
                 lane.ended or "running", lane.reason or MISSING]
        css = f' class="{_row_class(lane)}"' if _row_class(lane) else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{_escape(cell)}</td>" for cell in cells)
                    + f"<td>{task_links}</td></tr>")
    head = "<thead><tr>" + "".join(f"<th>{_escape(header)}</th>" for header in HEADERS) + "</tr></thead>"
    return f'<div class="scroll"><table id="lanes">{head}<tbody>{"".join(rows)}</tbody></table></div>'


def report_paragraph(run: RunState, links: Links) -> str:
    """Where this run's results are shown: the page of its data set and configuration."""
    study = run.xcom(PLAN_TASK, key="study")
    if not isinstance(study, Mapping):
        return ""
    dataset = str((study.get("dataset") or {}).get("name", ""))
    config_hash = str(study.get("config_hash", ""))
    target = _link(f"{dataset}, configuration {config_hash}", links.results_page(dataset, config_hash))
    folder = run.xcom(REPORT_TASK)
    if folder:
        return f'<p id="report">Report: {target} (also written to {_escape(folder)}).</p>'
    return f'<p id="report">Results of {target} so far; this run adds its report when it ends.</p>'


def page(title: str, body: str, refresh_seconds: int | None = None, script: str = "") -> str:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\">{refresh}<title>{_escape(title)}</title>{STYLE}"
            f"</head><body>{body}{script}</body></html>")


NOT_ENDED_STATES = (None, "scheduled", "queued", "running", "up_for_retry")


def no_lanes_reason(plan_state: str | None, screen_state: str | None) -> str:
    """Why a run shows no lanes yet: a step before them is running or failed, or nothing was left to train."""
    for step, state in (("plan", plan_state), ("screen", screen_state)):
        if state in NOT_ENDED_STATES:
            return f"The {step} has not finished yet: the lanes appear once it has."
        if state != "success":
            return f"The {step} is {state}: this run has no lanes (its log says why)."
    return "Nothing was left to train: every model has results or was screened out."


def render_run_page(run: RunState, lanes_: Sequence[Lane], links: Links, script: str = "",
                    refresh_seconds: int = 30) -> str:
    """The run's lanes, its state and report link; reloads itself while the run is unfinished."""
    unfinished = run.state in UNFINISHED_RUN_STATES
    header = (f"<h1>Model selection: run {_escape(run.run_id)}</h1>"
              f"<p>Run {_link(run.run_id, links.dag_run(run.dag_id, run.run_id))} is "
              f"<strong>{_escape(run.state or 'unknown')}</strong>"
              + (f"; this view reloads every {int(refresh_seconds)} s." if unfinished else ".") + "</p>")
    if not lanes_:
        why = no_lanes_reason(run.instance(PLAN_TASK).get("state"), run.instance(SCREEN_TASK).get("state"))
        body = f"{header}<p>{_escape(why)}</p>"
    else:
        body = (f"{header}<h2>Lanes</h2>{render_lanes_table(run.dag_id, run.run_id, lanes_, links)}"
                f"{report_paragraph(run, links)}")
    return page(f"Model selection: {run.run_id}", body, refresh_seconds if unfinished else None, script)


def other_dag_page(dag_id: str, own_dag_id: str) -> str:
    """Airflow shows a plugin's DAG and DAG-run tabs on every DAG; this one answers the others politely."""
    return page("Model selection", f"<p>This view is for {_escape(own_dag_id)}; {_escape(dag_id)} has no "
                                   "model-selection lanes.</p>")


def missing_run_page(dag_id: str, run_id: str) -> str:
    return page("Model selection", f"<p>{_escape(dag_id)} has no run {_escape(run_id)}.</p>")
