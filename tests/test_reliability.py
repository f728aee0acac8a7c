"""Faults injected into whole studies, with the figures.

On the SageMaker backend (moto's endpoint), each scenario launches every model through
the launch operator (re-running it when it defers, as Airflow would), waits with the
sensor's trigger and collects the rows into a results store; one scenario runs the DAG
itself with real `airflow dags test` against that endpoint. The results store is written
by real processes, one of them SIGKILLed mid-write. On the local backend, real
`airflow dags test` runs are killed and re-run, with credentials in their environment
that must show up nowhere, and a deferred wait is cancelled as the triggerer does on a
user's action. Each records: models, faults injected, models completed, duplicate
launches, results lost. `make reliability` prints the table (pytest's terminal
summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sqlite3
import string
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import psutil
import pytest
from airflow.jobs.triggerer_job_runner import _ON_CANCEL_TIMEOUT, _USER_ACTION_CANCEL_MSG
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from airflow_env import DAG_ID, airflow_environment, dags_test, dags_test_process, migrate, run_succeeded
from botocore.awsrequest import AWSResponse
from conftest import write_image_folders
from fake_sagemaker import ROLE, _Raw, serving
from test_dag import TINY

from model_selection.backends.local import LocalSageMakerClient
from model_selection.collection import collect_row
from model_selection.dag_tasks import collect_task, plan_task
from model_selection.hooks import tuning_job_hook
from model_selection.local.jobstore import JobStore, read_json
from model_selection.operators import TuningJobLaunchOperator
from model_selection.results import ResultsStore
from model_selection.sensors import TuningJobSensor
from model_selection.triggers import TuningJobTrigger
from model_selection.tuning_request import build_tuning_request

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CURATED = [line.strip() for line in (PROJECT_ROOT / "include" / "model_lists" / "jumpstart-caltech256-frontier.txt")
           .read_text().splitlines() if line.strip() and not line.startswith("#")]
CONTEXT = {"dag": SimpleNamespace(dag_id="reliability"), "run_id": "manual__reliability"}
FIGURES: list[dict] = []
T = TypeVar("T")


def record(fault: str, **figures) -> None:
    FIGURES.append({"fault": fault, **figures})


def study_params(tmp_path: Path, models: list[str], max_concurrent: int = 100) -> dict:
    return {"backend": "sagemaker", "model_ids": models, "role_arn": ROLE, "output_path": "s3://study-data/output",
            "dataset": {"name": "pets", "training": "s3://study-data/pets/training"},
            "max_concurrent_tuning_jobs": max_concurrent, "results_uri": str(tmp_path / "results")}


def launch_all(planned: dict) -> tuple[list[dict], Counter]:
    """Each launch through the operator, re-run after each deferral as Airflow would (sooner: 0.2 s);
    returns what each launch returned and the deferrals per model."""
    jobs, deferrals = [], Counter()
    for launch in planned["launches"]:
        kwargs: dict = {}
        while True:
            try:
                jobs.append(TuningJobLaunchOperator(task_id="launch", launch=launch).execute(dict(CONTEXT), **kwargs))
                break
            except TaskDeferred as deferred:  # Airflow would resume it after the trigger fires
                deferrals[launch["model_id"]] += 1
                kwargs = deferred.kwargs
                time.sleep(0.2)
    return jobs, deferrals


def wait_all(jobs: list[dict]) -> list[dict]:
    """Every job's trigger at once, in one event loop as in the triggerer; the first event of each."""
    async def wait():
        async def first(job):
            async for event in TuningJobTrigger(job["job_name"], job["hook_params"], 0.2, time.time() + 300).run():
                return event.payload

        return await asyncio.gather(*(first(job) for job in jobs))

    return asyncio.run(wait())


def collect(tmp_path: Path, planned: dict, run_id: str = CONTEXT["run_id"]) -> dict[str, dict]:
    """One row per planned model, written to the store as the run's collection; the rows by model."""
    hook = tuning_job_hook(planned["hook_params"])
    rows = [collect_row(hook, launch, planned["study"], run_id) for launch in planned["launches"]]
    ResultsStore(str(tmp_path / "results")).append(rows, run_id=run_id, batch="collected")
    return {row["model_id"]: row for row in rows}


def run_study(tmp_path: Path, models: list[str], max_concurrent: int = 100) -> dict:
    """Plan, launch (re-running deferred launches), wait for all at once, collect into a store."""
    planned = plan_task(study_params(tmp_path, models, max_concurrent), tmp_path)
    jobs, deferrals = launch_all(planned)
    events = wait_all(jobs)
    collect(tmp_path, planned)
    rows = ResultsStore(str(tmp_path / "results")).read_latest(dataset="pets")
    return {"planned": planned, "events": events, "rows": rows,
            "deferrals": sum(deferrals.values()), "deferred": deferrals}


@contextlib.contextmanager
def peak_in_flight(fake, every: float = 0.02):
    """The most tuning jobs InProgress in moto at once while the block runs (a one-item list)."""
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], fake.in_flight())
            time.sleep(every)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield peak
    finally:
        done.set()
        watcher.join()


def duplicates(fake, models: list[str]) -> int:
    """Tuning jobs created beyond one per model (moto keeps every job it created)."""
    return len(fake.backend.hyper_parameter_tuning_jobs) - len(models)


THROTTLED_OPERATIONS = ("CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob",
                        "ListHyperParameterTuningJobs", "DescribeTrainingJob")


def test_throttling_of_every_other_sagemaker_call_in_real_airflow(tmp_path, monkeypatch,
                                                                                   migrated_database):
    """Real `airflow dags test` of 8 curated models against moto, whose server answers
    ThrottlingException to every other create, describe and list call (the service's wire answer, so
    it reaches the tasks' own clients): every lane completes, no job is launched twice, no row is lost."""
    models = CURATED[:8]  # 21 take about 5 minutes here: every task is its own process with its own client
    with serving(tmp_path, monkeypatch, models, run_seconds=0.5, server_throttle=THROTTLED_OPERATIONS) as fake:
        environment = airflow_environment(airflow_home(tmp_path / "home", migrated_database), tmp_path / "jobs",
                                          tmp_path / "results")
        started = time.monotonic()
        run = dags_test(environment, study_params(tmp_path, models), timeout=600)
        states = task_states(tmp_path / "home" / "airflow.db")
        rows = ResultsStore(str(tmp_path / "results")).read_latest(dataset="pets")
        throttled = fake.server_throttle.throttled
        completed = sum(row["status"] == "Completed" for row in rows)
        record(f"throttling of every other create, describe and list (real Airflow, {time.monotonic() - started:.0f} s)",
               models=len(models), faults=sum(throttled.values()), completed=completed,
               duplicates=duplicates(fake, models), lost=len(models) - len(rows))
        assert completed == len(models), (run.stdout + run.stderr)[-4000:]
        assert duplicates(fake, models) == 0 and len(rows) == len(models)
        assert {state for (task, _), state in states.items() if task.startswith("lane.")} == {"success"}
        assert throttled["CreateHyperParameterTuningJob"] >= 4 and throttled["DescribeHyperParameterTuningJob"] >= 4


def test_the_operator_keeps_the_study_to_its_cap_where_the_service_allows_more(tmp_path, monkeypatch):
    """max_concurrent_tuning_jobs=3 over 8 models, against a service that refuses nothing: only the
    launch operator's own count of the study's jobs in flight can hold the fourth back."""
    models = CURATED[:8]
    with serving(tmp_path, monkeypatch, models, run_seconds=2.0) as fake:  # three launches take well under 2 s
        with peak_in_flight(fake) as peak:
            study = run_study(tmp_path, models, max_concurrent=3)
        completed = sum(event["outcome"] == "success" for event in study["events"])
        held = len(study["deferred"])  # launches that found the study at its cap, at least once
        record(f"in-flight cap of 3, kept by the operator (service allows more; peak {peak[0]})", models=len(models),
               faults=held, completed=completed, duplicates=duplicates(fake, models),
               lost=len(models) - len(study["rows"]))
        assert peak[0] == 3, f"{peak[0]} tuning jobs were in flight at once; the study's cap is 3"
        assert held >= 1 and not set(study["deferred"]) & set(models[:3])  # the fourth, at least, was held
        assert completed == len(models) and duplicates(fake, models) == 0 and len(study["rows"]) == len(models)


def test_resource_limit_exceeded_beyond_three_jobs_in_flight(tmp_path, monkeypatch, hooked):
    """The service's own answer (ResourceLimitExceeded past 3 in flight; the study's cap is 100): the
    operator backs off and launches each model once, when the service accepts it."""
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
        with peak_in_flight(fake) as peak:
            study = run_study(tmp_path, models)
        completed = sum(event["outcome"] == "success" for event in study["events"])
        record("quota: the service answers ResourceLimitExceeded past 3 in flight", models=len(models),
               faults=len(refused), completed=completed, duplicates=duplicates(fake, models),
               lost=len(models) - len(study["rows"]))
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


class DenyDescribe:
    """Answers AccessDeniedException (as botocore would receive it) to describes of the named jobs."""

    def __init__(self):
        self.names: set[str] = set()
        self.denied = 0

    def __call__(self, request, event_name: str, **kwargs):
        if not event_name.endswith("DescribeHyperParameterTuningJob"):
            return None
        name = json.loads(request.body or b"{}").get("HyperParameterTuningJobName")
        if name not in self.names:
            return None
        self.denied += 1
        body = json.dumps({"__type": "AccessDeniedException", "message": "User is not authorized to perform: "
                           "sagemaker:DescribeHyperParameterTuningJob"}).encode()
        return AWSResponse(request.url, 400, {"x-amzn-ErrorType": "AccessDeniedException"}, _Raw(body))


def test_a_wait_failed_while_its_job_runs_then_a_rerun_attaches_and_collects_it(tmp_path, monkeypatch, hooked):
    """One model's wait ends in error (describe denied) while its job runs: the run's collection says
    InProgress; the re-run of the same inputs plans to attach to that job, launches nothing, and
    collects its Completed result once it ends."""
    models = CURATED[:3]
    slow = models[0]
    with serving(tmp_path, monkeypatch, models, run_seconds=0.5, run_seconds_by_model={slow: 3600}) as fake:
        deny = DenyDescribe()
        hooked.append(deny)
        planned = plan_task(study_params(tmp_path, models), tmp_path)
        jobs, _ = launch_all(planned)
        name = jobs[0]["job_name"]
        deny.names.add(name)
        events = wait_all(jobs)
        deny.names.clear()
        assert events[0]["outcome"] == "error" and "AccessDeniedException" in events[0]["reason"], events[0]
        assert [event["outcome"] for event in events[1:]] == ["success", "success"]
        with pytest.raises(AirflowException, match="AccessDenied"):  # the sensor fails the wait, retryable
            TuningJobSensor(task_id="wait", job=jobs[0]).execute_complete(dict(CONTEXT), events[0])
        first = collect(tmp_path, planned, "manual__first")
        assert first[slow]["status"] == "InProgress" and fake.backend.hyper_parameter_tuning_jobs[name] \
            .hyper_parameter_tuning_job_status == "InProgress"

        replanned = plan_task(study_params(tmp_path, models), tmp_path)
        assert replanned["skipped"] == models[1:]
        [relaunch] = replanned["launches"]
        assert (relaunch["model_id"], relaunch["job_name"], relaunch["attaching"]) == (slow, name, True)
        rejobs, _ = launch_all(replanned)
        fake.finish_now(name)
        [event] = wait_all(rejobs)
        second = collect(tmp_path, replanned, "manual__second")
        latest = {row["model_id"]: row for row in ResultsStore(str(tmp_path / "results")).read_latest(dataset="pets")}
        record("a wait failed while its job ran, then a re-run", models=len(models), faults=1,
               completed=sum(row["status"] == "Completed" for row in latest.values()),
               duplicates=duplicates(fake, models), lost=len(set(models) - set(latest)))
        assert deny.denied >= 1 and event["outcome"] == "success"
        assert duplicates(fake, models) == 0 and rejobs[0]["job_name"] == name
        assert second[slow]["status"] == "Completed" and second[slow]["tuning_job_name"] == name
        assert latest[slow] == second[slow] and second[slow]["test_accuracy"] > 0.5
        assert {row["status"] for row in latest.values()} == {"Completed"}


class XComs:
    """What a task instance's `xcom_pull` returns for the run (Airflow's XCom interface, not code under test)."""

    def __init__(self, planned: dict, launched: list[dict], waited: list[dict | None]):
        self.dag_id = "reliability"
        self.values = {("plan", "return_value", None): planned["launches"], ("plan", "study", None): planned["study"],
                       ("plan", "hook_params", None): planned["hook_params"],
                       ("screen", "return_value", None): planned["launches"]}
        for index, (job, wait) in enumerate(zip(launched, waited)):
            self.values[("lane.launch", "return_value", index)] = job
            self.values[("lane.wait", "return_value", index)] = wait

    def xcom_pull(self, task_ids: str, key: str = "return_value", map_indexes: int | None = None):
        return self.values.get((task_ids, key, map_indexes))


def test_collect_metrics_retried_after_it_wrote_adds_no_rows(tmp_path, monkeypatch):
    """The DAG's collection runs twice for one run (a retry after it wrote its rows): the run's rows
    are its models, once each."""
    models = CURATED[:4]
    with serving(tmp_path, monkeypatch, models, run_seconds=0.5, failing=(models[3],)) as fake:
        planned = plan_task(study_params(tmp_path, models), tmp_path)
        jobs, _ = launch_all(planned)
        waited = []
        for job, event in zip(jobs, wait_all(jobs)):
            try:
                waited.append(TuningJobSensor(task_id="wait", job=job).execute_complete(dict(CONTEXT), event))
            except AirflowException:
                waited.append(None)  # a failed wait pushes no XCom
        ti = XComs(planned, jobs, waited)
        first = collect_task(ti, CONTEXT["run_id"])
        second = collect_task(ti, CONTEXT["run_id"])  # the retry
        store = ResultsStore(str(tmp_path / "results"))
        rows = [row for row in store.read_all() if row["dag_run_id"] == CONTEXT["run_id"]]
        record("collect_metrics retried after it wrote", models=len(models), faults=1,
               completed=sum(row["status"] == "Completed" for row in rows),
               duplicates=len(rows) - len({row["model_id"] for row in rows}),
               lost=len(set(models) - {row["model_id"] for row in rows}))
        assert first["files"] == second["files"] and len(first["files"]) == 1
        assert sorted(row["model_id"] for row in rows) == sorted(models)
        assert second["completed"] == 3 and second["failed"] == [models[3]] and duplicates(fake, models) == 0


def _write_rows(uri: str, writer: int, start=None) -> None:
    if start is not None:
        start.wait()
    store = ResultsStore(uri)
    for batch in range(20):
        store.append([{"dataset": "d", "model_id": f"w{writer}-{batch}-{k}", "config_hash": "c", "status": "Completed",
                       "finished_at": str(batch)} for k in range(5)], run_id=f"writer-{writer}")


KILLED_BATCH_ROWS = 100_000


def _killed_row(index: int) -> dict:
    """Rows of one length (about 300 bytes), so the batch's size is known without writing it."""
    return {"dataset": "d", "model_id": f"killed-{index:06d}", "config_hash": "c", "status": "Completed",
            "finished_at": "0", "padding": "x" * 200}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _write_one_large_batch(uri: str, start) -> None:
    start.wait()
    ResultsStore(uri).append([_killed_row(index) for index in range(KILLED_BATCH_ROWS)], run_id="killed-writer")


def test_results_store_under_concurrent_writers_and_a_killed_write(tmp_path, caplog):
    """Four writer processes append 400 rows while a fifth, appending one ~30 MB batch, is SIGKILLed
    while its hidden temporary file is on disk: no row of the others is lost, none is torn, and the
    killed batch is wholly absent."""
    import multiprocessing

    uri = str(tmp_path / "store")
    folder = tmp_path / "store" / "rows" / "d"
    folder.mkdir(parents=True)
    batch_bytes = KILLED_BATCH_ROWS * (len(json.dumps(_killed_row(0), sort_keys=True)) + 1)
    kills = []  # (bytes of the batch on disk at the kill, whether its temporary file outlived the kill)
    for _attempt in range(3):  # the write lasts a fraction of a second: try again if the poll missed it
        start = multiprocessing.Event()
        writers = [multiprocessing.Process(target=_write_rows, args=(uri, writer, start)) for writer in range(4)]
        killed = multiprocessing.Process(target=_write_one_large_batch, args=(uri, start))
        for process in [killed, *writers]:
            process.start()
        start.set()
        temporary = None
        while killed.is_alive() and temporary is None:  # the batch's temporary file, once it has some rows
            temporary = next((folder / name for name in os.listdir(folder) if name.startswith(".killed-writer-")
                              and name.endswith(".tmp") and _size(folder / name)), None)
            if temporary is None:
                time.sleep(0.0005)
        if temporary is not None:
            os.kill(killed.pid, signal.SIGKILL)
        killed.join()
        for process in writers:
            process.join()
        if temporary is not None:
            kills.append((temporary.stat().st_size if temporary.exists() else batch_bytes, temporary.exists()))
        if kills and kills[-1][1]:
            break
        for path in folder.glob("killed-writer-*.jsonl"):  # the write finished before the kill: start again
            path.unlink()
        for path in folder.glob("writer-*.jsonl"):
            path.unlink()
    assert kills and kills[-1][1], f"no writer was killed while its temporary file existed: {kills}"
    written, _ = kills[-1]

    caplog.clear()
    rows = ResultsStore(uri).read_all()
    killed_rows = [row for row in rows if row["model_id"].startswith("killed-")]
    others = {row["model_id"] for row in rows} - {row["model_id"] for row in killed_rows}
    record(f"results store: 4 concurrent writers, 1 writer SIGKILLed mid-write ({written / 2**20:.1f} of "
           f"{batch_bytes / 2**20:.0f} MiB on disk)", models=400, faults=1, completed=len(others),
           duplicates=len(rows) - len(killed_rows) - len(others), lost=400 - len(others))
    assert killed.exitcode == -signal.SIGKILL
    assert 0 < written and written <= batch_bytes
    assert others == {f"w{writer}-{batch}-{k}" for writer in range(4) for batch in range(20) for k in range(5)}
    assert len(rows) - len(killed_rows) == 400
    assert len(killed_rows) in (0, KILLED_BATCH_ROWS)  # never part of a batch
    assert killed_rows == [] and not list(folder.glob("killed-writer-*.jsonl"))  # killed before its rename
    for path in folder.glob("*.jsonl"):  # no torn line anywhere a reader looks
        for line in path.read_text().splitlines():
            json.loads(line)
    assert "malformed" not in caplog.text


def _write_same_keys(uri: str, writer: int, start) -> None:
    start.wait()
    store = ResultsStore(uri)
    for batch in range(20):
        store.append([{"dataset": "same", "model_id": f"m{k}", "config_hash": "c", "status": "Completed",
                       "writer": writer, "batch": batch,
                       "finished_at": f"{dt.datetime.now(dt.timezone.utc).isoformat()}#{writer}"} for k in range(10)],
                     run_id=f"writer-{writer}")


def test_results_store_writers_racing_on_the_same_keys(tmp_path):
    """Four processes append rows of the same ten (dataset, model_id, config_hash) keys at once: every
    row is kept, and the latest per key is the one that finished last."""
    import multiprocessing

    uri = str(tmp_path / "store")
    start = multiprocessing.Event()
    writers = [multiprocessing.Process(target=_write_same_keys, args=(uri, writer, start)) for writer in range(4)]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join()
    store = ResultsStore(uri)
    rows = store.read_all()
    latest = store.read_latest(dataset="same")
    written = {(writer, batch, k) for writer in range(4) for batch in range(20) for k in range(10)}
    kept = {(row["writer"], row["batch"], int(row["model_id"][1:])) for row in rows}
    expected_latest = {f"m{k}": max((row for row in rows if row["model_id"] == f"m{k}"),
                                    key=lambda row: row["finished_at"]) for k in range(10)}
    record("results store: 4 writers racing on the same 10 keys (800 rows)", models=10, faults=4,
           completed=len(latest), duplicates=len(latest) - len({row["model_id"] for row in latest}),
           lost=len(written - kept))
    assert all(process.exitcode == 0 for process in writers)
    assert len(rows) == len(written) and kept == written
    assert [row["model_id"] for row in latest] == [f"m{k}" for k in range(10)]
    assert all(row == expected_latest[row["model_id"]] for row in latest)
    assert len({row["finished_at"] for row in rows}) == len(rows)  # so "the latest" is unambiguous


# -- Real Airflow on the local backend ------------------------------------------------------------

KILLED_STUDY_MODELS = ["test_resnet", "test_efficientnet"]
# An epoch of the tiny data takes about 0.05 s: this many make a trial outlast the other model's launch.
KILLED_STUDY_EPOCHS = 40


def canary(length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """A random secret; letters and digits only, so no encoding (URI, JSON, shell) can disguise it."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def credential_environment(canaries: dict[str, str]) -> dict[str, str]:
    """AWS credentials and two Airflow connections with passwords, as a deployment would set them."""
    return {
        "AWS_ACCESS_KEY_ID": canaries["access key id"],
        "AWS_SECRET_ACCESS_KEY": canaries["secret access key"],
        "AWS_SESSION_TOKEN": canaries["session token"],
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": canaries["access key id"],
                                                "password": canaries["secret access key"],
                                                "extra": {"region_name": "us-east-1"}}),
        "AIRFLOW_CONN_MODEL_SELECTION_SECRET_PROBE": f"generic://probe:{canaries['connection password']}@probe.invalid",
    }


def left_in_process_group(pgid: int, grace: float = 5.0) -> list[int]:
    """Live processes (zombies aside) still in that process group after `grace` seconds to exit."""
    deadline = time.monotonic() + grace
    while True:
        members = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                    members.append(process.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.2)


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, poll: float = 0.2) -> T:
    """Poll `condition` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclasses.dataclass
class KilledStudy:
    """One study: Airflow SIGKILLed while the tuning jobs ran, the jobs ending without it, then a re-run."""

    root: Path
    models: list[str]
    canaries: dict[str, str]
    killed_returncode: int
    killed_at: dt.datetime
    in_progress_at_kill: list[str]  # tuning jobs InProgress when Airflow was killed
    left_in_group: list[int]  # processes of Airflow's group alive after the kill
    ended: dict[str, dict]  # each tuning job's description once it ended with no Airflow running
    trainers_at_kill: dict[str, dict]  # the trials training at the kill, described once their jobs ended
    rerun_returncode: int

    @property
    def jobs_root(self) -> Path:
        return self.root / "jobs"

    @property
    def results(self) -> ResultsStore:
        return ResultsStore(str(self.root / "results"))

    def output(self, run: str) -> str:
        return (self.root / "output" / f"{run}.log").read_text()

    def launches_per_model(self) -> Counter:
        """Tuning jobs created per model, from each job's own request (no job is ever deleted)."""
        store = JobStore(self.jobs_root)
        return Counter(read_json(store.tuning_dir(name) / "request.json")["TrainingJobDefinition"]
                       ["StaticHyperParameters"]["model_id"] for name in store.tuning_job_names())

    def figures(self) -> dict[str, int]:
        rows = self.results.read_latest(dataset="tiny")
        return {"models": len(self.models), "completed": sum(row["status"] == "Completed" for row in rows),
                "duplicates": sum(count - 1 for count in self.launches_per_model().values()),
                "lost": len(set(self.models) - {row["model_id"] for row in rows})}


@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory) -> Path:
    """A metadata database migrated once, with the project's pools, for this module's Airflow homes."""
    root = tmp_path_factory.mktemp("migrated")
    migrate(airflow_environment(root / "home", root / "jobs", root / "results"))
    return root / "home" / "airflow.db"


def airflow_home(home: Path, migrated_database: Path) -> Path:
    """A new Airflow home whose metadata database is a copy of the migrated one (the file is the whole
    database; `airflow.cfg` is written anew for this home on first use)."""
    home.mkdir(parents=True)
    shutil.copyfile(migrated_database, home / "airflow.db")
    return home


@pytest.fixture(scope="module")
def killed_study(tmp_path_factory, migrated_database) -> KilledStudy:
    root = tmp_path_factory.mktemp("killed")
    canaries = {"access key id": "AKIA" + canary(16, string.ascii_uppercase + string.digits),
                "secret access key": canary(40), "session token": canary(64), "connection password": canary(24)}
    environment = {**airflow_environment(airflow_home(root / "home", migrated_database), root / "jobs",
                                         root / "results"),
                   **credential_environment(canaries)}
    for channel, seed in (("training", 1), ("validation", 2), ("test", 3)):
        write_image_folders(root / "data" / channel, classes=3, per_class=8 if channel == "training" else 4, seed=seed)
    conf = {"model_ids": KILLED_STUDY_MODELS, "learning_rate_multipliers": [1.0], "hyperparameters": TINY,
            "epochs": KILLED_STUDY_EPOCHS, "early_stopping_patience": KILLED_STUDY_EPOCHS, "speed_rounds": 0,
            "dataset": {"name": "tiny", **{channel: str(root / "data" / channel)
                                           for channel in ("training", "validation", "test")}}}
    (root / "output").mkdir()
    store = JobStore(root / "jobs")
    killed_log = root / "output" / "killed.log"
    airflow = dags_test_process(environment, conf, killed_log)

    def every_job_supervised_and_one_training() -> tuple[dict[str, dict], list[str]] | None:
        """The job states and the running trials, once every model's job has its supervisor and some
        trainer runs (read from the state files, so that the test's polling describes nothing)."""
        if airflow.poll() is not None:
            pytest.fail(f"airflow dags test ended before the kill:\n{killed_log.read_text()[-4000:]}")
        states = {name: store.read_state(store.tuning_dir(name)) for name in store.tuning_job_names()}
        training = [trial for state in states.values() for trial in state["TrainingJobNames"]
                    if store.read_state(store.training_dir(trial))["TrainingJobStatus"] == "InProgress"]
        supervised = len(states) == len(KILLED_STUDY_MODELS) and all(s.get("SupervisorPid") for s in states.values())
        return (states, training) if supervised and training else None

    try:
        states, training = wait_for(every_job_supervised_and_one_training, 180, "every model's tuning job to run")
        os.killpg(airflow.pid, signal.SIGKILL)
        killed_at = dt.datetime.now(dt.timezone.utc)
    finally:
        if airflow.poll() is None:
            os.killpg(airflow.pid, signal.SIGKILL)
        airflow.wait(30)
    left_in_group = left_in_process_group(airflow.pid)
    client = LocalSageMakerClient(root / "jobs")

    def every_job_ended() -> dict[str, dict] | None:
        described = {name: client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
                     for name in states}
        return described if all(d["HyperParameterTuningJobStatus"] not in ("InProgress", "Stopping")
                                for d in described.values()) else None

    ended = wait_for(every_job_ended, 240, "the tuning jobs to end with Airflow gone", poll=1.0)
    rerun = dags_test(environment, conf, timeout=400)
    (root / "output" / "rerun.log").write_text(rerun.stdout + rerun.stderr)
    return KilledStudy(
        root=root, models=KILLED_STUDY_MODELS, canaries=canaries, killed_returncode=airflow.returncode,
        killed_at=killed_at, left_in_group=left_in_group, ended=ended, rerun_returncode=rerun.returncode,
        in_progress_at_kill=[name for name, s in states.items() if s["HyperParameterTuningJobStatus"] == "InProgress"],
        trainers_at_kill={trial: client.describe_training_job(TrainingJobName=trial) for trial in training},
    )


def test_airflow_killed_mid_run_then_rerun_loses_nothing_and_launches_nothing_twice(killed_study):
    """SIGKILL of the whole `airflow dags test` process group while its tuning jobs run: the jobs
    (detached supervisors and trainers) run on to Completed without Airflow, and the re-run of the
    same inputs attaches to them by name, collects every model and reports it."""
    study = killed_study
    figures = study.figures()
    record("Airflow SIGKILLed mid-run, then re-run (local)", faults=1, **figures)

    assert study.killed_returncode == -signal.SIGKILL and study.left_in_group == []
    assert study.in_progress_at_kill, "nothing was running when Airflow was killed"
    assert study.trainers_at_kill, "no trainer was running when Airflow was killed"
    for name in study.in_progress_at_kill:  # the kill did not stop the jobs ...
        assert study.ended[name]["HyperParameterTuningJobStatus"] == "Completed", study.ended[name]
        assert study.ended[name]["HyperParameterTuningEndTime"] > study.killed_at
    for trial in study.trainers_at_kill.values():  # ... nor the trainers
        assert trial["TrainingJobStatus"] == "Completed" and trial["TrainingEndTime"] > study.killed_at, trial
    assert {d["HyperParameterTuningJobStatus"] for d in study.ended.values()} == {"Completed"}

    rerun = study.output("rerun")
    assert study.rerun_returncode == 0 and run_succeeded(rerun), rerun[-4000:]
    assert study.launches_per_model() == Counter(study.models)  # one tuning job per model, ever
    rows = study.results.read_all()
    assert sorted((row["model_id"], row["status"]) for row in rows) == sorted((m, "Completed") for m in study.models)
    reports = list((study.root / "results" / "reports" / "tiny").glob("*/report.html"))
    assert len(reports) == 1 and all(model in reports[0].read_text() for model in study.models)
    assert figures == {"models": 2, "completed": 2, "duplicates": 0, "lost": 0}


def scan_for_canaries(study: KilledStudy) -> tuple[dict[str, int], int, list[str]]:
    """Every canary, searched in each place a credential could end up; returns the files scanned per
    place (and the XCom rows), the bytes scanned, and the leaks as 'canary in place'."""
    places = {
        "`airflow dags test` output, which holds the task logs": study.root / "output",
        "Airflow home: metadata database file, config, log folder": study.root / "home",
        "results store": study.root / "results" / "rows",
        "report": study.root / "results" / "reports",
        "local job states and supervisor logs": study.jobs_root / "tuning-jobs",
        "trainer logs, models and outputs": study.jobs_root / "training-jobs",
    }
    scanned, size, leaks = {}, 0, []
    for place, top in places.items():
        files = [top] if top.is_file() else [path for path in top.rglob("*") if path.is_file()]
        scanned[place] = len(files)
        for path in files:
            content = path.read_bytes()
            size += len(content)
            leaks += [f"{name} in {path}" for name, value in study.canaries.items() if value.encode() in content]
    # The values themselves, read through SQLite: in the file, a long value can straddle two pages.
    with sqlite3.connect(study.root / "home" / "airflow.db") as database:
        xcoms = database.execute("SELECT dag_id, task_id, map_index, key, value FROM xcom").fetchall()
    scanned["XCom values"] = len(xcoms)
    for *where, value in xcoms:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        size += len(text)
        leaks += [f"{name} in the XCom {where}" for name, secret in study.canaries.items() if secret in text]
    return scanned, size, leaks


def test_credentials_leak_into_no_xcom_log_result_report_or_job_file(killed_study):
    """The study above ran with AWS credentials and two connection passwords in its environment,
    all random canaries: none may appear in anything the runs wrote or printed."""
    scanned, size, leaks = scan_for_canaries(killed_study)
    files = sum(count for place, count in scanned.items() if place != "XCom values")
    record(f"credentials set (random canaries): sought in {files} files and {scanned['XCom values']} XCom values "
           f"({size / 2**20:.1f} MiB), found {len(leaks)}", faults=len(killed_study.canaries), **killed_study.figures())
    empty = [place for place, count in scanned.items() if not count]
    assert not empty and size > 0, f"nothing scanned in {empty}: the scan could not have failed"
    trainer_logs = list((killed_study.jobs_root / "training-jobs").glob("*/log.txt"))
    assert len(trainer_logs) == len(killed_study.models)
    rerun = killed_study.output("rerun")  # `airflow dags test` prints the task logs; it writes none under logs/
    assert all(f"end task task_id={task}" in rerun for task in ("plan", "lane.launch", "lane.wait", "collect_metrics",
                                                                "frontier_report"))
    assert not leaks, "credentials leaked:\n" + "\n".join(leaks)


# -- Real Airflow against moto's SageMaker endpoint -----------------------------------------------


def task_states(database: Path) -> dict[tuple[str, int], str]:
    """(task_id, map_index) -> state of every task instance of the project's DAG, from the metadata database."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ?",
                                  (DAG_ID,)).fetchall()
    return {(task_id, map_index): state for task_id, map_index, state in rows}


def test_one_launch_failing_for_good_among_six_fails_no_other_lane(tmp_path, monkeypatch, migrated_database):
    """Real `airflow dags test` of six models against moto, where one model's job name is already taken
    by a tuning job made from another model's request (created before the run): that launch fails at
    once (no retry can free the name), its row carries no other model's result, and the five other
    lanes launch, wait and complete; collection and the report still run."""
    models = CURATED[:6]
    with serving(tmp_path, monkeypatch, models, run_seconds=1.0) as fake:
        conf = study_params(tmp_path, models)
        planned = plan_task(conf, PROJECT_ROOT)  # the names the DAG's plan gives the models
        victim, other = planned["launches"][2], planned["launches"][4]
        impostor = build_tuning_request(victim["job_name"], **other["spec"])
        own = build_tuning_request(victim["job_name"], **victim["spec"])
        assert impostor["TrainingJobDefinition"] != own["TrainingJobDefinition"]  # a real collision
        fake.client("sagemaker").create_hyper_parameter_tuning_job(**impostor)
        environment = airflow_environment(airflow_home(tmp_path / "home", migrated_database), tmp_path / "jobs",
                                          tmp_path / "results")
        started = time.monotonic()
        run = dags_test(environment, conf, timeout=300)
        output = run.stdout + run.stderr
        states = task_states(tmp_path / "home" / "airflow.db")
        rows = {row["model_id"]: row for row in ResultsStore(str(tmp_path / "results")).read_latest(dataset="pets")}
        jobs = fake.backend.hyper_parameter_tuning_jobs
        completed = sum(row["status"] == "Completed" for row in rows.values())
        record(f"one model's launch failing for good among six (real Airflow, {time.monotonic() - started:.0f} s)",
               models=len(models), faults=1, completed=completed, duplicates=len(jobs) - len(models),
               lost=len(set(models) - set(rows)))
        victim_index = victim["map_index"]
        others = [index for index in range(len(models)) if index != victim_index]
        assert [states[("lane.launch", index)] for index in others] == ["success"] * 5, output[-4000:]
        assert [states[("lane.wait", index)] for index in others] == ["success"] * 5  # none upstream_failed
        assert states[("collect_metrics", -1)] == "success" and states[("frontier_report", -1)] == "success"
        assert sorted(rows) == sorted(models) and len(jobs) == len(models)  # nothing launched twice
        assert states[("lane.launch", victim_index)] == "failed", f"it attached to another model's job: {states}"
        assert "was not launched with this model and configuration" in output
        assert states[("lane.wait", victim_index)] == "upstream_failed"
        assert rows[victim["model_id"]]["status"] != "Completed", rows[victim["model_id"]]
        assert completed == 5


# -- A deferred wait killed by the user, on the local backend (moto cannot stop a tuning job) -----


async def run_like_the_triggerer(trigger: TuningJobTrigger) -> dict | None:
    """TriggerRunner.run_trigger's handling of a cancellation (airflow/jobs/triggerer_job_runner.py):
    cancelled with the user-action message (mark failed, clear), it awaits `on_kill()` within the
    triggerer's on_kill timeout and re-raises; `cleanup()` always runs."""
    try:
        async for event in trigger.run():
            return event.payload
        return None
    except asyncio.CancelledError as cancelled:
        if cancelled.args and cancelled.args[0] == _USER_ACTION_CANCEL_MSG:
            try:
                await asyncio.wait_for(trigger.on_kill(), timeout=_ON_CANCEL_TIMEOUT)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                pass
        raise
    finally:
        with contextlib.suppress(Exception):
            await trigger.cleanup()


def test_a_deferred_wait_killed_by_the_user_stops_its_job(tmp_path, monkeypatch):
    """Two models' waits deferred in one event loop, as in the triggerer; the user kills one while its
    trainer runs (the triggerer cancels its trigger with the user-action message): its tuning job and
    trainer end Stopped, and the other model's wait and job go on to Completed."""
    for channel, seed in (("training", 1), ("validation", 2)):
        write_image_folders(tmp_path / "data" / channel, classes=3, per_class=8 if channel == "training" else 4,
                            seed=seed)
    monkeypatch.setenv("MODEL_SELECTION_LOCAL_JOBS_ROOT", str(tmp_path / "jobs"))
    params = {"backend": "local", "model_ids": ["test_resnet", "test_efficientnet"], "hyperparameters": TINY,
              "epochs": 2, "learning_rate_multipliers": [1.0],
              "dataset": {"name": "tiny", "training": str(tmp_path / "data" / "training"),
                          "validation": str(tmp_path / "data" / "validation")},
              "results_uri": str(tmp_path / "results")}
    planned = plan_task(params, tmp_path)
    killed, kept = planned["launches"]
    # the killed model's job runs long (no early stop); the other's, two epochs
    killed["spec"]["static_hyperparameters"].update(epochs="400", early_stopping_patience="400")
    jobs, _ = launch_all(planned)
    store, client = JobStore(tmp_path / "jobs"), LocalSageMakerClient(tmp_path / "jobs")

    def training(name: str) -> list[str]:
        return [trial for trial in store.read_state(store.tuning_dir(name))["TrainingJobNames"]
                if store.read_state(store.training_dir(trial))["TrainingJobStatus"] == "InProgress"]

    async def scenario() -> tuple[dict, list[str]]:
        tasks = {job["model_id"]: asyncio.create_task(run_like_the_triggerer(
            TuningJobTrigger(job["job_name"], job["hook_params"], 0.2, time.time() + 300))) for job in jobs}
        deadline = time.monotonic() + 120
        await asyncio.sleep(0.5)  # the triggers run (and poll) before the user acts
        while not (trainers := training(killed["job_name"])):
            if time.monotonic() > deadline:
                pytest.fail("the long job's trainer never ran while its wait was deferred")
            await asyncio.sleep(0.2)
        assert not tasks[killed["model_id"]].done()
        tasks[killed["model_id"]].cancel(_USER_ACTION_CANCEL_MSG)  # TriggerRunner.cancel_triggers
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        return dict(zip(tasks, outcomes)), trainers

    outcomes, trainers = asyncio.run(scenario())

    def ended(name: str) -> dict | None:
        description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        return description if description["HyperParameterTuningJobStatus"] not in ("InProgress", "Stopping") else None

    stopped = wait_for(lambda: ended(killed["job_name"]), 60, "the killed wait's job to end")
    rows = collect(tmp_path, planned)
    record("a deferred wait killed by the user: its job Stopped (local)", models=2, faults=1,
           completed=sum(row["status"] == "Completed" for row in rows.values()),
           duplicates=len(store.tuning_job_names()) - 2, lost=2 - len(rows))
    assert isinstance(outcomes[killed["model_id"]], asyncio.CancelledError)
    assert outcomes[kept["model_id"]]["outcome"] == "success"
    assert stopped["HyperParameterTuningJobStatus"] == "Stopped"
    assert [client.describe_training_job(TrainingJobName=trial)["TrainingJobStatus"] for trial in trainers] == \
        ["Stopped"] * len(trainers)
    assert rows[killed["model_id"]]["status"] == "Stopped" and rows[kept["model_id"]]["status"] == "Completed"
    assert sorted(store.tuning_job_names()) == sorted(job["job_name"] for job in jobs)
