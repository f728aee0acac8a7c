"""Faults injected into whole studies, with the figures.

On the SageMaker backend every scenario runs the DAG with real `airflow dags test` (each study in its own
process and Airflow home) against moto's server, whose answers carry every fault
(tests/fake_sagemaker.py): throttling, the account's quota, an unreadable job, a kill while poking, one
launch failing for good, and one study whose first run has a model failing in training, one stopped in
the console and one whose wait is denied, followed by its collection run again (`airflow tasks test`)
and a second run. The results store is written by real processes, one of them SIGKILLed mid-write. On
the local backend, real `airflow dags test` runs are killed and re-run, with credentials in their
environment that must show up nowhere.
Each records: models, faults injected, models completed, duplicate launches, results lost.
`make reliability` prints the table (pytest's terminal summary).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import string
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from airflow_env import AIRFLOW, DAG_ID, airflow_environment, dags_test, dags_test_process, migrate, run_succeeded
from conftest import write_image_folders
from fake_sagemaker import ROLE, serving
from test_dag import TINY

from model_selection.backends.local import LocalSageMakerClient
from model_selection.dag_tasks import plan_task
from model_selection.local.jobstore import JobStore, read_json
from model_selection.results import ResultsStore, safe_file_name
from model_selection.tuning_request import build_tuning_request

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CURATED = [line.strip() for line in (PROJECT_ROOT / "include" / "model_lists" / "jumpstart-caltech256-frontier.txt")
           .read_text().splitlines() if line.strip() and not line.startswith("#")]
FIGURES: list[dict] = []
T = TypeVar("T")


def record(fault: str, **figures) -> None:
    FIGURES.append({"fault": fault, **figures})


def study_params(tmp_path: Path, models: list[str], max_concurrent: int = 100) -> dict:
    return {"backend": "sagemaker", "model_ids": models, "role_arn": ROLE, "output_path": "s3://study-data/output",
            "dataset": {"name": "pets", "training": "s3://study-data/pets/training"},
            "max_concurrent_tuning_jobs": max_concurrent, "results_uri": str(tmp_path / "results")}


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
        states, training = wait_for(every_job_supervised_and_one_training, 600, "every model's tuning job to run")
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

    ended = wait_for(every_job_ended, 900, "the tuning jobs to end with Airflow gone", poll=1.0)
    rerun = dags_test(environment, conf, timeout=900)
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


@pytest.mark.slow
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
        run = dags_test(environment, conf, timeout=900)
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
        # its row says it was never launched, and why: the name belongs to a job of another request
        assert rows[victim["model_id"]]["status"] == "NotLaunched", rows[victim["model_id"]]
        assert "was not launched with this model and configuration" in rows[victim["model_id"]]["failure_reason"]
        assert completed == 5


# -- Real Airflow against moto's server: throttling, the account's quota, an unreadable job, a kill --------
#
# Every fault below is the server's own answer (tests/fake_sagemaker.py: ServerThrottle, ServerQuota,
# ServerDeny, ServerStop), so it reaches the clients of every process: each study is a real
# `airflow dags test` in its own process and Airflow home. The lanes' waits are shortened with Airflow's
# own cluster-policy hook (`task_policy` in the home's config/airflow_local_settings.py, as a deployment
# sets its tasks' timings): seconds instead of the DAG's minutes; nothing else of the DAG changes.

POLICY = '''"""This Airflow home's cluster policy: operator settings per task id, from MODEL_SELECTION_TEST_LANES."""
import datetime
import json
import os


def task_policy(task):
    for name, value in json.loads(os.environ.get("MODEL_SELECTION_TEST_LANES", "{}")).get(task.task_id, {}).items():
        if name == "retry_delay":  # given in seconds; a mapped operator keeps it as a timedelta
            value = datetime.timedelta(seconds=value)
        partial = getattr(task, "partial_kwargs", None)  # a mapped operator keeps its arguments there
        if partial is not None:
            partial[name] = value
        else:
            setattr(task, name, value)
'''
FAST_LANES = {"lane.launch": {"wait_seconds": 1, "max_wait_seconds": 2, "capacity_check_seconds": 1},
              "lane.wait": {"poke_interval": 1}}
POKING_LANES = {**FAST_LANES, "lane.wait": {"poke_interval": 1, "deferrable": False}}
# The DAG's own retries of a failed wait (2), 1 s apart instead of its 30 s and more.
QUICK_RETRY_LANES = {**FAST_LANES, "lane.wait": {**FAST_LANES["lane.wait"], "retry_delay": 1}}


def sagemaker_home(root: Path, migrated_database: Path, lanes: dict = FAST_LANES) -> dict[str, str]:
    """The environment of an `airflow dags test` with its own home (a copy of the migrated database), its own
    results store and the lanes' settings for the cluster policy."""
    home = airflow_home(root / "home", migrated_database)
    (home / "config").mkdir()
    (home / "config" / "airflow_local_settings.py").write_text(POLICY)
    return {**airflow_environment(home, root / "jobs", root / "results"), "MODEL_SELECTION_TEST_LANES": json.dumps(lanes)}


def study_conf(root: Path, models: list[str], dataset: str = "pets", max_concurrent: int = 100) -> dict:
    """A study of `dataset` (its name makes its job names) over the data set in moto's S3, results under root."""
    return {**study_params(root, models, max_concurrent),
            "dataset": {"name": dataset, "training": "s3://study-data/pets/training"}}


def run_at_once(runs: dict[str, tuple[dict[str, str], dict]], root: Path, timeout: float = 600,
                watch: Callable[[], None] | None = None, during: Callable[[dict], None] | None = None) -> dict[str, str]:
    """`airflow dags test` of each (environment, conf), all started at once, each in its own process group;
    `watch()` is called every 20 ms and `during(processes)` every 0.2 s until every one has exited; their outputs."""
    (root / "output").mkdir(parents=True, exist_ok=True)
    processes = {name: dags_test_process(environment, conf, root / "output" / f"{name}.log")
                 for name, (environment, conf) in runs.items()}
    deadline, last = time.monotonic() + timeout, 0.0
    try:
        while any(process.poll() is None for process in processes.values()):
            if time.monotonic() > deadline:
                pytest.fail(f"airflow dags test still running after {timeout:.0f} s: "
                            + "".join((root / "output" / f"{name}.log").read_text()[-3000:] for name in runs))
            if watch:
                watch()
            if during and time.monotonic() - last >= 0.2:
                last = time.monotonic()
                during(processes)
            time.sleep(0.02)
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    return {name: (root / "output" / f"{name}.log").read_text() for name in runs}


def xcom_value(value) -> object:
    """An XCom's value as the metadata database holds it (JSON text)."""
    while isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return value


LATEST_RUN = f"(SELECT run_id FROM dag_run WHERE dag_id = '{DAG_ID}' ORDER BY id DESC LIMIT 1)"


def lanes_of_run(database: Path) -> dict[int, dict[str, dict]]:
    """Per map index, for `launch` and `wait` of the latest run: the task instance's state, try number, map-index
    label as the UI shows it (`task_instance.rendered_map_index`) and XCom, from the metadata database."""
    with sqlite3.connect(database) as connection:
        instances = connection.execute(
            "SELECT task_id, map_index, state, try_number, rendered_map_index FROM task_instance WHERE dag_id = ? "
            f"AND task_id IN ('lane.launch', 'lane.wait') AND run_id = {LATEST_RUN}", (DAG_ID,)).fetchall()
        xcoms = connection.execute(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND key = 'return_value' "
            f"AND task_id IN ('lane.launch', 'lane.wait') AND run_id = {LATEST_RUN}", (DAG_ID,)).fetchall()
    lanes: dict[int, dict[str, dict]] = {}
    for task_id, index, state, try_number, label in instances:
        lanes.setdefault(index, {})[task_id.split(".")[1]] = {"state": state, "try_number": try_number,
                                                              "label": label, "xcom": None}
    for task_id, index, value in xcoms:
        lanes[index][task_id.split(".")[1]]["xcom"] = xcom_value(value)
    return lanes


def latest_run_state(database: Path, task_id: str, map_index: int = 0) -> tuple[str | None, str | None]:
    """(run id, state of the task instance) of the DAG's latest run, read while `airflow dags test` may be
    writing; (None, None) while there is no run yet or the run holds the database's lock (look again later)."""
    try:
        with sqlite3.connect(database, timeout=5) as connection:
            found = connection.execute(
                f"SELECT {LATEST_RUN}, (SELECT state FROM task_instance WHERE dag_id = ? AND task_id = ? "
                f"AND map_index = ? AND run_id = {LATEST_RUN})", (DAG_ID, task_id, map_index)).fetchone()
    except sqlite3.OperationalError:
        return None, None
    return found[0], found[1]


def jobs_per_lane(fake) -> Counter:
    """Tuning jobs moto created per (DAG run, model), from the tags each launch put on its job."""
    def tags(job) -> dict:
        return {tag["Key"]: tag["Value"] for tag in job.tags or []}

    return Counter((tags(job).get("model-selection:run-id"), tags(job).get("model-selection:model-id"))
                   for job in list(fake.backend.hyper_parameter_tuning_jobs.values()))


def launch_waits(output: str) -> Counter:
    """The launch operator's deferrals by what they waited for, from the task logs `airflow dags test` prints.

    Not from the launch's XCom or map-index label: `airflow dags test` resumes a deferred task with the
    trigger's event alone and drops the operator's own deferral kwargs (its count of waits), which the
    scheduler and triggerer keep (airflow/models/trigger.py adds the event to them)."""
    found = re.findall(r"not launching \S+ yet: (?:the service (answered ResourceLimitExceeded|throttled the launch)"
                       r"|\d+ of this study's tuning jobs are (in flight))", output)
    return Counter({"answered ResourceLimitExceeded": "quota", "throttled the launch": "throttled"}.get(service)
                   or "capacity" for service, _ in found)


def study_rows(root: Path, dataset: str) -> dict[str, dict]:
    return {row["model_id"]: row for row in ResultsStore(str(root / "results")).read_latest(dataset=dataset)}


@pytest.mark.slow
def test_two_studies_sharing_an_account_quota_in_real_airflow(tmp_path, monkeypatch, migrated_database):
    """Two DAG runs started at once, two studies (data sets `pets`, capped by the study at 1 job in flight,
    and `dogs`, capped at 100) of four models each, against one account whose training-instance quota fits 3
    tuning jobs: the server refuses every create past it with ResourceLimitExceeded and the service's message.
    Measured from moto's own job list: the account never holds more than 3 jobs in flight (the server
    refuses), `pets` never more than 1 (only the operator's own count holds it), every model of both
    studies completes, each launched once. Cap 1, not 2: with 2, whether `pets` ever reaches its own cap
    before the account's quota refuses it depends on how the two runs interleave (a loaded machine's
    run saw 16 quota waits and none for the cap); with 1, each `pets` launch while its one job runs
    waits for the cap."""
    models = CURATED[:4]
    with serving(tmp_path, monkeypatch, models, run_seconds=12.0, quota_jobs=3) as fake:
        caps = {"pets": 1, "dogs": 100}
        runs = {name: (sagemaker_home(tmp_path / name, migrated_database),
                       study_conf(tmp_path / name, models, name, cap)) for name, cap in caps.items()}
        peaks: Counter = Counter()  # "account" and each study prefix -> most jobs in flight at once

        def sample() -> None:
            flying = Counter(name.split("-")[0] for name, job in list(fake.backend.hyper_parameter_tuning_jobs.items())
                             if job.hyper_parameter_tuning_job_status in ("InProgress", "Stopping"))
            for key, count in [*flying.items(), ("account", sum(flying.values()))]:
                peaks[key] = max(peaks[key], count)

        started = time.monotonic()
        outputs = run_at_once(runs, tmp_path, watch=sample)
        seconds = time.monotonic() - started
        lanes = {name: lanes_of_run(tmp_path / name / "home" / "airflow.db") for name in caps}
        rows = {name: study_rows(tmp_path / name, name) for name in caps}
        created = jobs_per_lane(fake)
        prefix = {name: next(iter(rows[name].values()))["tuning_job_name"].split("-")[0] for name in caps}
        waits = {name: launch_waits(outputs[name]) for name in caps}
        completed = sum(row["status"] == "Completed" for study in rows.values() for row in study.values())
        record(f"account quota of 3 tuning jobs, two studies run at once (real Airflow, {seconds:.0f} s): "
               f"{fake.quota.refused} creates refused (ResourceLimitExceeded); the launches waited for the quota "
               f"{waits['pets']['quota'] + waits['dogs']['quota']} times, for the study's cap (pets) "
               f"{waits['pets']['capacity']} times; peak in flight {peaks['account']} (pets "
               f"{peaks[prefix['pets']]}), {sum(created.values())} jobs created",
               models=2 * len(models), faults=fake.quota.refused, completed=completed,
               duplicates=sum(count - 1 for count in created.values()),
               lost=sum(len(set(models) - set(study)) for study in rows.values()))
        for name in caps:
            assert run_succeeded(outputs[name]), outputs[name][-4000:]
            assert {step["state"] for lane in lanes[name].values() for step in lane.values()} == {"success"}
            assert {row["status"] for row in rows[name].values()} == {"Completed"} and sorted(rows[name]) == sorted(models)
        assert fake.quota.refused >= 1, "the server never refused a create: the quota was not reached"
        assert peaks["account"] <= 3 and peaks[prefix["pets"]] <= 1, peaks
        assert sum(created.values()) == fake.quota.created == 2 * len(models) and set(created.values()) == {1}
        # every refusal was answered by a launch's deferral, and pets' cap held its launches back itself
        assert waits["pets"]["quota"] + waits["dogs"]["quota"] == fake.quota.refused, waits
        assert waits["pets"]["capacity"] >= 1 and waits["dogs"]["capacity"] == 0, waits


THROTTLED_OPERATIONS = ("CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob",
                        "ListHyperParameterTuningJobs", "DescribeTrainingJob")
# The connection's retry budget: 2 attempts per call in all (botocore's `max_attempts` counts retries only).
SHORT_RETRIES = {"mode": "standard", "total_max_attempts": 2}


@pytest.mark.slow
def test_throttling_that_outlasts_the_clients_retries_in_real_airflow(tmp_path, monkeypatch, migrated_database):
    """The connection allows botocore 2 attempts per call; the server throttles each job's create, describes
    and the study's listing in bursts of 2 of every 3 requests, so every other call reaches the project's own
    handling. Two studies at once: `pets` waits deferred (the trigger's backoff), `dogs` pokes (the sensor's).
    Every launch waits and launches once, every wait counts its throttled describes (XCom and the map-index
    label, read from each run's metadata database), collection reads every job, every model completes."""
    models = CURATED[:3]
    with serving(tmp_path, monkeypatch, models, run_seconds=1.0, server_throttle=THROTTLED_OPERATIONS,
                 throttle_burst=2, retries=SHORT_RETRIES) as fake:
        modes = {"pets": FAST_LANES, "dogs": POKING_LANES}
        runs = {name: (sagemaker_home(tmp_path / name, migrated_database, lanes), study_conf(tmp_path / name, models, name))
                for name, lanes in modes.items()}
        started = time.monotonic()
        outputs = run_at_once(runs, tmp_path)
        seconds = time.monotonic() - started
        lanes = {name: lanes_of_run(tmp_path / name / "home" / "airflow.db") for name in modes}
        rows = {name: study_rows(tmp_path / name, name) for name in modes}
        created = jobs_per_lane(fake)
        throttled = fake.server_throttle.throttled
        waits = {name: launch_waits(outputs[name]) for name in modes}
        describes = {name: [lane["wait"]["xcom"]["throttled_describes"] for lane in lanes[name].values()] for name in modes}
        completed = sum(row["status"] == "Completed" for study in rows.values() for row in study.values())
        record(f"throttling past the connection's 2 attempts (real Airflow, {seconds:.0f} s): {sum(throttled.values())} "
               f"requests throttled ({', '.join(f'{op} {n}' for op, n in sorted(throttled.items()))}); the launches "
               f"waited {waits['pets']['throttled'] + waits['dogs']['throttled']} times; throttled describes counted "
               f"by the trigger {describes['pets']}, by the poking "
               f"sensor {describes['dogs']}", models=2 * len(models), faults=sum(throttled.values()),
               completed=completed, duplicates=sum(count - 1 for count in created.values()),
               lost=sum(len(set(models) - set(study)) for study in rows.values()))
        for name in modes:
            assert run_succeeded(outputs[name]), outputs[name][-4000:]
            assert {step["state"] for lane in lanes[name].values() for step in lane.values()} == {"success"}
            assert {row["status"] for row in rows[name].values()} == {"Completed"} and sorted(rows[name]) == sorted(models)
            assert waits[name]["throttled"] >= len(models), waits  # the operator's backoff ran (each create once)
            assert all(count >= 1 for count in describes[name]), describes  # the trigger's / the sensor's ran
            for lane in lanes[name].values():
                count = lane["wait"]["xcom"]["throttled_describes"]
                assert rows[name][lane["launch"]["xcom"]["model_id"]]["throttled_describes"] == count  # the row's figure
                assert lane["wait"]["label"].endswith(f" · Completed, {count} describes throttled"), lane["wait"]["label"]
        assert sum(created.values()) == 2 * len(models) and set(created.values()) == {1}
        assert all(throttled[operation] >= 1 for operation in THROTTLED_OPERATIONS), throttled


@pytest.mark.slow
def test_a_job_that_cannot_be_read_gets_an_unknown_row_in_real_airflow(tmp_path, monkeypatch, migrated_database):
    """The server refuses (AccessDeniedException) every DescribeTrainingJob of one model's training jobs: its
    lane completes (launch and wait read only the tuning job), its row says Unknown and why, the other
    row is whole, and the next plan does not take the unread model for done."""
    models = CURATED[:2]
    with serving(tmp_path, monkeypatch, models, run_seconds=1.0) as fake:
        conf = study_conf(tmp_path, models)
        victim = plan_task(conf, PROJECT_ROOT)["launches"][1]  # the names the DAG's plan gives the models
        fake.deny.prefixes, fake.deny.operations = (victim["job_name"],), ("DescribeTrainingJob",)
        started = time.monotonic()
        outputs = run_at_once({"run": (sagemaker_home(tmp_path, migrated_database), conf)}, tmp_path)
        seconds = time.monotonic() - started
        lanes, rows = lanes_of_run(tmp_path / "home" / "airflow.db"), study_rows(tmp_path, "pets")
        record(f"one model's training jobs unreadable (AccessDeniedException from the server; real Airflow, "
               f"{seconds:.0f} s): its row Unknown", models=len(models), faults=fake.deny.denied["DescribeTrainingJob"],
               completed=sum(row["status"] == "Completed" for row in rows.values()),
               duplicates=sum(count - 1 for count in jobs_per_lane(fake).values()), lost=len(set(models) - set(rows)))
        assert run_succeeded(outputs["run"]), outputs["run"][-4000:]
        assert {step["state"] for lane in lanes.values() for step in lane.values()} == {"success"}
        unread, other = rows[victim["model_id"]], rows[models[0]]
        assert unread["status"] == "Unknown", unread
        assert "AccessDeniedException" in unread["failure_reason"] and "Completed" in unread["failure_reason"], unread
        assert unread.get("test_accuracy") is None and fake.deny.denied["DescribeTrainingJob"] >= 1
        assert other["status"] == "Completed" and other["test_accuracy"] > 0.5 and not other["failure_reason"]
        replanned = plan_task(conf, PROJECT_ROOT)  # the unread model is not done: the next run reads it again
        assert replanned["skipped"] == [models[0]]
        assert [launch["job_name"] for launch in replanned["launches"]] == [victim["job_name"]]


@pytest.mark.slow
def test_a_poking_wait_killed_stops_its_job_in_real_airflow(tmp_path, monkeypatch, migrated_database):
    """The wait pokes (deferrable=False) in `airflow dags test`; the process running it gets SIGTERM, which
    is what Airflow's supervisor sends a task it kills (a user marking it failed, a worker shut down): the
    task runner's own handler calls the sensor's `on_kill`, which stops the job (StopHyperParameterTuningJob,
    answered by the server as SageMaker does). The job ends Stopped, the wait fails on it, collection and
    the report still run (so the run, whose leaves they are, succeeds), and the row says Stopped."""
    models = CURATED[:1]
    with serving(tmp_path, monkeypatch, models, run_seconds=3600) as fake:
        conf = study_conf(tmp_path, models)
        database = tmp_path / "home" / "airflow.db"
        killed: list[float] = []

        def kill_once_poking(processes: dict) -> None:
            jobs = list(fake.backend.hyper_parameter_tuning_jobs)
            # the launch describes the job once; two more describes of it are the sensor's pokes
            if not killed and jobs and fake.calls[("DescribeHyperParameterTuningJob", jobs[0])] >= 3 \
                    and latest_run_state(database, "lane.wait")[1] == "running":
                os.kill(processes["run"].pid, signal.SIGTERM)  # the task's process, not its group
                killed.append(time.monotonic())

        started = time.monotonic()
        outputs = run_at_once({"run": (sagemaker_home(tmp_path, migrated_database, POKING_LANES), conf)}, tmp_path,
                              timeout=900, during=kill_once_poking)
        seconds = time.monotonic() - started
        [name] = list(fake.backend.hyper_parameter_tuning_jobs)
        lanes, rows = lanes_of_run(database), study_rows(tmp_path, "pets")
        record(f"a poking wait killed (SIGTERM to the task's process; real Airflow, {seconds:.0f} s): its job "
               f"{fake.backend.hyper_parameter_tuning_jobs[name].hyper_parameter_tuning_job_status}",
               models=1, faults=1, completed=sum(row["status"] == "Completed" for row in rows.values()),
               duplicates=sum(count - 1 for count in jobs_per_lane(fake).values()), lost=1 - len(rows))
        assert killed, "the wait never poked: " + outputs["run"][-4000:]
        assert fake.stops.stopped == [name], outputs["run"][-4000:]
        assert fake.backend.hyper_parameter_tuning_jobs[name].hyper_parameter_tuning_job_status == "Stopped"
        assert lanes[0]["launch"]["state"] == "success" and lanes[0]["wait"]["state"] == "failed"
        assert rows[models[0]]["status"] == "Stopped", rows
        assert run_succeeded(outputs["run"]), outputs["run"][-4000:]  # the run's leaves (collection, report) ran
        assert "asked to stop" in outputs["run"]  # the sensor's on_kill, in the task's log


# -- One study, three faults in its first run, its collection run again, then a second run ------------------


@dataclasses.dataclass
class FaultedStudy:
    """What `faulted_study`'s runs left, read from the metadata database, moto's jobs, the store and the outputs."""

    roles: dict[str, str]  # failing, stopped, denied, completing -> model id
    outputs: dict[str, str]  # first, collected again, second -> what each Airflow command printed
    seconds: dict[str, float]  # the same -> how long each took
    lanes: dict[str, dict[str, dict]]  # first, second -> model id -> {"launch": ..., "wait": ...} (lanes_of_run)
    first_run_id: str
    collected: dict[str, list[dict]]  # first, again -> the store's rows of the first run, after each collection
    collected_files: dict[str, list[str]]  # first, again -> the store's files holding the first run's rows
    latest: dict[str, dict]  # model id -> its latest row, after the second run
    jobs: dict[str, dict]  # job name -> model id, DAG run id, status, as moto holds it at the end
    stopped_by_the_test: list[str]  # StopHyperParameterTuningJob calls the server answered
    denied: int  # DescribeHyperParameterTuningJob calls the server refused
    relaunch_attaching: bool  # what the second run's plan said of the denied model's job
    collected_again_returncode: int

    def jobs_of(self, role: str) -> list[dict]:
        return [job for job in self.jobs.values() if job["model_id"] == self.roles[role]]


def files_of_run(root: Path, run_id: str) -> list[str]:
    """The results store's files that hold rows of the DAG run (the store names each write after its run)."""
    return sorted(path.name for path in (root / "results" / "rows" / "pets").glob(f"{safe_file_name(run_id)}-*.jsonl"))


@pytest.fixture(scope="module")
def faulted_study(tmp_path_factory, migrated_database) -> FaultedStudy:
    """Four models in one Airflow home against moto. First run: the server fails one model's job in training
    (Failed, with SageMaker's reason); the test stops another's with StopHyperParameterTuningJob as soon as
    it exists, as a console user would; once the third's launch has succeeded, the server answers
    AccessDeniedException to every DescribeHyperParameterTuningJob of its job, which runs on, so its wait
    fails after the DAG's retries. Then the denial is lifted, `airflow tasks test` runs that run's
    collect_metrics again (a retry after it wrote), and the DAG runs again; the server completes the
    denied model's job once the second run's launch of it has succeeded."""
    root = tmp_path_factory.mktemp("faulted")
    models = CURATED[:4]
    roles = dict(zip(("failing", "stopped", "denied", "completing"), models))
    with pytest.MonkeyPatch.context() as monkeypatch, serving(
            root, monkeypatch, models, run_seconds=2.0, failing=(roles["failing"],),
            run_seconds_by_model={roles["stopped"]: 3600, roles["denied"]: 3600}) as fake:
        conf = study_conf(root, models)
        environment = sagemaker_home(root, migrated_database, QUICK_RETRY_LANES)
        database = root / "home" / "airflow.db"
        first = {launch["model_id"]: launch for launch in plan_task(conf, PROJECT_ROOT)["launches"]}
        denied, stopped = first[roles["denied"]], first[roles["stopped"]]
        fake.deny.operations = ("DescribeHyperParameterTuningJob",)

        def stop_and_deny(processes: dict) -> None:
            if not fake.stops.stopped and stopped["job_name"] in fake.backend.hyper_parameter_tuning_jobs:
                sagemaker = fake.client("sagemaker")  # as a user in the console
                sagemaker.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped["job_name"])
            launched = latest_run_state(database, "lane.launch", denied["map_index"])[1] == "success"
            if launched and not fake.deny.prefixes:
                fake.deny.prefixes = (denied["job_name"],)

        outputs, seconds, lanes, collected, files = {}, {}, {}, {}, {}

        def by_model(planned: dict) -> dict[str, dict]:
            """The latest run's lanes by the model the plan gave each map index (any other index as itself)."""
            found = lanes_of_run(database)
            models = {launch["map_index"]: model for model, launch in planned.items()}
            return {models.get(index, f"map index {index}"): lane for index, lane in found.items()}

        started = time.monotonic()
        outputs["first"] = run_at_once({"run": (environment, conf)}, root / "first", during=stop_and_deny)["run"]
        seconds["first"], lanes["first"] = time.monotonic() - started, by_model(first)
        first_run_id = latest_run_state(database, "plan")[0]
        store = ResultsStore(str(root / "results"))

        def first_run_rows() -> list[dict]:
            return [row for row in store.read_all() if row["dag_run_id"] == first_run_id]

        collected["first"], files["first"] = first_run_rows(), files_of_run(root, first_run_id)
        denied_describes = sum(fake.deny.denied.values())
        fake.deny.prefixes = ()  # the denial lifted
        fake.run_seconds_by_model.pop(roles["stopped"])  # its next job trains as long as the others

        started = time.monotonic()
        again = subprocess.run([AIRFLOW, "tasks", "test", DAG_ID, "collect_metrics", first_run_id], env=environment,
                               capture_output=True, text=True, timeout=600)
        outputs["collected again"], seconds["collected again"] = again.stdout + again.stderr, time.monotonic() - started
        collected["again"], files["again"] = first_run_rows(), files_of_run(root, first_run_id)

        second = {launch["model_id"]: launch for launch in plan_task(conf, PROJECT_ROOT)["launches"]}
        relaunch = second[roles["denied"]]

        def finish_once_attached(processes: dict) -> None:
            run, state = latest_run_state(database, "lane.launch", relaunch["map_index"])
            if not fake.finish_requested and run != first_run_id and state == "success":
                fake.finish_now(relaunch["job_name"])

        started = time.monotonic()
        outputs["second"] = run_at_once({"run": (environment, conf)}, root / "second",
                                        during=finish_once_attached)["run"]
        seconds["second"], lanes["second"] = time.monotonic() - started, by_model(second)
        jobs = {}
        for name, job in list(fake.backend.hyper_parameter_tuning_jobs.items()):
            tags = {tag["Key"]: tag["Value"] for tag in job.tags}
            jobs[name] = {"model_id": tags["model-selection:model-id"], "run_id": tags["model-selection:run-id"],
                          "status": job.hyper_parameter_tuning_job_status}
        return FaultedStudy(
            roles=roles, outputs=outputs, seconds=seconds, lanes=lanes, first_run_id=first_run_id,
            collected=collected, collected_files=files, latest=study_rows(root, "pets"), jobs=jobs,
            stopped_by_the_test=list(fake.stops.stopped), denied=denied_describes,
            relaunch_attaching=relaunch["attaching"], collected_again_returncode=again.returncode)


def test_a_model_failing_in_training_and_one_stopped_in_the_console_in_real_airflow(faulted_study):
    """First run: the failed and the stopped model's waits fail on their jobs' ends (no retry can change
    them), their rows say Failed with SageMaker's reason and Stopped; no other lane is touched, the model
    with no fault completes, collection and the report run."""
    study, roles = faulted_study, faulted_study.roles
    rows = {row["model_id"]: row for row in study.collected["first"]}
    lanes = study.lanes["first"]
    first_jobs = [job for job in study.jobs.values() if job["run_id"] == study.first_run_id]
    record(f"one model failing in training, one stopped in the console (real Airflow, {study.seconds['first']:.0f} s; "
           f"the study's first run)", models=len(roles), faults=2,
           completed=sum(row["status"] == "Completed" for row in rows.values()),
           duplicates=len(first_jobs) - len({job["model_id"] for job in first_jobs}),
           lost=len(set(roles.values()) - set(rows)))
    assert run_succeeded(study.outputs["first"]), study.outputs["first"][-4000:]
    failed = rows[roles["failing"]]
    assert failed["status"] == "Failed" and "CUDA out of memory" in failed["failure_reason"], failed
    assert rows[roles["stopped"]]["status"] == "Stopped", rows[roles["stopped"]]
    assert study.stopped_by_the_test == [rows[roles["stopped"]]["tuning_job_name"]]
    assert study.jobs[rows[roles["stopped"]]["tuning_job_name"]]["status"] == "Stopped"
    for role in ("failing", "stopped"):  # failed at once: a job's end is final
        assert lanes[roles[role]]["launch"]["state"] == "success"
        assert lanes[roles[role]]["wait"]["state"] == "failed" and lanes[roles[role]]["wait"]["try_number"] == 1
    assert lanes[roles["completing"]]["wait"]["state"] == "success"
    assert rows[roles["completing"]]["status"] == "Completed" and rows[roles["completing"]]["test_accuracy"] > 0.5
    assert sorted(rows) == sorted(roles.values()) and sorted(lanes) == sorted(roles.values())
    assert sorted(job["model_id"] for job in first_jobs) == sorted(roles.values())  # each launched once


def test_a_wait_denied_while_its_job_runs_then_a_rerun_attaches_and_collects_it_in_real_airflow(faulted_study):
    """The denied model's wait fails after the DAG's retries (3 tries) while its job runs on; once the denial
    is lifted, the second run's plan keeps the job's name and the launch attaches to it: moto holds one job
    for that model, and its result is collected. The failed and the stopped model, whose jobs ended, are
    tried again under new names; the completed one is not run again."""
    study, roles = faulted_study, faulted_study.roles
    first, second = study.lanes["first"][roles["denied"]], study.lanes["second"][roles["denied"]]
    job_name = first["launch"]["xcom"]["job_name"]
    record(f"a wait failed (AccessDenied on its describe, {study.denied} refused) while its job ran, then a re-run "
           f"(real Airflow, {study.seconds['second']:.0f} s): {len(study.jobs_of('denied'))} job(s) of that model",
           models=len(roles), faults=1,
           completed=sum(row["status"] == "Completed" for row in study.latest.values()),
           duplicates=len(study.jobs_of("denied")) - 1, lost=len(set(roles.values()) - set(study.latest)))
    assert first["launch"]["state"] == "success" and study.denied >= 3
    assert first["wait"]["state"] == "failed" and first["wait"]["try_number"] == 3, first
    assert "AccessDeniedException" in study.outputs["first"]
    assert run_succeeded(study.outputs["second"]), study.outputs["second"][-4000:]
    assert study.relaunch_attaching and second["launch"]["xcom"]["job_name"] == job_name
    assert second["launch"]["label"].endswith("attached to the existing job (InProgress)"), second["launch"]
    assert second["wait"]["state"] == "success"
    row = study.latest[roles["denied"]]
    assert row["status"] == "Completed" and row["tuning_job_name"] == job_name and row["test_accuracy"] > 0.5
    assert [name for name, job in study.jobs.items() if job["model_id"] == roles["denied"]] == [job_name]  # none again
    assert study.jobs[job_name]["status"] == "Completed"
    assert Counter(job["model_id"] for job in study.jobs.values()) == Counter(
        {roles["failing"]: 2, roles["stopped"]: 2, roles["denied"]: 1, roles["completing"]: 1})
    assert sorted(study.lanes["second"]) == sorted(roles[role] for role in ("failing", "stopped", "denied"))
    assert study.latest[roles["stopped"]]["status"] == "Completed"  # its second job
    assert study.latest[roles["failing"]]["status"] == "Failed"  # the server fails its every job


def test_collect_metrics_retried_after_it_wrote_adds_no_rows_in_real_airflow(faulted_study):
    """`airflow tasks test` runs the first run's collect_metrics again, after it wrote: the run's rows are
    its models, once each, in the same one file, and they are the retry's (the denied model, readable
    again, says InProgress where the first collection said Unknown)."""
    study, roles = faulted_study, faulted_study.roles
    first = {row["model_id"]: row for row in study.collected["first"]}
    again = {row["model_id"]: row for row in study.collected["again"]}
    record(f"collect_metrics retried after it wrote (`airflow tasks test` on the run; real Airflow, "
           f"{study.seconds['collected again']:.0f} s)", models=len(roles), faults=1,
           completed=sum(row["status"] == "Completed" for row in again.values()),
           duplicates=len(study.collected["again"]) - len(again), lost=len(set(roles.values()) - set(again)))
    assert study.collected_again_returncode == 0, study.outputs["collected again"][-4000:]
    assert len(study.collected["first"]) == len(first) == len(roles)
    assert len(study.collected["again"]) == len(again) == len(roles)
    assert study.collected_files["again"] == study.collected_files["first"] and len(study.collected_files["first"]) == 1
    denied = first[roles["denied"]]
    assert denied["status"] == "Unknown" and "AccessDeniedException" in denied["failure_reason"], denied
    assert again[roles["denied"]]["status"] == "InProgress"
    assert {model: row["status"] for model, row in again.items() if model != roles["denied"]} == \
        {model: row["status"] for model, row in first.items() if model != roles["denied"]}
