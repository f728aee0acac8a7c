"""JumpStart model ids resolved through the real sagemaker 3.x JumpStart code, offline.

The SDK reads metadata files written here in its own format: from local folders for `resolve`,
from a moto S3 server for `list_models`. Sockets may reach loopback only; any other
connection attempt fails the test.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from model_selection.backends import jumpstart
from model_selection.backends.jumpstart import JumpStartError, JumpStartModel, list_models, resolve
from jumpstart_fixtures import (
    HYPERPARAMETERS,
    MODEL_VERSION,
    TRAINING_SCRIPT_KEY,
    upload_jumpstart_metadata,
    write_jumpstart_metadata,
)

MOBILENET = "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"
EFFICIENTNET = "tensorflow-ic-efficientnet-b0-classification-1"
REGION = "us-west-2"
BUCKET = f"jumpstart-cache-prod-{REGION}"
TRAINING_IMAGE = f"763104351884.dkr.ecr.{REGION}.amazonaws.com/tensorflow-training:2.9"


@pytest.fixture
def remote_connections(monkeypatch) -> list:
    """Refuses, and records, every connection that would leave this machine."""
    attempts: list = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def is_loopback(host: object) -> bool:
        return host in ("localhost", "::1") or str(host).startswith("127.")

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            attempts.append(address)
            raise ConnectionRefusedError(f"test blocks network access to {address}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            attempts.append(host)
            raise socket.gaierror(f"test blocks name lookup of {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture
def fresh_sdk_caches():
    """The SDK caches metadata per process and we cache a session per region: each test starts clean."""
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    def clear() -> None:
        jumpstart._session.cache_clear()
        JumpStartModelsAccessor.reset_cache()

    clear()
    yield
    clear()


@pytest.fixture
def clean_aws_env(monkeypatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE", "AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def local_metadata(tmp_path: Path, monkeypatch, clean_aws_env, fresh_sdk_caches, remote_connections) -> Path:
    """Two TF image-classification models in local override folders; no network."""
    root = tmp_path / "jumpstart"
    for name, value in write_jumpstart_metadata(root, [MOBILENET, EFFICIENTNET], region=REGION).items():
        monkeypatch.setenv(name, value)
    yield root
    assert remote_connections == []


ALGORITHM_HYPERPARAMETERS = {h["name"] for h in HYPERPARAMETERS if h["scope"] == "algorithm"}
CONTAINER_HYPERPARAMETERS = {h["name"] for h in HYPERPARAMETERS if h["scope"] == "container"}


@pytest.mark.parametrize(("instance_type", "processor"), [("ml.g4dn.xlarge", "gpu"), ("ml.p3.2xlarge", "gpu"),
                                                          ("ml.m5.xlarge", "cpu")])
def test_resolve_gives_image_script_weights_and_defaults(local_metadata, instance_type, processor):
    model = resolve(MOBILENET, instance_type, REGION)

    assert isinstance(model, JumpStartModel)
    assert model.model_id == MOBILENET
    assert model.model_version == MODEL_VERSION  # "*" pinned to the version found
    assert model.training_image_uri == f"{TRAINING_IMAGE}-{processor}-py39"
    assert model.training_script_uri == f"s3://{BUCKET}/{TRAINING_SCRIPT_KEY}"
    assert model.model_artifact_uri == f"s3://{BUCKET}/tensorflow-training/v2.0.0/train-{MOBILENET}.tar.gz"
    assert model.entry_point == "transfer_learning.py"

    defaults = model.default_hyperparameters
    assert set(defaults) == ALGORITHM_HYPERPARAMETERS
    assert not CONTAINER_HYPERPARAMETERS & set(defaults)
    assert all(isinstance(value, str) for value in defaults.values())
    assert defaults["learning_rate"] == "0.001"
    assert defaults["epochs"] == "5"
    assert defaults["train_only_top_layer"] == "True"
    assert defaults["random_seed"] == "123"
    assert defaults["validation_split_ratio"] == "0.2"


def test_each_model_gets_its_own_weights(local_metadata):
    model = resolve(EFFICIENTNET, "ml.g4dn.xlarge", REGION, model_version=MODEL_VERSION)

    assert model.model_artifact_uri.endswith(f"/train-{EFFICIENTNET}.tar.gz")
    assert model.model_version == MODEL_VERSION


def test_entry_point_comes_from_the_spec(local_metadata):
    spec_path = local_metadata / f"community_models/{MOBILENET}/specs_v{MODEL_VERSION}.json"
    spec = json.loads(spec_path.read_text())
    for hyperparameter in spec["hyperparameters"]:
        if hyperparameter["name"] == "sagemaker_program":
            hyperparameter["default"] = "train_v2.py"
    spec_path.write_text(json.dumps(spec))

    assert resolve(MOBILENET, "ml.g4dn.xlarge", REGION).entry_point == "train_v2.py"


@pytest.mark.parametrize(("model_id", "version"), [("tensorflow-ic-no-such-model", "*"), (MOBILENET, "9.*")])
def test_unknown_model_or_version_names_the_model(local_metadata, model_id, version):
    with pytest.raises(JumpStartError, match="unknown JumpStart model") as raised:
        resolve(model_id, "ml.g4dn.xlarge", REGION, model_version=version)

    assert model_id in str(raised.value)
    assert isinstance(raised.value.__cause__, KeyError)  # what the SDK raises


def test_unsupported_instance_type_names_model_and_type(local_metadata):
    with pytest.raises(JumpStartError, match="does not support training instance type") as raised:
        resolve(MOBILENET, "ml.t3.medium", REGION)

    assert MOBILENET in str(raised.value)
    assert "ml.t3.medium" in str(raised.value)


@pytest.mark.parametrize("region", ["eu-west-1", "xx-nowhere-1"])
def test_other_region_names_model_and_region(local_metadata, region):
    """eu-west-1 has JumpStart but these specs have no image there; xx-nowhere-1 has no JumpStart at all."""
    with pytest.raises(JumpStartError) as raised:
        resolve(MOBILENET, "ml.g4dn.xlarge", region)

    assert MOBILENET in str(raised.value)
    assert region in str(raised.value)
    assert isinstance(raised.value.__cause__, ValueError)  # what the SDK raises


@pytest.fixture
def s3_metadata(tmp_path: Path, monkeypatch, clean_aws_env, fresh_sdk_caches, remote_connections) -> str:
    """The same metadata in a moto S3 server's JumpStart content bucket, boto3 pointed at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    root = tmp_path / "jumpstart"
    for name, value in write_jumpstart_metadata(root, [MOBILENET, EFFICIENTNET], region=REGION).items():
        if "JUMPSTART" not in name:  # the SDK must read S3, not the folders
            monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its state per process, across servers: start from an empty account.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    try:
        yield upload_jumpstart_metadata(root, boto3.client("s3", region_name=REGION), region=REGION)
    finally:
        server.stop()
    assert remote_connections == []


def test_list_models_reads_the_s3_catalogue(s3_metadata):
    assert list_models(["task == ic", "framework == tensorflow"], REGION) == sorted([MOBILENET, EFFICIENTNET])
    assert list_models("task == ic", REGION) == sorted([MOBILENET, EFFICIENTNET])
    assert list_models(f"model_id == {EFFICIENTNET}", REGION) == [EFFICIENTNET]
    assert list_models("framework == pytorch", REGION) == []


def test_resolve_also_reads_the_s3_catalogue(s3_metadata):
    model = resolve(MOBILENET, "ml.g4dn.xlarge", REGION)

    assert model.training_image_uri == f"{TRAINING_IMAGE}-gpu-py39"
    assert model.default_hyperparameters["learning_rate"] == "0.001"
