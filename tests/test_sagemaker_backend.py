"""The SageMaker backend against a real HTTP endpoint (moto's server) and offline JumpStart metadata."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from botocore.awsrequest import AWSResponse
from fake_sagemaker import REGION, ROLE, Throttle, _Raw, jumpstart_log, serving

from model_selection.backends import jumpstart
from model_selection.backends.api import CHECKED_REQUESTS_LOG, RequestRefused, operation_for_method, request_problems
from model_selection.collection import THROUGHPUT_MEASURES, collect_row
from model_selection.dag_tasks import plan_task
from model_selection.hooks import tuning_job_hook
from model_selection.operators import TuningJobLaunchOperator
from model_selection.sensors import TuningJobSensor
from model_selection.triggers import TuningJobTrigger
from model_selection.tuning_request import build_tuning_request

MODELS = [f"tensorflow-ic-imagenet-mobilenet-v2-{width}-224-classification-4" for width in ("100", "075", "050", "035")]
CONTEXT = {"dag": SimpleNamespace(dag_id="test-dag"), "run_id": "manual__test"}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch):
    with serving(tmp_path, monkeypatch, MODELS, failing=("-035-",), missing_metrics=("test_throughput",)) as service:
        yield service


def params(**overrides) -> dict:
    return {
        "backend": "sagemaker",
        "model_ids": MODELS[:3],
        "dataset": {"name": "pets", "training": "s3://study-data/pets/training",
                    "validation": "s3://study-data/pets/validation", "test": "s3://study-data/pets/test"},
        "hyperparameters": {},
        "role_arn": ROLE,
        "output_path": "s3://study-data/output",
        "max_concurrent_tuning_jobs": 10,
        **overrides,
    }


def plan(tmp_path: Path, **overrides) -> list[dict]:
    return plan_task({**params(**overrides), "results_uri": str(tmp_path / "results")}, tmp_path)["launches"]


def test_the_tuning_request_is_the_notebooks_and_botocore_accepts_it(fake, tmp_path):
    launches = plan(tmp_path)
    assert [launch["model_id"] for launch in launches] == MODELS[:3]
    for launch in launches:
        request = build_tuning_request(launch["job_name"], **launch["spec"])
        assert request_problems("CreateHyperParameterTuningJob", request) == []
        config, definition = request["HyperParameterTuningJobConfig"], request["TrainingJobDefinition"]
        assert config["Strategy"] == "Grid"
        assert config["ParameterRanges"]["CategoricalParameterRanges"] == [{"Name": "learning_rate", "Values": ["0.001", "0.0002"]}]
        assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2}
        assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "val_accuracy"}
        static = definition["StaticHyperParameters"]
        assert static["epochs"] == "10" and static["early_stopping"] == "True" and static["early_stopping_patience"] == "3"
        assert static["sagemaker_program"] == "transfer_learning.py"
        assert static["sagemaker_submit_directory"].startswith("s3://jumpstart-cache-prod-us-west-2/")
        assert "learning_rate" not in static and static["batch_size"] == "32"
        channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]}
        assert channels["training"] == "s3://study-data/pets/training/" and launch["model_id"] in channels["model"]
        assert definition["AlgorithmSpecification"]["TrainingImage"].startswith("763104351884.dkr.ecr.us-west-2")
        assert definition["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
        names = {d["Name"] for d in definition["AlgorithmSpecification"]["MetricDefinitions"]}
        # two classes (cat, dog), not binary_mode: loss and accuracy, no top-5, no binary counts
        assert {"val_accuracy", "test_accuracy", "test_throughput", "num_params"} <= names
        assert not names & {"test_top_5_accuracy", "test_auc", "train_true_pos"}
        tags = {tag["Key"]: tag["Value"] for tag in request["Tags"]}
        assert tags["sagemaker-sdk:jumpstart-model-id"] == launch["model_id"] == launch["model_id"]
        assert tags["sagemaker-sdk:jumpstart-model-version"] == launch["model_version"]


def test_the_hook_refuses_what_the_service_model_refuses_before_sending_it(fake, tmp_path, hooked, sagemaker_contract):
    """Every operation the hook uses is checked in the product, before botocore sends it: moto, which
    would accept all of these, never sees them; well-formed requests go through."""
    import copy
    import inspect

    from model_selection import hooks
    from model_selection.metrics import all_metric_definitions

    launch = plan(tmp_path, model_ids=MODELS[:1])[0]
    sent: list[str] = []  # what the hook's client puts on the wire (it is made after this)
    hooked.append(lambda request, event_name, **kwargs: sent.append(event_name.rsplit(".", 1)[-1]))
    hook = tuning_job_hook(launch["hook_params"])
    sagemaker_contract.unhook(hook.conn)  # the suite's own check off: what keeps these off the wire is the product's
    request = build_tuning_request(launch["job_name"], **launch["spec"])
    definition = request["TrainingJobDefinition"]
    forty_one = copy.deepcopy(request)
    forty_one["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] = all_metric_definitions()
    name_pattern = r"does not match the pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}"
    refused = {  # each operation the hook sends, with a request the model refuses, and the problem named
        "CreateHyperParameterTuningJob": [
            (lambda: hook.create_or_attach({**request, "HyperParameterTuningJobName": "x" * 33}),
             "HyperParameterTuningJobName: 33 characters, at most 32 allowed"),
            (lambda: hook.create_or_attach(forty_one),
             "TrainingJobDefinition.AlgorithmSpecification.MetricDefinitions: 41 items, at most 40 allowed")],
        "DescribeHyperParameterTuningJob": [
            (lambda: hook.describe("bad_name"), f"HyperParameterTuningJobName: 'bad_name' {name_pattern}")],
        "StopHyperParameterTuningJob": [  # not taken for "ended already"
            (lambda: hook.stop("bad_name"), f"HyperParameterTuningJobName: 'bad_name' {name_pattern}")],
        "ListHyperParameterTuningJobs": [
            (lambda: hook.count_in_flight("bad_prefix"),
             r"NameContains: 'bad_prefix' does not match the pattern [a-zA-Z0-9\-]+")],
        "DescribeTrainingJob": [
            (lambda: hook.describe_training_job("a" * 64), "TrainingJobName: 64 characters, at most 63 allowed")],
        "ListTrainingJobsForHyperParameterTuningJob": [
            (lambda: hook.list_training_jobs("bad_name"), f"HyperParameterTuningJobName: 'bad_name' {name_pattern}")],
        "CreateTrainingJob": [  # the screen's job: a training job's request is a tuning job's definition, named
            (lambda: hook.create_or_attach_training_job({
                "TrainingJobName": "x" * 64, "HyperParameters": definition["StaticHyperParameters"],
                **{key: definition[key] for key in ("AlgorithmSpecification", "RoleArn", "InputDataConfig",
                                                    "OutputDataConfig", "ResourceConfig", "StoppingCondition")}}),
             "TrainingJobName: 64 characters, at most 63 allowed")],
        "StopTrainingJob": [  # not taken for "ended already"
            (lambda: hook.stop_training_job("bad_name"),
             "TrainingJobName: 'bad_name' does not match the pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")],
    }
    used = {operation_for_method(method) for method in re.findall(r"self\.conn\.(\w+)", inspect.getsource(hooks))}
    used.discard(None)  # the local client's training_job_log is no operation of the service
    assert used == set(refused)  # an operation the hook starts using needs its case here
    for operation, cases in refused.items():
        for call, problem in cases:
            with pytest.raises(RequestRefused) as error:
                call()
            assert str(error.value).startswith(f"SageMaker would refuse this {operation} request: ")
            assert problem in error.value.problems, error.value.problems
            assert error.value.response["Error"]["Code"] == "ValidationException"
    assert sent == []  # not one of them left this process
    assert fake.backend.hyper_parameter_tuning_jobs == {}
    assert hook.create_or_attach(request) == (False, "InProgress")  # a well-formed request goes through
    assert hook.describe(launch["job_name"])["HyperParameterTuningJobName"] == launch["job_name"]
    assert hook.count_in_flight(launch["study_prefix"]) == 1
    assert sent == ["CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob", "ListHyperParameterTuningJobs"]
    assert [job["HyperParameterTuningJobName"] for job in fake.client("sagemaker").list_hyper_parameter_tuning_jobs()[
        "HyperParameterTuningJobSummaries"]] == [launch["job_name"]]  # moto's server holds the good job only

    async def describe_async(name: str) -> dict:  # the hook's aiobotocore client is held too
        async with await hook.get_async_conn() as client:
            return await client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)

    with pytest.raises(RequestRefused, match=re.escape(f"HyperParameterTuningJobName: 'bad_name' {name_pattern}")):
        asyncio.run(describe_async("bad_name"))
    assert asyncio.run(describe_async(launch["job_name"]))["HyperParameterTuningJobName"] == launch["job_name"]


def form_defaults() -> dict:
    """The trigger form's values as a user first sees them (the DAG's Params)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag_file", Path(__file__).parents[1] / "dags" /
                                                  "image_classification_model_selection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: param.value for name, param in module.PARAMS.items()}


def test_the_form_plans_sagemaker_when_only_what_sagemaker_needs_is_filled(fake, tmp_path):
    form = {**form_defaults(), "backend": "sagemaker", "model_list": None, "model_ids": MODELS[:2],
            "role_arn": ROLE, "output_path": "s3://study-data/output", "results_uri": str(tmp_path / "results"),
            "dataset": params()["dataset"]}
    assert form["local_hyperparameters"]  # the local defaults are there, and must not matter
    launches = plan_task(form, tmp_path)["launches"]
    assert [launch["model_id"] for launch in launches] == MODELS[:2]
    for launch in launches:
        static = launch["spec"]["static_hyperparameters"]
        assert not (set(form["local_hyperparameters"]) - {"train_only_top_layer"}) & set(static)
        assert static["train_only_top_layer"] == "True"  # JumpStart's default, not the local form's "False"


def test_plan_names_every_sagemaker_problem_at_once(fake, tmp_path):
    bad = params(model_ids=[MODELS[0], "tensorflow-ic-no-such-model"], instance_type="ml.p3.2xlarge",
                 hyperparameters={"learning_rat": "0.1"}, role_arn="", output_path="file:///tmp")
    bad["dataset"]["validation"] = "s3://study-data/pets/nothing-here"
    with pytest.raises(AirflowFailException) as error:
        plan_task({**bad, "results_uri": str(tmp_path / "results")}, tmp_path)
    text = str(error.value)
    assert "no SageMaker execution role" in text and "output_path 'file:///tmp' must be an s3://" in text
    bad.update(role_arn=ROLE, output_path="s3://study-data/output")
    with pytest.raises(AirflowFailException) as error:
        plan_task({**bad, "results_uri": str(tmp_path / "results")}, tmp_path)
    text = str(error.value)
    assert "unknown JumpStart model 'tensorflow-ic-no-such-model'" in text
    assert "s3://study-data/pets/nothing-here is empty or does not exist" in text
    assert "hyperparameters ['learning_rat'] are not among the model's" in text
    with pytest.raises(AirflowFailException, match="does not support training instance type 'ml.t3.medium'"):
        plan_task({**params(instance_type="ml.t3.medium"), "results_uri": str(tmp_path / "results")}, tmp_path)


def wait_with_trigger(job: dict, poll: float = 0.2, timeout: float = 120) -> dict:
    trigger = TuningJobTrigger(job["job_name"], job["hook_params"], poll, time.time() + timeout)

    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_throttling_on_create_and_describe_never_fails_a_model_or_launches_twice(fake, tmp_path, hooked):
    throttle = Throttle(("CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob"))
    hooked.append(throttle)
    launches = plan(tmp_path, model_ids=MODELS[:3])
    jobs = [TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT) for launch in launches]
    events = [wait_with_trigger(job) for job in jobs]
    assert [event["outcome"] for event in events] == ["success"] * 3
    assert throttle.throttled["CreateHyperParameterTuningJob"] >= 1 and throttle.throttled["DescribeHyperParameterTuningJob"] >= 1
    assert sorted(fake.backend.hyper_parameter_tuning_jobs) == sorted(launch["job_name"] for launch in launches)


def test_exhausted_retries_on_throttling_defer_the_launch_instead_of_failing(fake, tmp_path, hooked, monkeypatch):
    connection = json.loads(fake.connection())
    connection["extra"]["config_kwargs"] = {"retries": {"mode": "standard", "total_max_attempts": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    hooked.append(Throttle(("CreateHyperParameterTuningJob",)))
    launch = plan(tmp_path, model_ids=MODELS[:1])[0]
    with pytest.raises(TaskDeferred) as deferred:
        TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    assert deferred.value.kwargs["waits"] == 1
    assert fake.backend.hyper_parameter_tuning_jobs == {}
    TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT, **deferred.value.kwargs)  # the retry
    assert list(fake.backend.hyper_parameter_tuning_jobs) == [launch["job_name"]]


def test_resource_limit_exceeded_makes_the_launch_wait(fake, tmp_path, hooked):
    full = [True]  # the account's quota is taken until the first job has ended (not left to the fake's timing)

    def quota(request, event_name: str, **kwargs):
        if event_name.endswith("CreateHyperParameterTuningJob") and fake.backend.hyper_parameter_tuning_jobs and full[0]:
            body = json.dumps({"__type": "ResourceLimitExceeded",
                               "message": "The account-level service limit for tuning jobs is 1"}).encode()
            return AWSResponse(request.url, 400, {}, _Raw(body))
        return None

    hooked.append(quota)
    first, second = plan(tmp_path, model_ids=MODELS[:2])
    TuningJobLaunchOperator(task_id="launch", launch=first).execute(CONTEXT)
    with pytest.raises(TaskDeferred):
        TuningJobLaunchOperator(task_id="launch", launch=second).execute(CONTEXT)
    assert list(fake.backend.hyper_parameter_tuning_jobs) == [first["job_name"]]
    assert wait_with_trigger({"job_name": first["job_name"], "hook_params": first["hook_params"]})["outcome"] == "success"
    full[0] = False
    TuningJobLaunchOperator(task_id="launch", launch=second).execute(CONTEXT, waits=1, waiting_since=time.time() - 60)
    assert sorted(fake.backend.hyper_parameter_tuning_jobs) == sorted([first["job_name"], second["job_name"]])


def test_a_quota_below_one_jobs_need_fails_the_launch_at_once_with_the_services_message(fake, tmp_path, hooked):
    message = ("The account-level service limit 'ml.g4dn.xlarge for training job usage' is 0 Instances, with current "
               "utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to "
               "request an increase for this quota.")

    def no_quota(request, event_name: str, **kwargs):
        if event_name.endswith("CreateHyperParameterTuningJob"):
            body = json.dumps({"__type": "ResourceLimitExceeded", "message": message}).encode()
            return AWSResponse(request.url, 400, {}, _Raw(body))
        return None

    hooked.append(no_quota)
    launch = plan(tmp_path, model_ids=MODELS[:1])[0]
    with pytest.raises(AirflowFailException, match="can never fit this job.*is 0 Instances"):
        TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    assert fake.backend.hyper_parameter_tuning_jobs == {}


def test_waiting_for_capacity_is_bounded_and_names_the_quota_and_time_waited(fake, tmp_path, hooked):
    def quota(request, event_name: str, **kwargs):
        if event_name.endswith("CreateHyperParameterTuningJob"):
            body = json.dumps({"__type": "ResourceLimitExceeded", "message": "The account-level service limit "
                               "'ml.g4dn.xlarge for training job usage' is 2 Instances, with current utilization of 2 "
                               "Instances and a request delta of 1 Instances."}).encode()
            return AWSResponse(request.url, 400, {}, _Raw(body))
        return None

    hooked.append(quota)
    launch = {**plan(tmp_path, model_ids=MODELS[:1])[0], "max_capacity_wait_seconds": 3600}
    with pytest.raises(TaskDeferred) as deferred:  # a quota that frees up later: wait
        TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    with pytest.raises(AirflowFailException, match=r"after waiting 1\.0 h .*ml\.g4dn\.xlarge for training job usage"):
        TuningJobLaunchOperator(task_id="launch", launch=launch).execute(
            CONTEXT, waits=deferred.value.kwargs["waits"], waiting_since=time.time() - 3601)


def test_failed_and_console_stopped_jobs_fail_the_wait_with_their_reason(fake, tmp_path):
    good, failing = plan(tmp_path, model_ids=[MODELS[0], MODELS[3]])
    fake.stop_from_console(good["job_name"])  # the driver stops it as soon as it is in progress
    jobs = [TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT) for launch in (good, failing)]
    failed = wait_with_trigger(jobs[1])
    assert failed["outcome"] == "failed" and "CUDA out of memory" in failed["reason"]
    with pytest.raises(AirflowFailException, match="CUDA out of memory"):
        TuningJobSensor(task_id="wait", job=jobs[1]).execute_complete(CONTEXT, failed)
    stopped = wait_with_trigger(jobs[0])
    assert stopped["outcome"] == "stopped"
    with pytest.raises(AirflowFailException, match="was stopped"):
        TuningJobSensor(task_id="wait", job=jobs[0]).execute_complete(CONTEXT, stopped)


def test_collected_row_holds_the_best_training_jobs_metrics(fake, tmp_path):
    planned = plan_task({**params(model_ids=MODELS[:1]), "results_uri": str(tmp_path / "results")}, tmp_path)
    launch = planned["launches"][0]
    job = TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    assert wait_with_trigger(job)["outcome"] == "success"
    hook = tuning_job_hook(planned["hook_params"])
    assert hook.describe_training_job(hook.describe(launch["job_name"])["BestTrainingJob"]["TrainingJobName"])[
        "FinalMetricDataList"]  # the fake leaves test_throughput out of it: only the log has it
    row = collect_row(hook, launch, planned["study"], "manual__test")
    assert row["metrics_from_log"] == ["test_throughput"]
    assert row["status"] == "Completed" and row["learning_rate"] == 0.001
    expected = json.loads(json.dumps(row))  # plain JSON, as the results store keeps it
    printed = re.search(r"- Average test throughput: ([0-9.]+)", jumpstart_log(MODELS[0], 0.001)).group(1)
    assert expected["test_throughput"] == pytest.approx(float(printed))
    assert expected["num_params"] == 2257984 + 12810
    assert "test_top_5_accuracy" not in expected  # two classes: the request defines no top-5 metric
    assert row["model_version"] == launch["model_version"]
    assert row["training_jobs"] == 2 and row["billable_seconds"] == row["training_seconds"] == 500 + 600  # both trials
    assert "spot_savings" not in row  # on-demand
    assert row["model_artifacts"].startswith("s3://study-data/output/")
    assert row["test_examples"] == 2  # the images under the test prefix: one cat, one dog
    assert row["throughput_measure"] == THROUGHPUT_MEASURES["sagemaker"]
    assert row["instance_type"] == "ml.g4dn.xlarge" and row["family"] == "MobileNet v2"


def test_the_sagemaker_sdk_reads_a_job_this_project_launched(fake, tmp_path, monkeypatch):
    import boto3
    from sagemaker.core.resources import HyperParameterTuningJob

    launch = plan(tmp_path, model_ids=MODELS[:1])[0]
    TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", fake.endpoint)  # how a notebook would reach this endpoint
    boto_session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    job = HyperParameterTuningJob.get(hyper_parameter_tuning_job_name=launch["job_name"], session=boto_session,
                                      region=REGION)
    assert job.hyper_parameter_tuning_job_name == launch["job_name"]
    assert job.hyper_parameter_tuning_job_status in ("InProgress", "Completed")
    tags = {tag["Key"]: tag["Value"] for tag in fake.client("sagemaker").list_tags(
        ResourceArn=job.hyper_parameter_tuning_job_arn)["Tags"]}
    assert tags["model-selection:model-id"] == MODELS[0] and tags["model-selection:run-id"] == "manual__test"


@pytest.mark.slow
def test_the_dag_end_to_end_on_sagemaker(fake, tmp_path):
    """plan, launch, wait, collect and report through `airflow dags test`, against the moto endpoint."""
    import os
    from collections import Counter

    from airflow_env import airflow_environment, dags_test, migrate

    from model_selection.results import ResultsStore

    environment = airflow_environment(tmp_path / "home", tmp_path / "jobs", tmp_path / "results")
    environment.update({name: os.environ[name] for name in os.environ if name.startswith(("AWS_", "AIRFLOW_CONN_"))})
    migrate(environment)
    run = dags_test(environment, {**params(model_ids=[MODELS[0], MODELS[1], MODELS[3]]), "hyperparameters": {}})
    output = run.stdout + run.stderr
    rows = {row["model_id"]: row for row in ResultsStore(str(tmp_path / "results")).read_latest(dataset="pets")}
    assert {model: row["status"] for model, row in rows.items()} == {
        MODELS[0]: "Completed", MODELS[1]: "Completed", MODELS[3]: "Failed"}, output[-4000:]
    assert "CUDA out of memory" in rows[MODELS[3]]["failure_reason"]
    assert all(rows[model]["test_accuracy"] > 0.5 for model in MODELS[:2])
    report = next((tmp_path / "results" / "reports" / "pets").iterdir())
    assert "per batch" in (report / "frontier.md").read_text()
    assert sorted(fake.backend.hyper_parameter_tuning_jobs) == sorted(row["tuning_job_name"] for row in rows.values())
    # Airflow's processes held every SageMaker request they sent to the service model, and none broke it
    log = Path(environment[CHECKED_REQUESTS_LOG])
    checked = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    operations = Counter(request["operation"] for request in checked)
    print(f"{len(checked)} SageMaker requests checked in Airflow's processes: {dict(operations)}")
    assert operations["CreateHyperParameterTuningJob"] >= len(fake.backend.hyper_parameter_tuning_jobs) and all(
        operations[operation] for operation in ("DescribeHyperParameterTuningJob", "ListHyperParameterTuningJobs",
                                                "DescribeTrainingJob")), operations
    assert [request for request in checked if request["problems"]] == []
    # the lanes' console links: their parts are XComs the UI formats (BaseAwsLink), one set per completed lane
    import sqlite3

    from model_selection.links import BestTrainingJobConsoleLink, TrainingLogsConsoleLink, TuningJobConsoleLink

    with sqlite3.connect(tmp_path / "home" / "airflow.db") as database:
        stored = database.execute("SELECT task_id, key, value FROM xcom WHERE key LIKE 'model_selection_%'").fetchall()
    links = {}
    for task_id, key, value in stored:
        parts = json.loads(value)
        links.setdefault((task_id, key), []).append(parts["job_name"])
    assert sorted(links[("lane.launch", TuningJobConsoleLink.key)]) == sorted(row["tuning_job_name"] for row in rows.values())
    best = sorted(row["best_training_job_name"] for row in rows.values() if row["status"] == "Completed")
    assert sorted(links[("lane.wait", BestTrainingJobConsoleLink.key)]) == best
    assert sorted(links[("lane.wait", TrainingLogsConsoleLink.key)]) == best
    example = json.loads(next(value for task_id, key, value in stored if key == TuningJobConsoleLink.key))
    assert TuningJobConsoleLink().format_link(**example) == (
        f"https://console.aws.amazon.com/sagemaker/home?region={REGION}#/hyper-tuning-jobs/{example['job_name']}")


def test_a_filter_in_the_model_list_selects_jumpstart_models(fake, tmp_path, monkeypatch):
    """`filter: ...` entries are resolved with list_jumpstart_models against the region's catalogue bucket."""
    from jumpstart_fixtures import upload_jumpstart_metadata
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    for name in ("AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE", "AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fake.endpoint)
    upload_jumpstart_metadata(tmp_path / "jumpstart", fake.client("s3"), region=REGION)
    jumpstart._session.cache_clear()
    JumpStartModelsAccessor.reset_cache()
    launches = plan(tmp_path, model_ids=[MODELS[2], "filter: task == ic & framework == tensorflow"])
    assert [launch["model_id"] for launch in launches] == [MODELS[2], *sorted(set(MODELS) - {MODELS[2]})]
    with pytest.raises(AirflowFailException, match="selects no JumpStart model"):
        plan(tmp_path, model_ids=["filter: framework == pytorch"])
    with pytest.raises(AirflowFailException, match="is not of the form"):
        plan(tmp_path, model_ids=["filter: task ~ ic"])


def test_the_results_store_works_on_s3_through_airflow_object_storage(fake):
    """An s3:// results_uri goes through ObjectStoragePath and the Airflow AWS connection."""
    from model_selection.results import ResultsStore

    fake.client("s3").create_bucket(Bucket="results", CreateBucketConfiguration={"LocationConstraint": REGION})
    store = ResultsStore("s3://results/model-selection", conn_id="aws_default")
    store.check_writable()
    store.append([{"dataset": "pets", "model_id": "m1", "config_hash": "c", "status": "Completed", "finished_at": "1"}],
                 run_id="run-1")
    store.append([{"dataset": "pets", "model_id": "m2", "config_hash": "c", "status": "Failed", "finished_at": "2"}],
                 run_id="run-2")
    assert [(row["model_id"], row["status"]) for row in store.read_latest(dataset="pets")] == [
        ("m1", "Completed"), ("m2", "Failed")]
    keys = [item["Key"] for item in fake.client("s3").list_objects_v2(Bucket="results")["Contents"]]
    assert len(keys) == 2 and all(key.startswith("model-selection/rows/pets/run-") for key in keys)


def test_the_cost_counts_every_training_job_failed_tuning_jobs_and_spot_savings_included(fake, tmp_path):
    """ListTrainingJobsForHyperParameterTuningJob (which moto lacks: the fake's server answers it from moto's
    own training jobs) gives every trial; each one's BillableTimeInSeconds is summed and priced."""
    from model_selection.cost import load_prices, study_total, with_cost
    from model_selection.hooks import tuning_job_hook

    from fake_sagemaker import SPOT_BILLED_FRACTION, TRAINING_SECONDS

    planned = plan_task({**params(model_ids=[MODELS[0], MODELS[1], MODELS[3]]), "results_uri": str(tmp_path / "results")},
                        tmp_path)
    on_demand, spot, failing = planned["launches"]
    spot = {**spot, "spec": {**spot["spec"], "spot_max_wait_seconds": 172800}}
    hook = tuning_job_hook(planned["hook_params"])
    for launch in (on_demand, spot, failing):
        job = TuningJobLaunchOperator(task_id="launch", launch=launch).execute(CONTEXT)
        wait_with_trigger(job)
    rows = [collect_row(hook, launch, planned["study"], "manual__test") for launch in (on_demand, spot, failing)]

    trials = [TRAINING_SECONDS + 100, TRAINING_SECONDS + 200]  # what the fake reports for trials 1 and 2
    listed = hook.list_training_jobs(on_demand["job_name"])
    assert [summary["TunedHyperParameters"] for summary in listed] == [{"learning_rate": "0.001"},
                                                                        {"learning_rate": "0.0002"}]
    assert rows[0]["billable_seconds"] == rows[0]["training_seconds"] == sum(trials) and rows[0]["training_jobs"] == 2
    assert rows[1]["training_seconds"] == sum(trials)
    assert rows[1]["billable_seconds"] == sum(round(seconds * SPOT_BILLED_FRACTION) for seconds in trials)
    assert rows[1]["spot_savings"] == pytest.approx(1 - SPOT_BILLED_FRACTION, abs=0.01)
    assert rows[2]["status"] == "Failed" and rows[2]["billable_seconds"] == sum(trials)  # failed trials were billed
    prices = load_prices()
    costed = with_cost(rows, prices, None)
    hourly = prices.price("ml.g4dn.xlarge")
    assert [row["cost_usd"] for row in costed] == pytest.approx(
        [seconds / 3600 * hourly for seconds in (sum(trials), rows[1]["billable_seconds"], sum(trials))])
    total = study_total(costed)
    assert total.usd == pytest.approx(sum(row["cost_usd"] for row in costed)) and total.priced == 3
