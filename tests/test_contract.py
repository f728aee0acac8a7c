"""Requests are held to SageMaker's whole service model; metric definitions fit the problem type.

botocore checks types, required members and minimums only, and moto (the suite's SageMaker)
checks nothing more: the maxima, patterns and enums below are what the real service refuses.
"""

from __future__ import annotations

import copy
import json
import re
import time

import pytest
import torch
from botocore.exceptions import ClientError
from conftest import TINY_MODEL, run_trainer

from model_selection.backends.api import (
    RequestRefused,
    _service_model,
    compiled_pattern,
    request_problems,
    validate_request,
)
from model_selection.metrics import (
    BINARY_METRICS,
    SUMMARY_METRIC_PATTERNS,
    all_metric_definitions,
    extract_final_metrics,
    format_number,
    max_metric_definitions,
    metric_definitions,
)
from model_selection.tuning_request import build_tuning_request

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
OPERATIONS = (
    "CreateHyperParameterTuningJob",
    "DescribeHyperParameterTuningJob",
    "ListHyperParameterTuningJobs",
    "StopHyperParameterTuningJob",
    "DescribeTrainingJob",
    "ListTrainingJobsForHyperParameterTuningJob",
    "CreateTrainingJob",
)
CREATE = "CreateHyperParameterTuningJob"
METRICS_FIELD = "TrainingJobDefinition.AlgorithmSpecification.MetricDefinitions"


def tuning_request(name: str = "contract-ok", definitions: list | None = None, **options) -> dict:
    return build_tuning_request(
        name,
        static_hyperparameters={"model_id": "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4",
                                "epochs": "3", "learning_rate": "0.001"},
        learning_rates=["0.001", "0.0002"],
        channels={channel: f"s3://study-data/pets/{channel}" for channel in ("training", "validation", "test")},
        role_arn=ROLE,
        output_path="s3://study-data/jobs",
        metric_definitions=metric_definitions(6, False) if definitions is None else definitions,
        tags={"model-selection:model-id": "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"},
        **options,
    )


def shapes_reached(operations) -> list:
    model, seen, found = _service_model(), set(), []

    def walk(shape):
        if shape.name in seen:
            return
        seen.add(shape.name)
        found.append(shape)
        if shape.type_name == "structure":
            for member in shape.members.values():
                walk(member)
        elif shape.type_name == "list":
            walk(shape.member)
        elif shape.type_name == "map":
            walk(shape.key), walk(shape.value)

    for operation in operations:
        walk(model.operation_model(operation).input_shape)
    return found


# -- the service model in Python ------------------------------------------------------------------
def test_every_pattern_of_the_service_model_compiles_in_python():
    model = _service_model()
    patterns = {model.shape_for(name).metadata.get("pattern") for name in model.shape_names} - {None}
    for pattern in patterns:
        compiled_pattern(pattern)  # raises for any Java construct without a translation
    reached = {shape.metadata["pattern"] for shape in shapes_reached(OPERATIONS) if "pattern" in shape.metadata}
    print(f"{len(patterns)} patterns in the model, {len(reached)} reached by the project's operations: all compile")
    assert len(reached) > 20


@pytest.mark.parametrize(("shape", "value", "matches"), [
    ("TagKey", "model-selection:model-id", True),
    ("TagKey", "Größe 12", True),  # \p{L} \p{Z} \p{N}: any script's letters, spaces and digits
    ("TagKey", "cost#centre", False),
    ("TagValue", "line\nbreak", False),
    ("TrainingRepositoryCredentialsProviderArn", "arn:aws:lambda:us-west-2:123456789012:function:f", True),
    ("TrainingRepositoryCredentialsProviderArn", "arn:aws:lambda:üs-west-2:123456789012:function:f", False),  # \p{Alnum} is ASCII
    ("HyperParameterValue", "two\nlines", False),  # Java's `.` stops at line terminators
    ("HyperParameterTuningJobName", "model-selection-01", True),
    ("HyperParameterTuningJobName", "bad_name", False),
    ("TableName", "emoji \U0001F600", True),  # a UTF-16 surrogate-pair range in Java
])
def test_java_patterns_keep_their_java_meaning(shape, value, matches):
    pattern = _service_model().shape_for(shape).metadata["pattern"]
    assert bool(compiled_pattern(pattern).fullmatch(value)) is matches


# -- what SageMaker refuses, each problem naming its field -------------------------------------------
def test_a_request_built_for_sagemaker_passes_and_is_checked_fast():
    request = tuning_request()
    assert request_problems(CREATE, request) == []
    started = time.perf_counter()
    for _ in range(200):
        request_problems(CREATE, request)
    per_request = (time.perf_counter() - started) / 200
    print(f"request_problems: {per_request * 1000:.2f} ms per CreateHyperParameterTuningJob request")
    assert per_request < 0.02


def test_forty_one_metric_definitions_are_refused_naming_the_field():
    request = tuning_request(definitions=all_metric_definitions())
    problems = request_problems(CREATE, request)
    assert problems == [f"{METRICS_FIELD}: 41 items, at most 40 allowed"]
    with pytest.raises(ClientError) as error:
        validate_request(CREATE, request)
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "MetricDefinitions: 41 items, at most 40 allowed" in error.value.response["Error"]["Message"]


def hyperparameters(request, **values):
    request["TrainingJobDefinition"]["StaticHyperParameters"].update(values)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda r: r.update(HyperParameterTuningJobName="x" * 33),
     "HyperParameterTuningJobName: 33 characters, at most 32 allowed"),
    (lambda r: r["HyperParameterTuningJobConfig"].update(Strategy="Foo"),
     "HyperParameterTuningJobConfig.Strategy: 'Foo' is not one of Bayesian, Random, Hyperband, Grid"),
    (lambda r: r["TrainingJobDefinition"]["AlgorithmSpecification"].update(TrainingInputMode="Stream"),
     "TrainingJobDefinition.AlgorithmSpecification.TrainingInputMode: 'Stream' is not one of Pipe, File, FastFile"),
    (lambda r: hyperparameters(r, note="n" * 2501),
     "TrainingJobDefinition.StaticHyperParameters.note: 2501 characters, at most 2500 allowed"),
    (lambda r: hyperparameters(r, **{f"extra_{k}": "1" for k in range(99)}),
     "TrainingJobDefinition.StaticHyperParameters: 101 entries, at most 100 allowed"),
    (lambda r: hyperparameters(r, **{"k" * 257: "1"}),
     f"TrainingJobDefinition.StaticHyperParameters key '{'k' * 59}... (257 characters): 257 characters, at most 256 allowed"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ResourceLimits"].update(MaxParallelTrainingJobs=0),
     "Invalid value for parameter HyperParameterTuningJobConfig.ResourceLimits.MaxParallelTrainingJobs, value: 0, "
     "valid min value: 1"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ResourceLimits"].update(MaxRuntimeInSeconds=15768001),
     "HyperParameterTuningJobConfig.ResourceLimits.MaxRuntimeInSeconds: 15768001, at most 15768000 allowed"),
    (lambda r: r["TrainingJobDefinition"].update(RoleArn="not-an-arn"),
     "TrainingJobDefinition.RoleArn: 'not-an-arn' does not match the pattern "
     r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+"),
    (lambda r: r["TrainingJobDefinition"]["InputDataConfig"][1]["DataSource"]["S3DataSource"].update(S3Uri="/data/x"),
     "TrainingJobDefinition.InputDataConfig[1].DataSource.S3DataSource.S3Uri: '/data/x' does not match the pattern "
     "(https|s3)://([^/]+)/?(.*)"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["CategoricalParameterRanges"][0].update(
        Values=[str(k) for k in range(31)]),
     "HyperParameterTuningJobConfig.ParameterRanges.CategoricalParameterRanges[0].Values: 31 items, at most 30 allowed"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["IntegerParameterRanges"].extend(
        {"Name": f"p{k}", "MinValue": "1", "MaxValue": "2"} for k in range(30)),
     "HyperParameterTuningJobConfig.ParameterRanges: 31 hyperparameter ranges in all, at most 30 allowed"),
    (lambda r: r["TrainingJobDefinition"]["StoppingCondition"].update(MaxRuntimeInSeconds=29 * 24 * 3600),
     "TrainingJobDefinition.StoppingCondition.MaxRuntimeInSeconds: 2505600, at most 2419200 (28 days) allowed"),
    (lambda r: r["Tags"].append({"Key": "cost#centre", "Value": "x"}),
     r"Tags[1].Key: 'cost#centre' does not match the pattern ([\p{L}\p{Z}\p{N}_.:/=+\-@]*)"),
    (lambda r: r["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"][0].update(Regex=""),
     "Invalid length for parameter TrainingJobDefinition.AlgorithmSpecification.MetricDefinitions[0].Regex, "
     "value: 0, valid min length: 1"),
])
def test_what_sagemaker_refuses_is_refused_naming_the_field(change, problem):
    request = copy.deepcopy(tuning_request())
    change(request)
    problems = request_problems(CREATE, request)
    assert problem in problems
    field = re.match(r"(?:Invalid \w+ for parameter )?([^:,]+)", problem).group(1)
    assert all(field in other for other in problems), problems  # no other field is blamed (a value may break two rules)
    with pytest.raises(ClientError) as error:
        validate_request(CREATE, request)
    assert problem in error.value.response["Error"]["Message"]


def test_local_uris_stand_for_s3_only_where_the_local_backend_asks():
    request = build_tuning_request(
        "local-ok", static_hyperparameters={"model_id": "test_efficientnet"}, learning_rates=["0.01"],
        channels={"training": "file:///data/training"}, role_arn=ROLE, output_path="file:///jobs",
        metric_definitions=metric_definitions(3, False),
    )
    assert sorted(request_problems(CREATE, request)) == [
        "TrainingJobDefinition.InputDataConfig[0].DataSource.S3DataSource.S3Uri: 'file:///data/training' does not match "
        "the pattern (https|s3)://([^/]+)/?(.*)",
        "TrainingJobDefinition.OutputDataConfig.S3OutputPath: 'file:///jobs' does not match the pattern "
        "(https|s3)://([^/]+)/?(.*)",
    ]
    assert request_problems(CREATE, request, local_uris=True) == []
    request["RoleArn"] = "nope"  # an unknown member: botocore's own report still comes first
    assert request_problems(CREATE, request, local_uris=True)[0].startswith('Unknown parameter in input: "RoleArn"')


def test_other_operations_are_checked_too():
    assert request_problems("DescribeTrainingJob", {"TrainingJobName": "a" * 64}) == [
        "TrainingJobName: 64 characters, at most 63 allowed",
        f"TrainingJobName: '{'a' * 59}... (64 characters) does not match the pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){{0,62}}",
    ]
    assert request_problems("ListHyperParameterTuningJobs", {"MaxResults": 101, "StatusEquals": "Done"}) == [
        "MaxResults: 101, at most 100 allowed",
        "StatusEquals: 'Done' is not one of Completed, InProgress, Failed, Stopped, Stopping, Deleting, DeleteFailed",
    ]


def test_the_local_hook_holds_every_operation_to_the_model_too(tmp_path):
    """The local backend's hook runs the SageMaker hook's check on every operation (file:// URIs allowed)."""
    from model_selection.hooks import LocalTuningJobHook

    hook = LocalTuningJobHook(str(tmp_path / "jobs"))
    name = "HyperParameterTuningJobName: 'bad_name' does not match the pattern"
    for operation, call, problem in [
        (CREATE, lambda: hook.create_or_attach(tuning_request("x" * 33)), "33 characters, at most 32 allowed"),
        ("DescribeHyperParameterTuningJob", lambda: hook.describe("bad_name"), name),
        ("StopHyperParameterTuningJob", lambda: hook.stop("bad_name"), name),
        ("ListHyperParameterTuningJobs", lambda: hook.count_in_flight("bad_prefix"), "NameContains: 'bad_prefix'"),
        ("DescribeTrainingJob", lambda: hook.describe_training_job("a" * 64), "64 characters, at most 63 allowed"),
    ]:
        with pytest.raises(RequestRefused, match=re.escape(f"SageMaker would refuse this {operation} request: ")) as error:
            call()
        assert problem in str(error.value)
    assert hook.describe("no-such-job") is None and hook.count_in_flight("study") == 0  # well-formed: answered
    assert hook.conn.client.store.tuning_job_names() == []  # the refused create started nothing


def test_boto3_requests_to_the_fake_sagemaker_are_held_to_the_model(sagemaker_contract):
    """moto accepts 41 metric definitions; the suite's check (conftest.SageMakerContract) refuses them."""
    from fake_sagemaker import FakeSageMaker

    service = FakeSageMaker(run_seconds=3600)
    try:
        client = service.client("sagemaker")
        client.create_hyper_parameter_tuning_job(**tuning_request("contract-good"))
        with pytest.raises(AssertionError, match=re.escape(f"{METRICS_FIELD}: 41 items, at most 40 allowed")):
            client.create_hyper_parameter_tuning_job(**tuning_request("contract-41", all_metric_definitions()))
        assert sagemaker_contract.violations == [
            f"SageMaker would refuse this {CREATE} request: {METRICS_FIELD}: 41 items, at most 40 allowed"]
        sagemaker_contract.violations.clear()  # seen: this test sent it on purpose
        listed = client.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]
        assert [job["HyperParameterTuningJobName"] for job in listed] == ["contract-good"]
        sagemaker_contract.unhook(client)
        client.create_hyper_parameter_tuning_job(**tuning_request("contract-41", all_metric_definitions()))
        described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="contract-41")
        assert len(described["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]) == 41  # moto took it
    finally:
        service.close()


# -- metric definitions: those of the problem type ----------------------------------------------------
SUMMARY = set(SUMMARY_METRIC_PATTERNS)


def split_names(metrics) -> set[str]:
    return {f"{split}_{metric}" for split in ("train", "val", "test") for metric in metrics}


@pytest.mark.parametrize(("num_classes", "binary", "metrics"), [
    (2, True, BINARY_METRICS),
    (2, False, ("loss", "accuracy")),
    (5, False, ("loss", "accuracy")),
    (6, False, ("loss", "accuracy", "top_5_accuracy")),
    (1000, False, ("loss", "accuracy", "top_5_accuracy")),
])
def test_definitions_are_those_of_the_problem_type(num_classes, binary, metrics):
    definitions = metric_definitions(num_classes, binary)
    assert {d["Name"] for d in definitions} == SUMMARY | split_names(metrics)
    assert len(definitions) == len({d["Name"] for d in definitions}) <= max_metric_definitions() == 40
    assert request_problems(CREATE, tuning_request(definitions=definitions)) == []
    assert len(all_metric_definitions()) == 41  # for reading logs only


def printed_lines(task_metrics: dict[str, float]) -> str:
    """The dataset-metric lines of the trainer's log, written by its own formatting code."""
    from model_selection.local.train import metric_line

    return "\n".join([
        f"Epoch 1/1 - 0.10s {metric_line('', task_metrics)} {metric_line('val_', task_metrics)}",
        *(f"- {name}: {format_number(value)}" for name, value in task_metrics.items()),
        *(f"- val_{name}: {format_number(value)}" for name, value in task_metrics.items()),
        *(f"- Test {name}: {format_number(value)}" for name, value in task_metrics.items()),
    ])


@pytest.mark.parametrize(("num_classes", "binary"), [(2, True), (5, False), (6, False)])
def test_definitions_read_what_the_evaluation_computes(num_classes, binary):
    from model_selection.local.evaluation import Task

    generator = torch.Generator().manual_seed(num_classes)
    labels = torch.arange(24) % num_classes
    outputs = torch.randn(24, 1 if binary else num_classes, generator=generator)
    computed = Task(num_classes, binary, 0.0).metrics(outputs, labels)
    log = printed_lines(computed)
    definitions = [d for d in metric_definitions(num_classes, binary) if d["Name"] not in SUMMARY]
    found = extract_final_metrics(log, definitions)
    assert set(found) == split_names(computed) == {d["Name"] for d in definitions}
    for name, value in computed.items():
        assert found[f"test_{name}"] == pytest.approx(value, rel=1e-6, abs=1e-8)


def test_definitions_read_every_figure_the_real_trainer_prints(dataset, tmp_path):
    """Six classes (top-5 from six): every definition finds its figure, every printed figure has one."""
    channels = dataset(classes=6, per_class=6)
    hyperparameters = {**TINY_MODEL, "epochs": "1", "train_only_top_layer": "False"}
    arguments = [argument for name, path in channels.items() for argument in (f"--{name}", str(path))]
    result = run_trainer([*arguments, "--model-dir", str(tmp_path / "model"), "--hyperparameters", json.dumps(hyperparameters)])
    assert result.returncode == 0, result.stderr
    definitions = metric_definitions(6, False)
    found = extract_final_metrics(result.stdout, definitions)
    assert set(found) == {d["Name"] for d in definitions}
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert set(summary["metrics"]) == set(found)
    figure_lines = [line for line in result.stdout.splitlines() if re.match(r"- .+: [0-9.]+", line)]
    unread = [line for line in figure_lines if not any(re.search(d["Regex"], line) for d in definitions)]
    assert figure_lines and unread == []
    print(f"6 classes: {len(definitions)} definitions, {len(figure_lines)} figure lines, all read")


def test_the_request_carries_the_definitions_it_is_given():
    definitions = metric_definitions(2, True)
    request = tuning_request(definitions=definitions)
    assert request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] == definitions
    assert request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] is not definitions
    with pytest.raises(TypeError, match="metric_definitions"):
        build_tuning_request("x", static_hyperparameters={}, learning_rates=["1"], channels={}, role_arn=ROLE,
                             output_path="s3://b/o")
