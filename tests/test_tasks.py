"""The launch operator, the sensor and its trigger, names, the study and the results store, against real local jobs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from conftest import write_image_folders

from model_selection.backends.local import LocalSageMakerClient
from model_selection.naming import MAX_TUNING_JOB_NAME, NAME_PATTERN, study_prefix, tuning_job_name
from model_selection.operators import TuningJobLaunchOperator
from model_selection.planning import local_launch_spec
from model_selection.results import ModelHistory, ResultsStore, model_histories
from model_selection.sensors import TuningJobSensor
from model_selection.study import Study
from model_selection.triggers import TuningJobTrigger

TINY = {"pretrained": "false", "image_size": "16", "batch_size": "8", "train_only_top_layer": "False"}


@pytest.fixture
def study(tmp_path: Path) -> Study:
    data = tmp_path / "data"
    write_image_folders(data / "training", 3, 8, seed=1)
    write_image_folders(data / "validation", 3, 4, seed=2)
    parsed, problems = Study.parse(
        {"model_ids": ["test_resnet", "test_efficientnet"], "hyperparameters": TINY, "epochs": 2,
         "dataset": {"name": "tiny", "training": str(data / "training"), "validation": str(data / "validation")},
         "results_uri": str(tmp_path / "results")},
        tmp_path,
    )
    assert problems == []
    return parsed


def launch_for(study: Study, model_id: str, jobs_root: Path, max_concurrent: int = 10, **hyperparameters) -> dict:
    spec = local_launch_spec(study, model_id, str(jobs_root))
    spec["static_hyperparameters"].update(hyperparameters)
    return {
        "model_id": model_id,
        "job_name": tuning_job_name(study.dataset.name, study.config_hash, model_id),
        "spec": spec,
        "hook_params": {"backend": "local", "jobs_root": str(jobs_root)},
        "study_prefix": study_prefix(study.dataset.name, study.config_hash),
        "max_concurrent_tuning_jobs": max_concurrent,
    }


PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTEXT = {"dag": SimpleNamespace(dag_id="test-dag"), "run_id": "manual__test"}


def test_a_retried_launch_attaches_to_the_job_it_already_started(study, tmp_path):
    launch = launch_for(study, "test_resnet", tmp_path / "jobs")
    first = TuningJobLaunchOperator(task_id="launch", launch=launch).execute(dict(CONTEXT))
    context = dict(CONTEXT)
    second = TuningJobLaunchOperator(task_id="launch", launch=launch).execute(context)
    expected = {"job_name": launch["job_name"], "model_id": "test_resnet", "hook_params": launch["hook_params"],
                "launch_waits": 0, "launch_wait_seconds": 0.0, "launch_try_number": None}
    assert first == second == expected
    assert context["launch_status"] == "attached to the existing job (InProgress)"
    client = LocalSageMakerClient(tmp_path / "jobs")
    assert client.store.tuning_job_names() == [launch["job_name"]]
    client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=launch["job_name"])


def test_a_name_taken_by_another_model_is_refused_not_attached(study, tmp_path):
    launch = launch_for(study, "test_resnet", tmp_path / "jobs")
    TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    impostor = {**launch, "model_id": "test_efficientnet", "spec": launch_for(study, "test_efficientnet", tmp_path / "jobs")["spec"]}
    with pytest.raises(AirflowFailException, match="was not launched with this model and configuration"):
        TuningJobLaunchOperator(task_id="launch", launch=impostor).execute(CONTEXT)
    LocalSageMakerClient(tmp_path / "jobs").stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=launch["job_name"])


def test_create_or_attach_attaches_when_the_name_was_taken_by_its_own_earlier_try(study, tmp_path):
    from model_selection.hooks import LocalTuningJobHook, NameTaken
    from model_selection.tuning_request import request_for_launch

    hook = LocalTuningJobHook(str(tmp_path / "jobs"))
    request = request_for_launch(launch_for(study, "test_resnet", tmp_path / "jobs"))
    assert hook.create_or_attach(request) == (False, "InProgress")
    assert hook.create_or_attach(request) == (True, "InProgress")  # ResourceInUse, then the same job found
    other = request_for_launch({**launch_for(study, "test_efficientnet", tmp_path / "jobs"),
                                "job_name": request["HyperParameterTuningJobName"]})
    with pytest.raises(NameTaken):
        hook.create_or_attach(other)
    assert hook.stop(request["HyperParameterTuningJobName"]) is True


def test_the_job_identity_ignores_what_the_service_adds_and_sees_the_model_channel(study, tmp_path):
    from model_selection.hooks import NameTaken, check_same_job
    from model_selection.tuning_request import request_for_launch

    request = request_for_launch(launch_for(study, "test_resnet", tmp_path / "jobs"))
    described = json.loads(json.dumps(request))
    described["TrainingJobDefinition"]["StaticHyperParameters"]["_tuning_objective_metric"] = "val_accuracy"
    described.pop("Tags", None)  # DescribeHyperParameterTuningJob returns no tags
    check_same_job(described, request)  # what SageMaker adds to a description is not a difference
    described["TrainingJobDefinition"]["InputDataConfig"].append(
        {"ChannelName": "model", "DataSource": {"S3DataSource": {"S3Uri": "s3://other-model/weights.tar.gz"}}})
    check_same_job(described, request)  # a channel the request does not set is not compared either
    request["TrainingJobDefinition"]["InputDataConfig"].append(
        {"ChannelName": "model", "DataSource": {"S3DataSource": {"S3Uri": "s3://this-model/weights.tar.gz"}}})
    with pytest.raises(NameTaken, match="input channels differ"):  # same hyperparameters, another model's weights
        check_same_job(described, request)


def test_launch_rechecks_capacity_at_a_fixed_interval_while_the_study_has_its_limit_in_flight(study, tmp_path):
    busy = launch_for(study, "test_resnet", tmp_path / "jobs", max_concurrent=1, epochs="200")
    TuningJobLaunchOperator(task_id="launch", launch=busy).execute(CONTEXT)
    waiting = launch_for(study, "test_efficientnet", tmp_path / "jobs", max_concurrent=1)
    operator = TuningJobLaunchOperator(task_id="launch", launch=waiting, wait_seconds=60, capacity_check_seconds=5)
    context = dict(CONTEXT)
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    after = time.time()
    assert deferred.value.method_name == "execute"
    assert deferred.value.kwargs["waits"] == 1
    assert before <= deferred.value.kwargs["waiting_since"] <= after
    # the check is due capacity_check_seconds after the call (bracketed by the call, so load cannot fail it)
    assert before + 4.999 <= deferred.value.trigger.moment.timestamp() <= after + 5  # datetime keeps microseconds
    assert context["launch_status"] == "waiting (capacity): wait 1, 0 s so far"
    client = LocalSageMakerClient(tmp_path / "jobs")
    assert client.store.tuning_job_names() == [busy["job_name"]]  # nothing launched while waiting
    time.sleep(1)
    before = time.time()
    with pytest.raises(TaskDeferred) as again:  # the same short interval; the start of waiting is kept
        operator.execute(context, **deferred.value.kwargs)
    after = time.time()
    assert again.value.kwargs == {"waits": 2, "waiting_since": deferred.value.kwargs["waiting_since"], "kind": "capacity"}
    assert before + 4.999 <= again.value.trigger.moment.timestamp() <= after + 5  # datetime keeps microseconds
    client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=busy["job_name"])
    assert run_trigger(TuningJobTrigger(busy["job_name"], busy["hook_params"], 0.2, time.time() + 120))["outcome"] == "stopped"
    launched = operator.execute(context, **again.value.kwargs)
    assert launched["launch_waits"] == 2 and launched["launch_wait_seconds"] >= 1
    assert context["launch_status"].startswith("launched after 2 waits (")
    client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=waiting["job_name"])


def run_trigger(trigger: TuningJobTrigger) -> dict:
    async def first_event():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first_event())


def test_trigger_and_sensor_report_success_and_failure(study, tmp_path):
    good = launch_for(study, "test_resnet", tmp_path / "jobs")
    bad = launch_for(study, "test_convnext", tmp_path / "jobs")  # crashes on 16-pixel images
    for launch in (good, bad):
        TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    deadline = time.time() + 300
    success = run_trigger(TuningJobTrigger(good["job_name"], good["hook_params"], 0.5, deadline))
    failure = run_trigger(TuningJobTrigger(bad["job_name"], bad["hook_params"], 0.5, deadline))
    assert success["outcome"] == "success" and failure["outcome"] == "failed"
    assert "Kernel size can't be greater" in failure["reason"]
    context = dict(CONTEXT)
    sensor = TuningJobSensor(task_id="wait", job=good)
    assert sensor.execute_complete(context, success) == {"job_name": good["job_name"], "job_status": "Completed",
                                                         "throttled_describes": 0, "wait_try_number": None}
    assert context["job_status"] == "Completed"
    with pytest.raises(AirflowFailException, match="Kernel size"):
        TuningJobSensor(task_id="wait", job=bad).execute_complete(context, failure)
    assert context["job_status"] == "Failed"
    poking = TuningJobSensor(task_id="wait", job=bad, deferrable=False)
    with pytest.raises(AirflowFailException, match="failed"):
        poking.poke(CONTEXT)
    assert TuningJobSensor(task_id="wait", job=good, deferrable=False).poke(CONTEXT) is True


@pytest.mark.parametrize(("given", "set_later", "backend", "expected"), [
    (None, None, "local", 5.0), (None, None, "sagemaker", 30.0), (2, None, "local", 2), (None, 1, "sagemaker", 1)])
def test_the_wait_polls_at_its_backends_default_unless_an_interval_was_set(given, set_later, backend, expected):
    job = {"job_name": "j", "model_id": "m", "hook_params": {"backend": backend}}
    sensor = TuningJobSensor(task_id="wait", job=job, **({"poke_interval": given} if given else {}))
    if set_later:
        sensor.poke_interval = set_later  # as a cluster policy sets it, once the operator is made
    assert sensor.resolve_poke_interval() == expected


def test_trigger_times_out_and_the_sensor_stops_the_job(study, tmp_path):
    slow = launch_for(study, "test_resnet", tmp_path / "jobs", epochs="200")
    TuningJobLaunchOperator(task_id="launch", launch=slow).execute(CONTEXT)
    event = run_trigger(TuningJobTrigger(slow["job_name"], slow["hook_params"], 0.2, time.time() + 1))
    assert event["outcome"] == "timeout"
    from airflow.sdk.exceptions import AirflowSensorTimeout

    with pytest.raises(AirflowSensorTimeout):  # as the task runner resumes it with the trigger's event
        TuningJobSensor(task_id="wait", job=slow).resume_execution("execute_complete", {"event": event}, dict(CONTEXT))
    client = LocalSageMakerClient(tmp_path / "jobs")
    assert wait_for_status(client, slow["job_name"], ("Stopped",)) == "Stopped"


def wait_for_status(client: LocalSageMakerClient, name: str, wanted: tuple[str, ...], seconds: float = 300) -> str:
    deadline = time.time() + seconds
    while True:
        status = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)["HyperParameterTuningJobStatus"]
        if status in wanted or time.time() > deadline:
            return status
        time.sleep(0.2)


def test_every_other_end_of_a_wait_without_its_job_stops_the_job(study, tmp_path):
    """Poke-mode timeout, Airflow's own deferral timeout, a kill while poking: the job is stopped each time."""
    from airflow.sdk.bases.operator import TriggerFailureReason
    from airflow.sdk.exceptions import AirflowSensorTimeout

    client = LocalSageMakerClient(tmp_path / "jobs")
    slow = [launch_for(study, model_id, tmp_path / "jobs", epochs="500", early_stopping="False") for model_id in ("test_resnet", "test_efficientnet")]
    for launch in slow:
        TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    poking = TuningJobSensor(task_id="wait", job=slow[0], deferrable=False, poke_interval=0.2, timeout=1)
    with pytest.raises(AirflowSensorTimeout):
        poking.execute(dict(CONTEXT))
    assert wait_for_status(client, slow[0]["job_name"], ("Stopped",)) == "Stopped"
    deferred = TuningJobSensor(task_id="wait", job=slow[1])
    with pytest.raises(AirflowSensorTimeout):
        deferred.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, dict(CONTEXT))
    assert wait_for_status(client, slow[1]["job_name"], ("Stopped",)) == "Stopped"
    with pytest.raises(TaskDeferred) as deferral:  # the deferral carries the timeout for Airflow to enforce
        TuningJobSensor(task_id="wait", job=slow[1], timeout=3600, poke_interval=30).execute(dict(CONTEXT))
    assert deferral.value.timeout.total_seconds() == 3600 + 4 * 30
    assert deferral.value.trigger.stop_on_kill is True


def test_the_trigger_stops_its_job_when_a_user_kills_the_waiting_task(study, tmp_path):
    client = LocalSageMakerClient(tmp_path / "jobs")
    slow = launch_for(study, "test_resnet", tmp_path / "jobs", epochs="500", early_stopping="False")
    TuningJobLaunchOperator(task_id="launch", launch=slow).execute(CONTEXT)
    keeping = TuningJobTrigger(slow["job_name"], slow["hook_params"], 0.2, time.time() + 60, stop_on_kill=False)
    asyncio.run(keeping.on_kill())
    assert client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=slow["job_name"])[
        "HyperParameterTuningJobStatus"] == "InProgress"
    asyncio.run(TuningJobTrigger(slow["job_name"], slow["hook_params"], 0.2, time.time() + 60).on_kill())
    assert wait_for_status(client, slow["job_name"], ("Stopped",)) == "Stopped"


def test_trigger_serializes_to_an_importable_class():
    classpath, kwargs = TuningJobTrigger("job", {"backend": "local", "jobs_root": "/x"}, 30, 1e10).serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_names_are_valid_stable_and_collision_free_over_every_timm_model():
    import timm

    model_ids = timm.list_models(pretrained=True)
    assert len(model_ids) > 1500
    names = [tuning_job_name("caltech-256", "0123456789ab", model_id) for model_id in model_ids]
    assert all(NAME_PATTERN.match(name) and len(name) <= MAX_TUNING_JOB_NAME for name in names)
    assert len(set(names)) == len(names)
    assert names[0] == tuning_job_name("caltech-256", "0123456789ab", model_ids[0])
    assert tuning_job_name("caltech-256", "0123456789ab", model_ids[0], previous_attempts=1) != names[0]
    assert tuning_job_name("other-dataset", "0123456789ab", model_ids[0]) != names[0]
    assert all(name.startswith(study_prefix("caltech-256", "0123456789ab")) for name in names)


def test_a_curated_model_list_replaces_model_ids_and_local_settings_stay_local():
    listed = [line.split("#")[0].strip() for line in (PROJECT_ROOT / "include" / "model_lists" / "local-tiny.txt")
              .read_text().splitlines() if line.split("#")[0].strip()]
    form = {"model_ids": ["resnet18"], "model_list": "local-tiny", "hyperparameters": {"epochs_hint": "1"},
            "local_hyperparameters": {"pretrained": "false"},
            "dataset": {"name": "d", "training": "include/datasets/digits/training"}}
    local, _ = Study.parse(form, PROJECT_ROOT)
    assert list(local.model_ids) == listed and "resnet18" not in local.model_ids
    assert local.hyperparameters == {"pretrained": "false", "epochs_hint": "1"}
    remote, _ = Study.parse({**form, "backend": "sagemaker",
                             "dataset": {"name": "d", "training": "s3://bucket/d/training"}}, PROJECT_ROOT)
    assert remote.hyperparameters == {"epochs_hint": "1"}  # local_hyperparameters never reach SageMaker
    assert remote.config_hash != local.config_hash


def test_study_lists_every_problem_at_once(tmp_path):
    _, problems = Study.parse({"model_ids": [], "dataset": {"name": "bad name!", "training": "x", "colour": 1},
                               "learning_rate_multipliers": [0], "epochs": 0, "backend": "gcp",
                               "model_list": "../../etc/passwd", "objectives": ["test_accuracy:sideways"],
                               "constraints": ["num_params<<5"], "local_usd_per_hour": -1}, tmp_path)
    text = "\n".join(problems)
    for expected in ("backend 'gcp'", "model list is empty", "dataset name 'bad name!'", "unknown fields ['colour']",
                     "multiplier 0 is not a positive number", "epochs must be an integer of at least 1",
                     "model_list '../../etc/passwd' is not a list name",
                     "objective 'test_accuracy:sideways': direction must be 'max' or 'min'",
                     "constraint 'num_params<<5'", "local_usd_per_hour must be a number of at least 0"):
        assert expected in text


def test_results_store_keeps_the_latest_row_per_model_and_counts_only_ended_attempts(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    row = {"dataset": "d", "model_id": "m", "config_hash": "c"}
    store.append([{**row, "status": "Failed", "tuning_job_name": "j0", "finished_at": "2026-01-01"}])
    store.append([{**row, "status": "InProgress", "tuning_job_name": "j1", "finished_at": "2026-01-02"}])
    assert model_histories(store.read_all(), "d", "c")["m"] == ModelHistory(1, False, "j1")  # attach to j1, not a third job
    store.append([{**row, "status": "Completed", "tuning_job_name": "j1", "finished_at": "2026-01-03"}])
    assert [row["status"] for row in store.read_latest()] == ["Completed"]
    assert model_histories(store.read_all(), "d", "c")["m"] == ModelHistory(1, True, None)
    assert model_histories(store.read_all(), "d", "other") == {}
    unwritable = ResultsStore("/proc/no-such-place")
    with pytest.raises(OSError):
        unwritable.check_writable()
    assert json.loads(json.dumps(store.read_all()))  # rows are plain JSON


def test_a_batch_written_twice_adds_no_rows_and_a_malformed_line_is_skipped_by_name(tmp_path, caplog):
    store = ResultsStore(str(tmp_path / "store"))
    rows = [{"dataset": "d", "model_id": f"m{k}", "config_hash": "c", "status": "Completed"} for k in range(3)]
    first = store.append(rows, run_id="run1", batch="collected")
    assert store.append(rows, run_id="run1", batch="collected") == first  # a retried collection
    assert len(store.read_all()) == 3
    with open(first[0], "a") as stream:
        stream.write('{"dataset": "d", "model_id": "torn\n')
    with caplog.at_level("WARNING"):
        assert len(store.read_all()) == 3
    assert f"line 4 of {first[0]}" in caplog.text
