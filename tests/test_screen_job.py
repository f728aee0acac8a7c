"""The screen as a training job on the local backend: its reproducible source archive, its sample, and
real detached runs of CreateTrainingJob as SageMaker's training toolkit runs a script."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import tarfile
import time
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError

from model_selection.backends.local import LocalSageMakerClient
from model_selection.hooks import LocalTuningJobHook
from model_selection.local.data import LabelledImages
from model_selection.local.jobstore import JobStore
from model_selection.screen_source import (
    CANDIDATES_FILE,
    EVERY_IMAGE,
    SCORES_FILE,
    SCREEN_PROGRAM,
    SHIPPED_REQUIREMENTS,
    sample_hyperparameter,
    sample_setting,
    source_archive,
)
from model_selection.tuning_request import LOCAL_ROLE_ARN, LOCAL_TRAINING_IMAGE, channel

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY = {"pretrained": "false", "image_size": "16", "batch_size": "8"}
CANDIDATES = [
    {"model_id": "efficientnet", "static_hyperparameters": {**TINY, "model_id": "test_efficientnet"}},
    {"model_id": "resnet", "static_hyperparameters": {**TINY, "model_id": "test_resnet"}},
]


def training_request(name: str, archive: Path, channels: dict[str, Path], output: Path, program: str = SCREEN_PROGRAM,
                     **hyperparameters: str) -> dict:
    """A CreateTrainingJob request in the screen job's shape, with local (file://) URIs."""
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": LOCAL_TRAINING_IMAGE, "TrainingInputMode": "File"},
        "RoleArn": LOCAL_ROLE_ARN,
        "HyperParameters": {"sagemaker_program": program, "sagemaker_submit_directory": archive.as_uri(),
                            **hyperparameters},
        "InputDataConfig": [channel(name, path.as_uri()) for name, path in channels.items()],
        "OutputDataConfig": {"S3OutputPath": output.as_uri()},
        "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }


def code_archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(text.encode())
            archive.addfile(member, io.BytesIO(text.encode()))
    return path


def wait_for_end(client, name: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = client.describe_training_job(TrainingJobName=name)
        if description["TrainingJobStatus"] not in ("InProgress", "Stopping"):
            return description
        time.sleep(0.2)
    raise AssertionError(f"training job {name} did not end in {timeout} s: {description}")


def wait_for_log(client: LocalSageMakerClient, name: str, text: str, timeout: float = 120) -> None:
    log = client.store.training_dir(name) / "log.txt"
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not in the log of {name} after {timeout} s"
        time.sleep(0.1)


def model_files(description: dict) -> dict[str, bytes]:
    """The files of a job's model.tar.gz, read back from its ModelArtifacts URI."""
    uri = description["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri.startswith("file://") and uri.endswith(f"/{description['TrainingJobName']}/output/model.tar.gz")
    with tarfile.open(uri[len("file://"):], "r:gz") as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers() if member.isfile()}


@pytest.fixture
def client(tmp_path: Path) -> LocalSageMakerClient:
    return LocalSageMakerClient(tmp_path / "jobs")


def test_the_source_archive_is_reproducible_and_holds_program_package_requirements_and_candidates():
    first, second = source_archive(CANDIDATES), source_archive(json.loads(json.dumps(CANDIDATES)))
    assert first == second
    assert source_archive(CANDIDATES[:1]) != first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as archive:
        members = archive.getmembers()
        files = {member.name: archive.extractfile(member).read().decode() for member in members}
    assert [member.name for member in members] == sorted(files)
    assert all(member.mtime == 0 and member.uid == 0 and member.gid == 0 for member in members)
    assert "from model_selection.local.screen import main" in files[SCREEN_PROGRAM]
    assert json.loads(files[CANDIDATES_FILE]) == CANDIDATES
    package = PROJECT_ROOT / "plugins" / "model_selection"
    shipped = {path.relative_to(package.parent).as_posix() for path in package.rglob("*.py")}
    assert {name for name in files if name.startswith("model_selection/")} == shipped
    assert "model_selection/local/screen.py" in files and not any("__pycache__" in name for name in files)
    # Pinned as the local backend's requirements (which the Airflow image that builds the archive lacks).
    local = (PROJECT_ROOT / "requirements-local.txt").read_text().splitlines()
    assert files["requirements.txt"].splitlines() == list(SHIPPED_REQUIREMENTS)
    assert all(requirement in local for requirement in SHIPPED_REQUIREMENTS)


def test_the_sample_is_stratified_seeded_bounded_and_none_keeps_everything():
    from model_selection.local.screen import sample_images

    sizes = {0: 10, 1: 3, 2: 7}
    labels = tuple(label for label, size in sizes.items() for _ in range(size))
    images = LabelledImages(tuple(Path(f"class_{label}/image_{index}.png") for index, label in enumerate(labels)), labels)

    sample = sample_images(images, 5, seed=7)
    assert {label: sample.labels.count(label) for label in sizes} == {0: 5, 1: 3, 2: 5}
    pairs = list(zip(images.paths, images.labels))
    kept = list(zip(sample.paths, sample.labels))
    assert set(kept) <= set(pairs) and kept == sorted(kept, key=pairs.index)  # drawn from it, in its order
    assert sample_images(images, 5, seed=7) == sample
    assert sample_images(images, 5, seed=8) != sample
    assert set(sample_images(images, 2, seed=7).paths) <= set(sample.paths)  # a smaller sample is part of a larger
    assert sample_images(images, None, seed=7) == images
    assert sample_images(images, 10, seed=7) == images


def test_the_sample_size_goes_to_the_job_as_a_string_and_comes_back_as_the_toolkit_hands_it_over():
    for per_class in (1, 25):
        assert sample_hyperparameter(per_class) == str(per_class) and sample_setting(str(per_class)) == per_class
        assert sample_setting(per_class) == per_class  # in SM_HPS: the toolkit JSON-decodes "25" to 25
    assert sample_hyperparameter(None) == EVERY_IMAGE and sample_setting(EVERY_IMAGE) is None
    assert sample_setting(None) is None  # not given
    for bad in ("0", "-3", "2.5", "None", True):
        with pytest.raises(ValueError, match="sample_per_class must be a whole number of at least 1 or 'all'"):
            sample_setting(bad)


def test_the_screen_program_exits_non_zero_only_when_it_cannot_screen_at_all(dataset, tmp_path, monkeypatch):
    from model_selection.local.screen import main

    channels = dataset(classes=2, per_class=2, test=False, validation=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / CANDIDATES_FILE).write_text(json.dumps(CANDIDATES))
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(tmp_path / "missing"))
    monkeypatch.setenv("SM_HPS", json.dumps({"score": "combined"}))
    with pytest.raises(SystemExit, match="needs its training channel: .*missing is not a folder"):
        main()
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(channels["training"]))
    monkeypatch.setenv("SM_HPS", json.dumps({"score": "accuracy"}))
    with pytest.raises(SystemExit, match="score must be one of knn, linear, logme, combined, got 'accuracy'"):
        main()
    monkeypatch.setenv("SM_HPS", json.dumps({"sample_per_class": 0}))
    with pytest.raises(SystemExit, match="sample_per_class must be a whole number of at least 1"):
        main()


def test_a_local_screen_job_scores_the_candidates_on_the_sample_and_leaves_them_in_its_model(dataset, tmp_path, monkeypatch):
    """Created through the local hook's client (every request held to the service model), run detached."""
    monkeypatch.setenv("MODEL_SELECTION_MAX_TRAINERS", "1")
    channels = dataset(classes=3, per_class=8, test=False)  # 8 training and 4 validation images per class
    archive = tmp_path / "staging" / "sourcedir.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(source_archive(CANDIDATES))
    jobs_root = tmp_path / "jobs"
    conn = LocalTuningJobHook(str(jobs_root)).conn
    request = training_request("ms-screen-tiny", archive, channels, jobs_root / "output",
                               sample_per_class="5", seed="7", score="combined")

    assert conn.create_training_job(**request) == {"TrainingJobArn": "arn:aws:sagemaker:local:000000000000:training-job/ms-screen-tiny"}
    description = wait_for_end(conn, "ms-screen-tiny")

    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert description["SecondaryStatus"] == "Completed"
    assert description["HyperParameters"] == request["HyperParameters"]
    assert description["InputDataConfig"] == request["InputDataConfig"]
    assert description["TrainingEndTime"] >= description["TrainingStartTime"] >= description["CreationTime"]
    assert description["BillableTimeInSeconds"] == description["TrainingTimeInSeconds"] >= 1
    screen = json.loads(model_files(description)[SCORES_FILE])
    assert (screen["sample_per_class"], screen["seed"], screen["score"]) == (5, 7, "combined")
    sampled = 3 * 5 + 3 * 4  # at most 5 per class: every validation class has only 4
    assert screen["images"] == sampled and screen["seconds"] > 0 and screen["device"] in ("cpu", "cuda", "mps")
    assert set(screen["candidates"]) == {"efficientnet", "resnet"}
    for result in screen["candidates"].values():
        assert result["error"] is None and result["images"] == sampled
        assert set(result["scores"]) == {"knn", "linear", "logme", "combined"}
    log = conn.training_job_log("ms-screen-tiny")
    assert "screened efficientnet" in log and "screened resnet" in log
    assert any(JobStore(jobs_root).feature_cache.iterdir())  # the jobs root's cache, as the in-process screen

    with pytest.raises(ClientError) as taken:
        conn.create_training_job(**request)
    assert taken.value.response["Error"]["Code"] == "ResourceInUse"


PROBE = """
import json, os, pathlib, sys
import model_selection
report = {"cwd": os.getcwd(), "argv": sys.argv[1:], "package": model_selection.__file__,
          "environment": dict(os.environ)}
pathlib.Path(os.environ["SM_MODEL_DIR"], "probe.json").write_text(json.dumps(report))
"""


def test_the_program_runs_as_the_toolkit_runs_it_on_its_shipped_code_without_secrets(client, dataset, tmp_path, monkeypatch):
    canary = secrets.token_hex(16)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", canary)
    channels = dataset(classes=2, per_class=2, test=False)
    archive = code_archive(tmp_path / "code.tar.gz", {"probe.py": PROBE, "model_selection/__init__.py": "SHIPPED = 1\n"})
    request = training_request("probe", archive, channels, tmp_path / "output", program="probe.py", seed="7")
    request["Environment"] = {"FROM_THE_REQUEST": "yes"}
    client.create_training_job(**request)
    description = wait_for_end(client, "probe")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")

    report = json.loads(model_files(description)["probe.json"])
    code = client.store.training_dir("probe") / "code"
    environment = report["environment"]
    assert report["cwd"] == str(code) and report["package"] == str(code / "model_selection" / "__init__.py")
    assert environment["PYTHONPATH"] == str(code)
    assert report["argv"] == ["--seed", "7"]
    assert json.loads(environment["SM_HPS"]) == {"seed": 7}
    assert environment["SM_CHANNEL_TRAINING"] == str(channels["training"])
    assert environment["SM_CHANNEL_VALIDATION"] == str(channels["validation"])
    assert environment["SM_MODEL_DIR"] == str(client.store.training_dir("probe") / "model")
    assert environment["SM_OUTPUT_DATA_DIR"] == str(client.store.training_dir("probe") / "output" / "data")
    assert environment["MODEL_SELECTION_LOCAL_JOBS_ROOT"] == str(client.store.root)
    assert environment["FROM_THE_REQUEST"] == "yes"
    leaks = [path for path in tmp_path.rglob("*") if path.is_file() and canary.encode() in path.read_bytes()]
    assert leaks == [] and not any(name.startswith(("AWS_", "AIRFLOW")) for name in environment)


def test_a_failing_program_ends_failed_with_the_end_of_its_log(client, dataset, tmp_path):
    channels = dataset(classes=2, per_class=2, test=False, validation=False)
    archive = code_archive(tmp_path / "code.tar.gz", {"fail.py": "print('starting')\nraise RuntimeError('no GPU here')\n"})
    client.create_training_job(**training_request("failing", archive, channels, tmp_path / "output", program="fail.py"))
    description = wait_for_end(client, "failing")
    assert description["TrainingJobStatus"] == "Failed" and description["SecondaryStatus"] == "Failed"
    assert description["FailureReason"] == "AlgorithmError: the trainer exited with code 1: RuntimeError: no GPU here"
    assert "ModelArtifacts" not in description and not (tmp_path / "output").exists()


def test_a_request_the_local_backend_cannot_run_is_refused_naming_each_problem(client, dataset, tmp_path):
    channels = dataset(classes=2, per_class=2, test=False, validation=False)
    archive = code_archive(tmp_path / "code.tar.gz", {"train.py": "pass\n"})
    request = training_request("refused", archive, {"training": tmp_path / "missing"}, tmp_path / "output")
    del request["HyperParameters"]["sagemaker_program"]
    request["OutputDataConfig"]["S3OutputPath"] = "s3://bucket/output"
    with pytest.raises(ClientError) as refused:
        client.create_training_job(**request)
    message = refused.value.response["Error"]["Message"]
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "HyperParameters needs sagemaker_program" in message
    assert f"channel 'training': {(tmp_path / 'missing').as_uri()!r} is not a local folder" in message
    assert "S3OutputPath 's3://bucket/output' is not a local folder" in message

    elsewhere = training_request("refused", archive, {"validation": channels["training"]}, tmp_path / "output",
                                 program="screen_job.py")
    with pytest.raises(ClientError) as refused:
        client.create_training_job(**elsewhere)
    message = refused.value.response["Error"]["Message"]
    assert "sagemaker_program 'screen_job.py' is not in" in message and "needs a 'training' channel" in message
    assert not client.store.training_root.exists() or list(client.store.training_root.iterdir()) == []


STOPPABLE = """
import os, pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path(os.environ["SM_MODEL_DIR"], "checkpoint.txt").write_text("saved on SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def program_process(client: LocalSageMakerClient, name: str) -> psutil.Process:
    state = client.store.read_state(client.store.training_dir(name))
    return psutil.Process(state["Pid"])


def gone(process: psutil.Process, timeout: float = 60) -> bool:
    """Whether the process ended within `timeout` (a zombie nobody reaped has ended too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def start_stoppable(client, dataset, tmp_path: Path, name: str) -> psutil.Process:
    """A training job running STOPPABLE, once its program is ready; returns the program's process."""
    channels = dataset(classes=2, per_class=2, test=False, validation=False)
    archive = code_archive(tmp_path / "code.tar.gz", {"stoppable.py": STOPPABLE})
    client.create_training_job(**training_request(name, archive, channels, tmp_path / "output", program="stoppable.py"))
    wait_for_log(client, name, "ready")
    return program_process(client, name)


def test_a_stopped_job_ends_stopped_with_its_program_ended_and_its_model_kept(client, dataset, tmp_path):
    program = start_stoppable(client, dataset, tmp_path, "stopped")

    assert client.stop_training_job(TrainingJobName="stopped") == {}
    assert client.describe_training_job(TrainingJobName="stopped")["TrainingJobStatus"] in ("Stopping", "Stopped")
    description = wait_for_end(client, "stopped", timeout=120)
    assert description["TrainingJobStatus"] == "Stopped" and "FailureReason" not in description
    assert model_files(description) == {"checkpoint.txt": b"saved on SIGTERM"}
    assert gone(program)
    with pytest.raises(ClientError) as again:
        client.stop_training_job(TrainingJobName="stopped")
    assert again.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as unknown:
        client.stop_training_job(TrainingJobName="never-created")
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFound"


def test_a_job_whose_runner_was_killed_is_failed_and_its_program_killed(client, dataset, tmp_path):
    program = start_stoppable(client, dataset, tmp_path, "orphaned")
    runner = psutil.Process(client.store.read_state(client.store.training_dir("orphaned"))["SupervisorPid"])
    os.kill(runner.pid, signal.SIGKILL)
    assert gone(runner)

    description = client.describe_training_job(TrainingJobName="orphaned")
    assert description["TrainingJobStatus"] == "Failed"
    assert "runner process" in description["FailureReason"]
    assert "ended while the job was in progress" in description["FailureReason"]
    assert gone(program)  # describe killed it: nothing runs on for a job that has ended


def test_a_job_past_its_max_runtime_is_stopped_as_sagemaker_stops_it(client, dataset, tmp_path):
    channels = dataset(classes=2, per_class=2, test=False, validation=False)
    archive = code_archive(tmp_path / "code.tar.gz", {"stoppable.py": STOPPABLE})
    request = training_request("overtime", archive, channels, tmp_path / "output", program="stoppable.py")
    request["StoppingCondition"]["MaxRuntimeInSeconds"] = 1
    client.create_training_job(**request)
    description = wait_for_end(client, "overtime", timeout=120)
    assert (description["TrainingJobStatus"], description["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert description["FailureReason"].startswith("MaxRuntimeExceeded")
    model_files(description)  # packed, as a stopped job's model is (what is in it depends on when SIGTERM came)
