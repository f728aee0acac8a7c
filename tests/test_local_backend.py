"""The local backend: SageMaker's tuning API shape over real, detached processes and real training."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError
from conftest import write_image_folders

from model_selection.backends.local import LocalSageMakerClient
from model_selection.local.jobstore import now
from model_selection.local.strategy import StrategyError, plan_trials
from model_selection.metrics import metric_definitions
from model_selection.tuning_request import LOCAL_ROLE_ARN, build_tuning_request, learning_rate_values

TINY_STATIC = {"model_id": "test_efficientnet", "pretrained": "false", "image_size": "16", "batch_size": "8",
               "epochs": "3", "train_only_top_layer": "False"}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    return {
        "training": write_image_folders(tmp_path / "data" / "training", 3, 8, seed=1),
        "validation": write_image_folders(tmp_path / "data" / "validation", 3, 4, seed=2),
        "test": write_image_folders(tmp_path / "data" / "test", 3, 4, seed=3),
    }


@pytest.fixture
def client(tmp_path: Path) -> LocalSageMakerClient:
    return LocalSageMakerClient(tmp_path / "jobs")


def request(name: str, channels: dict[str, Path], static: dict | None = None, rates=(1.0, 0.2), root: Path | None = None):
    return build_tuning_request(
        name,
        static_hyperparameters={**TINY_STATIC, **(static or {})},
        learning_rates=learning_rate_values(0.01, rates),
        channels={channel: path.as_uri() for channel, path in channels.items()},
        role_arn=LOCAL_ROLE_ARN,
        output_path=(root or Path("/tmp")).as_uri(),
        metric_definitions=metric_definitions(3, False),  # the data sets here have 3 classes
    )


def wait_for(client: LocalSageMakerClient, name: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if description["HyperParameterTuningJobStatus"] not in ("InProgress", "Stopping"):
            return description
        time.sleep(0.5)
    raise AssertionError(f"{name} did not finish in {timeout} s")


def wait_until_training(client: LocalSageMakerClient, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        running = [job for job in jobs["TrainingJobSummaries"] if job["TrainingJobStatus"] == "InProgress"]
        if running:
            log = client.store.training_dir(running[0]["TrainingJobName"]) / "log.txt"
            if "Epoch 1/" in log.read_text():
                return running[0]["TrainingJobName"]
        time.sleep(0.3)
    raise AssertionError(f"no trial of {name} started training in {timeout} s")


def trainer_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "model_selection.local.train " in command and marker in command:
            found.append(process)
    return found


def trainers_running_together(marker: str) -> int:
    """Trainers alive at one instant: those a scan found that still run once it is over. A scan reads one process
    after another, so a trainer that ended mid-scan and the one that took its slot would both be in it; each kept
    here started before the scan ended and runs at its check, so all of them ran at the first check. A child a
    trainer forks has its command line until it execs: it is not another trainer."""
    found = trainer_processes(marker)
    pids = {process.pid for process in found}

    def running_trainer(process: psutil.Process) -> bool:
        try:
            return (process.ppid() not in pids and process.is_running()
                    and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False

    return sum(running_trainer(process) for process in found)


def test_grid_runs_exactly_the_two_learning_rates_and_picks_the_better(client, data, tmp_path):
    client.create_hyper_parameter_tuning_job(**request("grid-two-rates", data))
    description = wait_for(client, "grid-two-rates")
    assert description["HyperParameterTuningJobStatus"] == "Completed"
    assert description["TrainingJobStatusCounters"]["Completed"] == 2
    assert description["ObjectiveStatusCounters"] == {"Succeeded": 2, "Pending": 0, "Failed": 0}
    trials = client.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName="grid-two-rates")
    rates = sorted(trial["TunedHyperParameters"]["learning_rate"] for trial in trials["TrainingJobSummaries"])
    assert rates == ["0.002", "0.01"]
    scores = {trial["TrainingJobName"]: trial["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
              for trial in trials["TrainingJobSummaries"]}
    best = description["BestTrainingJob"]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == max(scores.values())
    assert scores[best["TrainingJobName"]] == max(scores.values())
    assert description["CreationTime"].tzinfo is not None


def test_final_metric_data_list_holds_every_metric_the_trainer_printed(client, data):
    client.create_hyper_parameter_tuning_job(**request("all-metrics", data, rates=(1.0,)))
    best = wait_for(client, "all-metrics")["BestTrainingJob"]["TrainingJobName"]
    job = client.describe_training_job(TrainingJobName=best)
    assert job["TrainingJobStatus"] == "Completed"
    printed = json.loads((client.store.training_dir(best) / "model" / "metrics.json").read_text())["metrics"]
    final = {metric["MetricName"]: metric["Value"] for metric in job["FinalMetricDataList"]}
    assert set(final) == set(printed)
    assert {"test_accuracy", "test_throughput", "val_accuracy", "num_params"} <= set(final)
    for name, value in printed.items():
        assert final[name] == pytest.approx(value, rel=1e-6), name
    assert job["HyperParameters"]["_tuning_objective_metric"] == "val_accuracy"
    assert job["ModelArtifacts"]["S3ModelArtifacts"].startswith("file://")


def test_duplicate_name_raises_resource_in_use(client, data):
    client.create_hyper_parameter_tuning_job(**request("same-name", data, rates=(1.0,)))
    with pytest.raises(ClientError) as error:
        client.create_hyper_parameter_tuning_job(**request("same-name", data, rates=(1.0,)))
    assert error.value.response["Error"]["Code"] == "ResourceInUse"
    wait_for(client, "same-name")
    assert len(client.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="same-name")["TrainingJobSummaries"]) == 1


def test_machine_wide_cap_holds_while_trainers_run(client, data, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_SELECTION_MAX_TRAINERS", "2")
    names = [f"capped-{index}" for index in range(3)]
    observed: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            observed.append(trainers_running_together(str(client.store.root)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for name in names:
            client.create_hyper_parameter_tuning_job(**request(name, data))
        outcomes = [wait_for(client, name)["HyperParameterTuningJobStatus"] for name in names]
    finally:
        done.set()
        sampler.join()
    assert outcomes == ["Completed"] * 3
    assert max(observed) == 2  # six trials wanted to run at once; the cap of two held, and was reached


def test_trainers_share_the_cores_this_worker_may_use_at_most_its_thread_limit(monkeypatch):
    from model_selection.local.supervisor import trainer_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)  # a cpuset of 8 cores
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [trainer_threads(count) for count in (1, 3, 8, 16)] == [8, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert [trainer_threads(count) for count in (1, 3, 8)] == [2, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: the cores decide
    assert trainer_threads(1) == 8


def test_failed_trials_report_the_trainers_reason(client, tmp_path):
    one_class = {"training": write_image_folders(tmp_path / "one-class", 1, 4)}
    client.create_hyper_parameter_tuning_job(**request("bad-data", one_class))
    description = wait_for(client, "bad-data")
    assert description["HyperParameterTuningJobStatus"] == "Failed"
    assert "at least two are needed" in description["FailureReason"]
    assert description["TrainingJobStatusCounters"]["NonRetryableError"] == 2
    assert "BestTrainingJob" not in description
    trial = client.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName="bad-data")
    job = client.describe_training_job(TrainingJobName=trial["TrainingJobSummaries"][0]["TrainingJobName"])
    assert job["TrainingJobStatus"] == "Failed" and "DataError" in job["FailureReason"]


def test_a_killed_supervisor_leads_to_failed(client, data):
    client.create_hyper_parameter_tuning_job(**request("killed", data, static={"epochs": "200"}, rates=(1.0,)))
    trial = wait_until_training(client, "killed")
    state = client.store.read_state(client.store.tuning_dir("killed"))
    trainer_pid = client.store.read_state(client.store.training_dir(trial))["Pid"]
    os.kill(state["SupervisorPid"], signal.SIGKILL)
    time.sleep(0.5)
    description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="killed")
    assert description["HyperParameterTuningJobStatus"] == "Failed"
    assert "supervisor process" in description["FailureReason"] and "ended" in description["FailureReason"]
    assert client.describe_training_job(TrainingJobName=trial)["TrainingJobStatus"] == "Failed"
    psutil.wait_procs([psutil.Process(trainer_pid)], timeout=10) if psutil.pid_exists(trainer_pid) else None
    assert not psutil.pid_exists(trainer_pid) or psutil.Process(trainer_pid).status() == psutil.STATUS_ZOMBIE


def test_a_job_whose_supervisor_is_still_starting_is_in_progress_until_the_grace_ends(client, data):
    """Another process may describe a job between its creation and its supervisor recording a pid."""
    created = client.store.create_tuning_job("starting", request("starting", data), {
        "HyperParameterTuningJobName": "starting", "HyperParameterTuningJobStatus": "InProgress",
        "HyperParameterTuningJobArn": "arn:aws:sagemaker:local:000000000000:hyper-parameter-tuning-job/starting",
        "CreationTime": now(), "LastModifiedTime": now(), "TrainingJobNames": [], "SupervisorStartBy": time.time() + 60})
    assert created
    describe = client.describe_hyper_parameter_tuning_job
    assert describe(HyperParameterTuningJobName="starting")["HyperParameterTuningJobStatus"] == "InProgress"
    client.store.update_state(client.store.tuning_dir("starting"), lambda state: state.update(SupervisorStartBy=time.time() - 1))
    ended = describe(HyperParameterTuningJobName="starting")
    assert ended["HyperParameterTuningJobStatus"] == "Failed" and "supervisor process (pid None)" in ended["FailureReason"]


def test_stop_ends_stopped_and_terminates_the_trials(client, data):
    client.create_hyper_parameter_tuning_job(**request("stopped", data, static={"epochs": "200"}))
    trial = wait_until_training(client, "stopped")
    assert client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName="stopped") == {}
    described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="stopped")
    assert described["HyperParameterTuningJobStatus"] in ("Stopping", "Stopped")
    description = wait_for(client, "stopped", timeout=60)
    assert description["HyperParameterTuningJobStatus"] == "Stopped"
    assert client.describe_training_job(TrainingJobName=trial)["TrainingJobStatus"] == "Stopped"
    assert trainer_processes(str(client.store.root)) == []
    with pytest.raises(ClientError) as error:
        client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName="stopped")
    assert error.value.response["Error"]["Code"] == "ValidationException"


def test_trials_of_a_top_layer_job_share_one_feature_cache(client, data):
    client.create_hyper_parameter_tuning_job(**request("shared-cache", data, static={"train_only_top_layer": "True", "force_top_layer_on_random_weights": "True"}))
    assert wait_for(client, "shared-cache")["HyperParameterTuningJobStatus"] == "Completed"
    trials = client.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName="shared-cache")
    sources = sorted(
        json.loads((client.store.training_dir(t["TrainingJobName"]) / "model" / "metrics.json").read_text())["feature_cache"]
        for t in trials["TrainingJobSummaries"]
    )
    assert sources == ["computed", "loaded"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(HyperParameterTuningJobName="x" * 33), "HyperParameterTuningJobName"),
        (lambda r: r.update(HyperParameterTuningJobName="bad_name"), "HyperParameterTuningJobName"),
        (lambda r: r["HyperParameterTuningJobConfig"]["ResourceLimits"].update(MaxParallelTrainingJobs="2"),
         "Invalid type for parameter HyperParameterTuningJobConfig.ResourceLimits.MaxParallelTrainingJobs"),
        (lambda r: r["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"].update(MetricName="val_f1"),
         "objective metric 'val_f1' is not among the MetricDefinitions"),
        (lambda r: r["TrainingJobDefinition"]["StaticHyperParameters"].update(epochz="3"), "unknown hyperparameter 'epochz'"),
        (lambda r: r["TrainingJobDefinition"]["StaticHyperParameters"].pop("model_id"), "needs model_id"),
        (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"].append(
            {"Name": "momentum", "MinValue": "0.1", "MaxValue": "0.9"}), "Grid strategy takes categorical"),
        (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["CategoricalParameterRanges"][0].update(
            Values=["0.01", "-1"]), "learning_rate='-1'"),
        (lambda r: r["TrainingJobDefinition"]["InputDataConfig"][0]["DataSource"]["S3DataSource"].update(
            S3Uri="file:///nonexistent/training"), "is not a local folder"),
        (lambda r: r["HyperParameterTuningJobConfig"].update(Strategy="Bayesian"), "runs Grid and Random"),
    ],
)
def test_invalid_requests_are_rejected_before_anything_starts(client, data, change, message):
    invalid = request("rejected", data)
    change(invalid)
    with pytest.raises(ClientError) as error:
        client.create_hyper_parameter_tuning_job(**invalid)
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert message in error.value.response["Error"]["Message"]
    assert client.store.tuning_job_names() == []
    assert trainer_processes(str(client.store.root)) == []


def test_unknown_jobs_are_resource_not_found(client):
    with pytest.raises(ClientError) as error:
        client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="nothing-here")
    assert error.value.response["Error"]["Code"] == "ResourceNotFound"


def test_listing_filters_by_status_and_name(client, data, tmp_path):
    client.create_hyper_parameter_tuning_job(**request("listed-good", data, rates=(1.0,)))
    client.create_hyper_parameter_tuning_job(**request("listed-bad", {"training": write_image_folders(tmp_path / "one", 1, 3)}, rates=(1.0,)))
    wait_for(client, "listed-good"), wait_for(client, "listed-bad")
    def names(**filters):
        return [s["HyperParameterTuningJobName"] for s in client.list_hyper_parameter_tuning_jobs(**filters)["HyperParameterTuningJobSummaries"]]
    assert names() == ["listed-bad", "listed-good"]
    assert names(StatusEquals="Completed") == ["listed-good"]
    assert names(NameContains="bad") == ["listed-bad"]


def test_grid_and_random_strategies_plan_the_trials():
    grid = {"Strategy": "Grid", "ResourceLimits": {"MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"CategoricalParameterRanges": [{"Name": "learning_rate", "Values": ["0.1", "0.02"]},
                                                               {"Name": "optimizer", "Values": ["adam", "sgd"]}]}}
    assert len(plan_trials(grid)) == 4
    with pytest.raises(StrategyError, match="grid has 4 combinations"):
        plan_trials({**grid, "ResourceLimits": {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 1}})
    random_config = {"Strategy": "Random", "RandomSeed": 7, "ResourceLimits": {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 1},
                     "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
                                         "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "9"}]}}
    trials = plan_trials(random_config)
    assert trials == plan_trials(random_config) and len(trials) == 20
    assert all(0.0001 <= float(t["learning_rate"]) <= 0.1 and 2 <= int(t["epochs"]) <= 9 for t in trials)
    assert sum(float(t["learning_rate"]) < 0.01 for t in trials) >= 8  # log scale: most mass in the low decades
