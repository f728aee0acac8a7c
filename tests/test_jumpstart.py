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
from model_selection.backends.jumpstart import (
    AwsAccessError,
    JumpStartError,
    JumpStartModel,
    hyperparameter_problems,
    list_models,
    resolve,
    sdk_tags,
)
from jumpstart_fixtures import (
    HYPERPARAMETERS,
    MODEL_VERSION,
    TRAINING_SCRIPT_KEY,
    S3Requests,
    aws_connection,
    enforce_moto_auth,
    upload_jumpstart_metadata,
    write_bogus_default_chain,
    write_jumpstart_metadata,
)

MOBILENET = "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4"
EFFICIENTNET = "tensorflow-ic-efficientnet-b0-classification-1"
REGION = "us-west-2"
BUCKET = f"jumpstart-cache-prod-{REGION}"
TRAINING_IMAGE = f"763104351884.dkr.ecr.{REGION}.amazonaws.com/tensorflow-training:2.9"
CONN = "aws_default"  # every look-up goes through this Airflow connection (AIRFLOW_CONN_AWS_DEFAULT)


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
        import boto3

        jumpstart._session.cache_clear()
        # The SDK's reset builds a client from boto3's default session: one made for this test's environment.
        boto3.DEFAULT_SESSION = None
        JumpStartModelsAccessor.reset_cache()
        boto3.DEFAULT_SESSION = None

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
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection())
    yield root
    assert remote_connections == []


ALGORITHM_HYPERPARAMETERS = {h["name"] for h in HYPERPARAMETERS if h["scope"] == "algorithm"}
CONTAINER_HYPERPARAMETERS = {h["name"] for h in HYPERPARAMETERS if h["scope"] == "container"}


@pytest.mark.parametrize(("instance_type", "processor"), [("ml.g4dn.xlarge", "gpu"), ("ml.p3.2xlarge", "gpu"),
                                                          ("ml.m5.xlarge", "cpu")])
def test_resolve_gives_image_script_weights_and_defaults(local_metadata, instance_type, processor):
    model = resolve(MOBILENET, instance_type, REGION, CONN)

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
    model = resolve(EFFICIENTNET, "ml.g4dn.xlarge", REGION, CONN, model_version=MODEL_VERSION)

    assert model.model_artifact_uri.endswith(f"/train-{EFFICIENTNET}.tar.gz")
    assert model.model_version == MODEL_VERSION


def test_entry_point_comes_from_the_spec(local_metadata):
    spec_path = local_metadata / f"community_models/{MOBILENET}/specs_v{MODEL_VERSION}.json"
    spec = json.loads(spec_path.read_text())
    for hyperparameter in spec["hyperparameters"]:
        if hyperparameter["name"] == "sagemaker_program":
            hyperparameter["default"] = "train_v2.py"
    spec_path.write_text(json.dumps(spec))

    assert resolve(MOBILENET, "ml.g4dn.xlarge", REGION, CONN).entry_point == "train_v2.py"


@pytest.mark.parametrize(("model_id", "version"), [("tensorflow-ic-no-such-model", "*"), (MOBILENET, "9.*")])
def test_unknown_model_or_version_names_the_model(local_metadata, model_id, version):
    with pytest.raises(JumpStartError, match="unknown JumpStart model") as raised:
        resolve(model_id, "ml.g4dn.xlarge", REGION, CONN, model_version=version)

    assert model_id in str(raised.value)
    assert isinstance(raised.value.__cause__, KeyError)  # what the SDK raises


def test_unsupported_instance_type_names_model_and_type(local_metadata):
    with pytest.raises(JumpStartError, match="does not support training instance type") as raised:
        resolve(MOBILENET, "ml.t3.medium", REGION, CONN)

    assert MOBILENET in str(raised.value)
    assert "ml.t3.medium" in str(raised.value)


def test_other_region_names_model_and_region(local_metadata):
    """eu-west-1 has JumpStart, but these specs have no image there: a problem of this model."""
    with pytest.raises(JumpStartError) as raised:
        resolve(MOBILENET, "ml.g4dn.xlarge", "eu-west-1", CONN)

    assert MOBILENET in str(raised.value)
    assert "eu-west-1" in str(raised.value)
    assert isinstance(raised.value.__cause__, ValueError)  # what the SDK raises


@pytest.mark.parametrize("call", ["resolve", "list_models"])
def test_a_region_without_jumpstart_is_a_problem_of_the_connection_not_of_a_model(local_metadata, call):
    with pytest.raises(AwsAccessError) as raised:
        if call == "resolve":
            resolve(MOBILENET, "ml.g4dn.xlarge", "xx-nowhere-1", CONN)
        else:
            list_models("task == ic", "xx-nowhere-1", CONN)

    assert raised.value.kind == "region"
    assert "'xx-nowhere-1'" in str(raised.value) and "us-west-2" in str(raised.value)  # what to use instead
    assert MOBILENET not in str(raised.value)


def test_a_connection_id_that_names_no_connection_never_falls_back_to_the_default_chain(local_metadata):
    with pytest.raises(AwsAccessError, match="'no_such_connection' is not defined") as raised:
        resolve(MOBILENET, "ml.g4dn.xlarge", REGION, "no_such_connection")
    assert raised.value.kind == "missing connection"


def test_hyperparameter_values_are_checked_by_the_sdks_own_validation(local_metadata):
    model = resolve(MOBILENET, "ml.g4dn.xlarge", REGION, CONN)
    assert hyperparameter_problems(model, {**model.default_hyperparameters, "epochs": "12", "optimizer": "sgd"},
                                   REGION, CONN) == []

    problems = hyperparameter_problems(model, {"learning_rate": "0.9", "optimizer": "adamw", "epochs": "2.5",
                                               "batch_size": "16", "early_stopping": "yes"}, REGION, CONN)

    assert len(problems) == 4, problems  # each bad value named, batch_size is fine
    text = "\n".join(problems)
    assert all(MOBILENET in problem and MODEL_VERSION in problem for problem in problems)
    assert "learning_rate='0.9'" in text and "no greater than 0.5" in text and "float in [1e-06, 0.5]" in text
    assert "optimizer='adamw'" in text and "one of adam, sgd, nesterov, rmsprop, adagrad, adadelta" in text
    assert "epochs='2.5'" in text and "must be integer type" in text and "int >= 1" in text
    assert "early_stopping='yes'" in text and "one of True, False" in text


def test_the_tags_are_those_the_sdk_puts_on_jumpstart_training_jobs(local_metadata):
    from sagemaker.core.jumpstart.utils import add_jumpstart_model_info_tags

    model = resolve(MOBILENET, "ml.g4dn.xlarge", REGION, CONN)
    sdk = {tag["Key"]: tag["Value"] for tag in add_jumpstart_model_info_tags(None, MOBILENET, model.model_version)}

    assert sdk_tags(model) == sdk == {"sagemaker-sdk:jumpstart-model-id": MOBILENET,
                                      "sagemaker-sdk:jumpstart-model-version": MODEL_VERSION}


@pytest.fixture
def s3_metadata(tmp_path: Path, monkeypatch, clean_aws_env, fresh_sdk_caches, remote_connections):
    """The same metadata in a moto S3 server's JumpStart content bucket, reached only through the connection.

    Yields the server's endpoint. boto3's default chain holds credentials, a profile and a region
    that point elsewhere; no environment variable names the endpoint.
    """
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
    s3 = boto3.session.Session().client("s3", region_name=REGION, endpoint_url=endpoint)
    upload_jumpstart_metadata(root, s3, region=REGION)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(endpoint))
    write_bogus_default_chain(tmp_path / "aws", monkeypatch)
    try:
        yield endpoint
    finally:
        server.stop()
    assert remote_connections == []


def test_list_models_reads_the_s3_catalogue(s3_metadata):
    assert list_models(["task == ic", "framework == tensorflow"], REGION, CONN) == sorted([MOBILENET, EFFICIENTNET])
    assert list_models("task == ic", REGION, CONN) == sorted([MOBILENET, EFFICIENTNET])
    assert list_models(f"model_id == {EFFICIENTNET}", REGION, CONN) == [EFFICIENTNET]
    assert list_models("framework == pytorch", REGION, CONN) == []


def test_resolve_also_reads_the_s3_catalogue(s3_metadata):
    model = resolve(MOBILENET, "ml.g4dn.xlarge", REGION, CONN)

    assert model.training_image_uri == f"{TRAINING_IMAGE}-gpu-py39"
    assert model.default_hyperparameters["learning_rate"] == "0.001"


def iam(endpoint: str):
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing").client(
        "iam", region_name=REGION, endpoint_url=endpoint)


def test_catalogue_reads_carry_the_connections_credentials_never_the_default_chains(s3_metadata, monkeypatch):
    """moto checks every key here: the listing works only if no request uses the environment's or profile's."""
    keys = enforce_moto_auth(monkeypatch, iam(s3_metadata), {"planner": ["arn:aws:s3:::jumpstart-cache-prod-*"]})
    key, secret = keys["planner"]
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(s3_metadata, login=key, password=secret))
    requests = S3Requests().install(monkeypatch)

    assert list_models("task == ic", REGION, CONN) == sorted([MOBILENET, EFFICIENTNET])
    assert resolve(EFFICIENTNET, "ml.g4dn.xlarge", REGION, CONN).model_version == MODEL_VERSION

    assert {operation for operation, _ in requests.sent} >= {"GetObject"}
    assert requests.keys() == {key}  # every S3 request was signed with the connection's key


@pytest.mark.parametrize(("credentials", "kind", "code"), [
    ("unknown key", "credentials", "InvalidAccessKeyId"),
    ("wrong secret", "credentials", "SignatureDoesNotMatch"),
    ("no permission", "permissions", "AccessDenied"),
])
@pytest.mark.parametrize("call", ["resolve", "list_models"])
def test_refused_credentials_and_missing_permissions_are_one_connection_problem(s3_metadata, monkeypatch, credentials,
                                                                                kind, code, call):
    keys = enforce_moto_auth(monkeypatch, iam(s3_metadata), {"planner": []})  # a user allowed nothing
    key, secret = {"unknown key": ("AKIAUNKNOWNKEY000000", "x"), "wrong secret": (keys["planner"][0], "wrong"),
                   "no permission": keys["planner"]}[credentials]
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(s3_metadata, login=key, password=secret))
    requests = S3Requests().install(monkeypatch)

    with pytest.raises(AwsAccessError) as raised:
        if call == "resolve":
            resolve(MOBILENET, "ml.g4dn.xlarge", REGION, CONN)
        else:
            list_models("task == ic", REGION, CONN)

    assert raised.value.kind == kind
    assert f"AWS connection {CONN!r}" in str(raised.value) and code in str(raised.value)
    assert ("s3:GetObject" in str(raised.value)) == (kind == "permissions")  # what to grant
    assert len(requests.sent) == 1  # refused once, never retried


def test_an_expired_session_token_is_a_credentials_problem(s3_metadata, monkeypatch):
    """S3's own ExpiredToken answer, parsed by botocore as a real one."""
    requests = S3Requests().install(monkeypatch)
    requests.answer["GetObject"] = (400, "ExpiredToken", "The provided token has expired.")

    with pytest.raises(AwsAccessError, match="ExpiredToken") as raised:
        resolve(MOBILENET, "ml.g4dn.xlarge", REGION, CONN)
    assert raised.value.kind == "credentials" and len(requests.sent) == 1


def test_a_connection_without_credentials_is_a_missing_credentials_problem(s3_metadata, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(s3_metadata, login=None))

    with pytest.raises(AwsAccessError, match="gives no usable AWS credentials") as raised:
        list_models("task == ic", REGION, CONN)
    assert raised.value.kind == "missing credentials" and "login" in str(raised.value)


def test_an_endpoint_that_cannot_be_reached_is_one_region_problem(s3_metadata, monkeypatch):
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{unused.getsockname()[1]}"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(closed))
    requests = S3Requests().install(monkeypatch)

    with pytest.raises(AwsAccessError, match="cannot reach AWS in region 'us-west-2'") as raised:
        list_models("task == ic", REGION, CONN)
    assert raised.value.kind == "region" and "endpoint_url" in str(raised.value)
    assert len(requests.sent) == 3  # LOOKUP_RETRIES: a few attempts, not the connection's twenty
