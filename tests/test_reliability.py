"""Faults injected into whole studies on the SageMaker backend (moto's endpoint), with the figures.

Each scenario launches every model through the launch operator (re-running it when it
defers, as Airflow would), waits with the sensor's trigger, collects the rows into a
results store, and records: models, faults injected, models completed, duplicate
launches, results lost. `make reliability` prints the table (pytest's terminal summary).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from airflow.sdk.exceptions import TaskDeferred
from botocore.awsrequest import AWSResponse
from fake_sagemaker import ROLE, Throttle, _Raw, serving

from model_selection.backends import get_client
from model_selection.collection import collect_row
from model_selection.dag_tasks import plan_task
from model_selection.operators import TuningJobLaunchOperator
from model_selection.results import ResultsStore
from model_selection.triggers import TuningJobTrigger

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CURATED = [line.strip() for line in (PROJECT_ROOT / "include" / "model_lists" / "jumpstart-caltech256-frontier.txt")
           .read_text().splitlines() if line.strip() and not line.startswith("#")]
CONTEXT = {"dag": SimpleNamespace(dag_id="reliability"), "run_id": "manual__reliability"}
FIGURES: list[dict] = []


def record(fault: str, **figures) -> None:
    FIGURES.append({"fault": fault, **figures})


def run_study(tmp_path: Path, models: list[str], max_concurrent: int = 100) -> dict:
    """Plan, launch (re-running deferred launches), wait for all at once, collect into a store."""
    params = {"backend": "sagemaker", "model_ids": models, "role_arn": ROLE, "output_path": "s3://study-data/output",
              "dataset": {"name": "pets", "training": "s3://study-data/pets/training"},
              "max_concurrent_tuning_jobs": max_concurrent, "results_uri": str(tmp_path / "results")}
    planned = plan_task(params, tmp_path)
    jobs, deferrals = [], 0
    for launch in planned["launches"]:
        kwargs: dict = {}
        while True:
            try:
                jobs.append(TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT, **kwargs))
                break
            except TaskDeferred as deferred:  # Airflow would resume it after the trigger fires
                deferrals += 1
                kwargs = deferred.kwargs
                time.sleep(0.2)

    async def wait_all():
        async def first(job):
            async for event in TuningJobTrigger(job["job_name"], job["client"], 0.2, time.time() + 300).run():
                return event.payload

        return await asyncio.gather(*(first(job) for job in jobs))

    events = asyncio.run(wait_all())
    client = get_client(**planned["client"])
    rows = [collect_row(client, launch, planned["study"], "manual__reliability") for launch in planned["launches"]]
    store = ResultsStore(str(tmp_path / "results"))
    store.append(rows, run_id="manual__reliability")
    return {"planned": planned, "events": events, "rows": store.read_latest(dataset="pets"), "deferrals": deferrals}


def duplicates(fake, models: list[str]) -> int:
    """Tuning jobs created beyond one per model (moto keeps every job it created)."""
    return len(fake.backend.hyper_parameter_tuning_jobs) - len(models)


def test_throttling_of_create_and_describe_across_21_models(tmp_path, monkeypatch, hooked):
    with serving(tmp_path, monkeypatch, CURATED, run_seconds=0.5) as fake:
        throttle = Throttle(("CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob"))
        hooked.append(throttle)
        study = run_study(tmp_path, CURATED)
        completed = sum(event["status"] == "success" for event in study["events"])
        record("throttling (every other create and describe)", models=len(CURATED),
               faults=sum(throttle.throttled.values()), completed=completed,
               duplicates=duplicates(fake, CURATED), lost=len(CURATED) - len(study["rows"]))
        assert completed == len(CURATED) and duplicates(fake, CURATED) == 0 and len(study["rows"]) == len(CURATED)
        assert throttle.throttled["CreateHyperParameterTuningJob"] >= 10


def test_resource_limit_exceeded_beyond_three_jobs_in_flight(tmp_path, monkeypatch, hooked):
    models = CURATED[:8]
    with serving(tmp_path, monkeypatch, models, run_seconds=3.0) as fake:
        refused = []

        def quota(request, event_name: str, **kwargs):
            if event_name.endswith("CreateHyperParameterTuningJob") and fake.in_flight() >= 3:
                refused.append(1)
                body = json.dumps({"__type": "ResourceLimitExceeded", "message": "limit of 3 tuning jobs"}).encode()
                return AWSResponse(request.url, 400, {}, _Raw(body))
            return None

        hooked.append(quota)
        peak, done = [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], fake.in_flight())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            study = run_study(tmp_path, models)
        finally:
            done.set()
            watcher.join()
        completed = sum(event["status"] == "success" for event in study["events"])
        record("quota (ResourceLimitExceeded above 3 in flight)", models=len(models), faults=len(refused),
               completed=completed, duplicates=duplicates(fake, models), lost=len(models) - len(study["rows"]))
        assert completed == len(models) and duplicates(fake, models) == 0 and len(refused) >= 2
        assert peak[0] <= 3


def test_a_failing_and_a_stopped_model_do_not_stop_the_others(tmp_path, monkeypatch):
    models = CURATED[:6]
    with serving(tmp_path, monkeypatch, models, run_seconds=0.5, failing=(models[1],),
                 stopped_in_console=(models[2],)) as fake:
        study = run_study(tmp_path, models)
        statuses = {row["model_id"]: row["status"] for row in study["rows"]}
        record("a model that fails, a model stopped in the console", models=len(models), faults=2,
               completed=sum(status == "Completed" for status in statuses.values()),
               duplicates=duplicates(fake, models), lost=len(models) - len(study["rows"]))
        assert statuses.pop(models[1]) == "Failed" and statuses.pop(models[2]) == "Stopped"
        assert set(statuses.values()) == {"Completed"}


def _write_rows(uri: str, writer: int) -> None:
    store = ResultsStore(uri)
    for batch in range(20):
        store.append([{"dataset": "d", "model_id": f"w{writer}-{batch}-{k}", "config_hash": "c", "status": "Completed",
                       "finished_at": str(batch)} for k in range(5)], run_id=f"writer-{writer}")


def test_results_store_under_concurrent_writers_and_a_killed_write(tmp_path):
    import multiprocessing

    uri = str(tmp_path / "store")
    writers = [multiprocessing.Process(target=_write_rows, args=(uri, writer)) for writer in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    killed = tmp_path / "store" / "rows" / "d" / ".writer-9-killed.jsonl.tmp"
    killed.write_text('{"dataset": "d", "model_id": "torn')
    rows = ResultsStore(uri).read_latest(dataset="d")
    record("results store: 4 concurrent writers, 1 write killed midway", models=400, faults=1, completed=len(rows),
           duplicates=0, lost=400 - len(rows))
    assert len(rows) == 400
