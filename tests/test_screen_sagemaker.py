"""The screen as one SageMaker training job, against moto's server (`fake_sagemaker`), whose driver runs a
standalone training job's program for real, as SageMaker's training toolkit does."""

from __future__ import annotations

import io
import json
import re
import signal
import tarfile
import time
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse
from conftest import write_image_folders
from fake_sagemaker import REGION, ROLE, Throttle, _Raw, serving

from model_selection.backends.api import RequestRefused, request_problems
from model_selection.hooks import NameTaken, QuotaExceeded, Throttled, tuning_job_hook
from model_selection.job_status import FAILED, STOPPED, SUCCESS, training_job_outcome, training_job_progress
from model_selection.screen_request import build_screen_request, screen_job_name, screen_problems_for_study
from model_selection.screen_source import SCREEN_PROGRAM, SOURCE_ARCHIVE, source_archive
from model_selection.study import Study

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = "s3://study-data/output"
DATA = "s3://study-data/shapes"
HOOK_PARAMS = {"backend": "sagemaker", "aws_conn_id": "aws_default", "region_name": REGION}
TINY = {"pretrained": "false", "image_size": "16", "batch_size": "8"}
# JumpStart ids as the study names them, each screened on a tiny timm model instead of its twin.
CANDIDATES = [
    {"model_id": "tensorflow-ic-efficientnet-b0-classification-1",
     "static_hyperparameters": {**TINY, "model_id": "test_efficientnet"}},
    {"model_id": "tensorflow-ic-imagenet-resnet-v2-50-classification-4",
     "static_hyperparameters": {**TINY, "model_id": "test_resnet"}},
]
SUBNETS, SECURITY_GROUPS = ["subnet-0123456789abcdef0"], ["sg-0123456789abcdef0"]
VOLUME_KEY, OUTPUT_KEY = "alias/training-volumes", "alias/training-output"


def study(**params) -> Study:
    parsed, problems = Study.parse({
        "backend": "sagemaker", "model_ids": [candidate["model_id"] for candidate in CANDIDATES],
        "dataset": {"name": "shapes", "training": f"{DATA}/training", "validation": f"{DATA}/validation",
                    "test": f"{DATA}/test"},
        "role_arn": ROLE, "output_path": OUTPUT, "region_name": REGION, **params}, PROJECT_ROOT)
    assert problems == []
    return parsed


def screen_request(screened: Study, name: str, source_uri: str, **options) -> dict:
    return build_screen_request(screened, name, source_uri=source_uri, output_path=OUTPUT,
                                instance_type=options.pop("instance_type", "ml.g4dn.xlarge"), sample_per_class=4,
                                seed=7, score="combined", tags={"model-selection:dag-id": "test"}, **options)


def program_archive(text: str) -> bytes:
    """A source archive whose program is `text` (a stand-in screen, for what needs no model)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo(SCREEN_PROGRAM)
        member.size = len(text.encode())
        archive.addfile(member, io.BytesIO(text.encode()))
    return buffer.getvalue()


def wait_until(hook, name: str, done, timeout: float = 80) -> dict:
    """The job's description once `done(description)`; polls as the sensor does, fails past the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        description = hook.describe_training_job(name)
        if done(description) or time.monotonic() > deadline:
            assert done(description), training_job_progress(description)
            return description
        time.sleep(0.2)


def ended(description: dict) -> bool:
    return training_job_outcome(description)[0] != "running"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch):
    with serving(tmp_path, monkeypatch, []) as service:
        s3 = service.client("s3")
        for channel, seed in (("training", 1), ("validation", 2)):  # real images: the screen decodes them
            folders = write_image_folders(tmp_path / channel, classes=2, per_class=6, seed=seed)
            for path in sorted(folders.rglob("*.png")):
                s3.put_object(Bucket="study-data", Key=f"shapes/{channel}/{path.parent.name}/{path.name}",
                              Body=path.read_bytes())
        yield service


def test_the_name_is_a_valid_training_job_name_and_the_same_for_the_same_screen():
    name = screen_job_name("Caltech 256 (object categories) " * 3, "3f9a1c0e7b2d", CANDIDATES, 4, 7, "combined")
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name) and name.startswith("ms-screen-caltech-256-")
    assert request_problems("DescribeTrainingJob", {"TrainingJobName": name}) == []
    assert name == screen_job_name("Caltech 256 (object categories) " * 3, "3f9a1c0e7b2d", CANDIDATES, 4, 7, "combined")
    others = {screen_job_name("pets", "3f9a1c0e7b2d", CANDIDATES, 4, 7, "combined"),
              screen_job_name("pets", "3f9a1c0e7b2d", CANDIDATES[:1], 4, 7, "combined"),
              screen_job_name("pets", "3f9a1c0e7b2d", CANDIDATES, 8, 7, "combined"),
              screen_job_name("pets", "3f9a1c0e7b2d", CANDIDATES, 4, 8, "combined"),
              screen_job_name("pets", "3f9a1c0e7b2d", CANDIDATES, 4, 7, "knn"),
              screen_job_name("pets", "000000000000", CANDIDATES, 4, 7, "combined")}
    assert len(others) == 6


def test_the_request_for_a_sagemaker_study_passes_the_service_model_with_the_studys_settings():
    settings = {"vpc_subnets": SUBNETS, "vpc_security_group_ids": SECURITY_GROUPS, "volume_kms_key_id": VOLUME_KEY,
                "output_kms_key_id": OUTPUT_KEY, "encrypt_inter_container_traffic": True, "volume_size_gb": 50,
                "managed_spot_training": True, "parallel_training_jobs": 1}
    source = f"{OUTPUT}/ms-screen-x/source/{SOURCE_ARCHIVE}"
    request = screen_request(study(**settings), "ms-screen-x", source, instance_type="ml.p3.2xlarge")
    assert request_problems("CreateTrainingJob", request) == []
    assert request["HyperParameters"] == {"sagemaker_program": SCREEN_PROGRAM, "sagemaker_submit_directory": source,
                                          "sample_per_class": "4", "seed": "7", "score": "combined"}
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-training:2.3-gpu-py311",
        "TrainingInputMode": "File"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"training": f"{DATA}/training/", "validation": f"{DATA}/validation/"}  # as the tuning jobs'
    assert request["ResourceConfig"] == {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50,
                                         "VolumeKmsKeyId": VOLUME_KEY}
    assert request["OutputDataConfig"] == {"S3OutputPath": OUTPUT, "KmsKeyId": OUTPUT_KEY}
    assert request["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
    assert request["EnableInterContainerTrafficEncryption"] is True and request["RoleArn"] == ROLE
    assert "EnableManagedSpotTraining" not in request and "CheckpointConfig" not in request  # the study waits on it
    assert request["Tags"] == [{"Key": "model-selection:dag-id", "Value": "test"}]
    cpu = screen_request(study(), "ms-screen-x", source, instance_type="ml.m5.xlarge")
    assert cpu["AlgorithmSpecification"]["TrainingImage"].endswith("pytorch-training:2.3-cpu-py311")
    assert "VpcConfig" not in cpu and "VolumeKmsKeyId" not in cpu["ResourceConfig"]


def test_the_local_request_has_the_local_image_role_and_folders(tmp_path):
    from model_selection.tuning_request import LOCAL_ROLE_ARN, LOCAL_TRAINING_IMAGE

    folders = {channel: write_image_folders(tmp_path / channel, 2, 2) for channel in ("training", "validation", "test")}
    dataset = {"name": "shapes", **{channel: str(folder) for channel, folder in folders.items()}}
    local, problems = Study.parse({"backend": "local", "model_ids": ["test_efficientnet"], "dataset": dataset},
                                  PROJECT_ROOT)
    assert problems == [] and screen_problems_for_study(local) == []
    source = (tmp_path / "jobs" / "staging" / "ms-screen-x" / SOURCE_ARCHIVE).as_uri()
    request = build_screen_request(local, "ms-screen-x", source_uri=source, output_path=(tmp_path / "jobs").as_uri(),
                                   sample_per_class=4, seed=7, score="combined")
    assert request_problems("CreateTrainingJob", request, local_uris=True) == []
    assert request["AlgorithmSpecification"]["TrainingImage"] == LOCAL_TRAINING_IMAGE
    assert request["RoleArn"] == LOCAL_ROLE_ARN
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]} == {
        "training": folders["training"].as_uri(), "validation": folders["validation"].as_uri()}


def test_network_isolation_and_an_instance_type_without_an_image_are_refused_with_clear_messages():
    assert screen_problems_for_study(study(), "ml.g4dn.xlarge") == []
    [isolation] = screen_problems_for_study(study(enable_network_isolation=True))
    assert isolation.startswith("screen cannot run with enable_network_isolation")
    assert "timm from PyPI" in isolation and "Hugging Face hub" in isolation
    [no_image] = screen_problems_for_study(study(), "ml.inf2.xlarge")
    assert no_image.startswith(
        "screen instance type 'ml.inf2.xlarge': SageMaker has no PyTorch 2.3 (py311) training image")


def test_staging_create_or_attach_stop_and_failure_against_the_service(fake, hooked, monkeypatch):
    """Staged source under the output path; a second create attaches, another request under the name is
    NameTaken; the service's errors come out as the hook's exceptions; stop and failure end the job."""
    hook = tuning_job_hook(HOOK_PARAMS)
    name = "ms-screen-shapes-3f9a1c0e7b2d-0123456789"
    waiting = program_archive("import time\nwhile True:\n    time.sleep(0.1)\n")  # runs until stopped
    source = hook.stage(name, SOURCE_ARCHIVE, waiting, OUTPUT)
    assert source == f"{OUTPUT}/{name}/source/{SOURCE_ARCHIVE}"
    stored = fake.client("s3").get_object(Bucket="study-data", Key=f"output/{name}/source/{SOURCE_ARCHIVE}")
    assert stored["Body"].read() == waiting
    request = screen_request(study(), name, source)

    assert hook.describe_training_job(name) is None and hook.existing_training_job_status(request) is None
    assert hook.create_or_attach_training_job(request) == (False, "InProgress")
    assert hook.create_or_attach_training_job(request) == (True, "InProgress")  # a retry attaches
    with pytest.raises(NameTaken, match=f"a training job named {name} exists .* \\(hyperparameters differ\\)"):
        hook.create_or_attach_training_job({**request, "HyperParameters": {**request["HyperParameters"], "seed": "8"}})
    running = wait_until(hook, name, lambda d: d["SecondaryStatus"] == "Training")
    assert training_job_progress(running) == (f"{name}: InProgress (Training - Training image download completed. "
                                              "Training in progress.)")
    assert hook.stop_training_job(name) is True
    stopped = wait_until(hook, name, ended, timeout=20)
    assert training_job_outcome(stopped)[0] == STOPPED
    assert fake.training_runs[name].process.returncode == -signal.SIGKILL  # its program was ended
    assert hook.stop_training_job(name) is False  # ended already
    assert hook.stop_training_job("ms-screen-none") is False  # never existed

    failing = "ms-screen-shapes-3f9a1c0e7b2d-9876543210"
    exits = program_archive("raise SystemExit('no candidates.json here')\n")
    source = hook.stage(failing, SOURCE_ARCHIVE, exits, OUTPUT)
    hook.create_or_attach_training_job(screen_request(study(), failing, source))
    outcome, reason = training_job_outcome(wait_until(hook, failing, ended))
    assert outcome == FAILED and "ExecuteUserScriptError" in reason and reason.endswith(
        'ErrorMessage "no candidates.json here"\nCommand "python screen_job.py --sample_per_class 4 --score combined '
        '--seed 7", exit code: 1')

    throttle = Throttle(("CreateTrainingJob",))  # every other call throttled: botocore's retries absorb it
    hooked.append(throttle)
    tuning_job_hook(HOOK_PARAMS).create_or_attach_training_job(screen_request(study(), "ms-screen-throttled", source))
    assert throttle.throttled["CreateTrainingJob"] == 1
    connection = json.loads(fake.connection())
    connection["extra"]["config_kwargs"] = {"retries": {"mode": "standard", "total_max_attempts": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))  # no retries left to absorb it
    with pytest.raises(Throttled):
        tuning_job_hook(HOOK_PARAMS).create_or_attach_training_job(screen_request(study(), "ms-screen-quota", source))
    limit = ("The account-level service limit 'ml.g4dn.xlarge for training job usage' is 0 Instances, with current "
             "utilization of 0 Instances and a request delta of 1 Instances.")
    hooked[-1] = lambda request, event_name, **kwargs: (_answer(request, "ResourceLimitExceeded", limit)
                                                        if event_name.endswith("CreateTrainingJob") else None)
    with pytest.raises(QuotaExceeded) as quota:
        tuning_job_hook(HOOK_PARAMS).create_or_attach_training_job(screen_request(study(), "ms-screen-quota", source))
    assert quota.value.never_fits and quota.value.quota == "ml.g4dn.xlarge for training job usage"

    for call, problem in ((lambda: hook.create_or_attach_training_job({**request, "TrainingJobName": "x" * 64}),
                           "TrainingJobName: 64 characters, at most 63 allowed"),
                          (lambda: hook.stop_training_job("bad_name"), "TrainingJobName: 'bad_name' does not match")):
        with pytest.raises(RequestRefused, match=re.escape(problem)):  # refused before it is sent
            call()
    assert sorted(fake.backend.training_jobs) == sorted([name, failing, "ms-screen-throttled"])


def _answer(request, code: str, message: str) -> AWSResponse:
    """The service's error answer, for a botocore before-send handler."""
    return AWSResponse(request.url, 400, {"x-amzn-ErrorType": code},
                       _Raw(json.dumps({"__type": code, "message": message}).encode()))


def test_a_screen_job_runs_the_shipped_program_and_its_scores_are_read_back(fake):
    """A's real source archive, through the fake's toolkit run: each candidate scored on the sample."""
    hook = tuning_job_hook(HOOK_PARAMS)
    name = screen_job_name("shapes", study().config_hash, CANDIDATES, 4, 7, "combined")
    source = hook.stage(name, SOURCE_ARCHIVE, source_archive(CANDIDATES), OUTPUT)
    started = time.monotonic()
    assert hook.create_or_attach_training_job(screen_request(study(), name, source)) == (False, "InProgress")
    description = wait_until(hook, name, ended)
    seconds = time.monotonic() - started
    assert training_job_outcome(description) == (SUCCESS, None), hook.training_log(name)[-3000:]
    assert description["ModelArtifacts"]["S3ModelArtifacts"] == f"{OUTPUT}/{name}/output/model.tar.gz"
    assert [t["Status"] for t in description["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    scores = hook.screen_scores(description)
    assert (scores["sample_per_class"], scores["seed"], scores["score"]) == (4, 7, "combined")
    assert set(scores["candidates"]) == {candidate["model_id"] for candidate in CANDIDATES}
    for result in scores["candidates"].values():
        assert result["error"] is None and set(result["scores"]) == {"knn", "linear", "logme", "combined"}
        assert result["images"] == 2 * 4 + 2 * 4  # 4 of each of 2 classes, of training and of validation
    log = hook.training_log(name)
    assert all(f"screened {candidate['model_id']}" in log for candidate in CANDIDATES)
    print(f"screen job of {len(CANDIDATES)} candidates through the fake: {seconds:.1f} s; "
          f"{training_job_progress(description)}")


def test_the_local_hook_stages_under_the_jobs_root_and_reads_scores_from_a_file_uri(tmp_path):
    """The local backend's side of the same hook calls: the staged archive is a file, the output a file:// URI."""
    from model_selection.hooks import LocalTuningJobHook
    from model_selection.screen_source import SCORES_FILE

    hook = LocalTuningJobHook(str(tmp_path / "jobs"))
    uri = hook.stage("ms-screen-x", SOURCE_ARCHIVE, b"archive", "file:///ignored")
    assert uri == (tmp_path / "jobs" / "staging" / "ms-screen-x" / SOURCE_ARCHIVE).resolve().as_uri()
    assert Path(uri.removeprefix("file://")).read_bytes() == b"archive"
    assert hook.describe_training_job("ms-screen-x") is None
    model = tmp_path / "model.tar.gz"
    with tarfile.open(model, "w:gz") as archive:
        data = json.dumps({"candidates": {"m": {"error": None}}}).encode()
        member = tarfile.TarInfo(f"./{SCORES_FILE}")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    described = {"TrainingJobName": "ms-screen-x", "ModelArtifacts": {"S3ModelArtifacts": model.as_uri()}}
    assert hook.screen_scores(described) == {"candidates": {"m": {"error": None}}}
    with pytest.raises(ValueError, match="has no model artifacts"):
        hook.screen_scores({"TrainingJobName": "ms-screen-x", "TrainingJobStatus": "Failed"})
