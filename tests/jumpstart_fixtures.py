"""JumpStart metadata in the format sagemaker 3.x parses, written locally or into a (moto) S3 bucket.

The layout is the JumpStart content bucket's: `models_manifest.json` lists one header per model
version (`model_id, version, min_version, spec_key`) and each `spec_key` is a spec JSON
(`sagemaker.core.jumpstart.types.JumpStartModelSpecs`). The specs describe the TensorFlow
image-classification algorithm (hyperparameters and defaults as in the SDK's own spec), with
images, weights and scripts for one region only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_VERSION = "3.0.0"
MIN_SDK_VERSION = "2.189.0"
ECR_ACCOUNT = "763104351884"
TRAINING_INSTANCE_TYPES = [
    "ml.m5.xlarge", "ml.m5.2xlarge", "ml.c5.2xlarge",
    "ml.p3.2xlarge", "ml.p3.8xlarge", "ml.p3.16xlarge",
    "ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g5.xlarge", "ml.g5.2xlarge",
]
TRAINING_SCRIPT_KEY = "source-directory-tarballs/tensorflow/transfer_learning/ic/v2.1.0/sourcedir.tar.gz"
# A Marketplace model: the SDK's model listing indexes the proprietary manifest, so it may not be empty.
PROPRIETARY_MANIFEST = [{
    "model_id": "ai21-summarization",
    "version": "1.0.0",
    "min_version": "2.80.0",
    "spec_key": "proprietary-models/ai21-summarization/proprietary_specs_1.0.0.json",
}]


def _hyperparameter(name: str, type_: str, default: Any, scope: str = "algorithm", **limits: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "default": default, "scope": scope, **limits}


def _choice(name: str, default: str, options: list[str]) -> dict[str, Any]:
    return _hyperparameter(name, "text", default, options=options)


BOOLEAN = ["True", "False"]
HYPERPARAMETERS = [
    _choice("train_only_top_layer", "True", BOOLEAN),
    _hyperparameter("epochs", "int", 5, min=1),
    _hyperparameter("batch_size", "int", 32, min=1),
    _choice("optimizer", "adam", ["adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta"]),
    _hyperparameter("learning_rate", "float", 0.001, min=1e-06, max=0.5),
    _hyperparameter("beta_1", "float", 0.9, min=1e-08, max=0.999999999),
    _hyperparameter("beta_2", "float", 0.999, min=1e-08, max=0.999999999),
    _hyperparameter("momentum", "float", 0.9, min=0.0, max=1.0),
    _hyperparameter("epsilon", "float", 1e-07, min=1e-08, max=1.0),
    _hyperparameter("rho", "float", 0.95, min=0.0, max=1.0),
    _hyperparameter("initial_accumulator_value", "float", 0.1, min=0.0, max=0.999999999),
    _choice("reinitialize_top_layer", "Auto", ["Auto", "True", "False"]),
    _choice("early_stopping", "False", BOOLEAN),
    _hyperparameter("early_stopping_patience", "int", 5, min=1),
    _hyperparameter("early_stopping_min_delta", "float", 0.0, min=0.0),
    _hyperparameter("dropout_rate", "float", 0.2, min=0.0, max=1.0),
    _hyperparameter("regularizers_l2", "float", 0.0001, min=0.0),
    _hyperparameter("label_smoothing", "float", 0.1, min=0.0, max=1.0),
    _choice("image_resize_interpolation", "bilinear",
            ["bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic"]),
    _choice("augmentation", "False", BOOLEAN),
    _choice("augmentation_random_flip", "horizontal_and_vertical",
            ["none", "horizontal", "vertical", "horizontal_and_vertical"]),
    _hyperparameter("augmentation_random_rotation", "float", 0.2, min=-1.0, max=1.0),
    _hyperparameter("augmentation_random_zoom", "float", 0.1, min=-1.0, max=1.0),
    _choice("binary_mode", "False", BOOLEAN),
    _choice("eval_metric", "accuracy", ["accuracy", "precision", "recall", "auc", "prc"]),
    _hyperparameter("validation_split_ratio", "float", 0.2, min=0.0, max=1.0),
    _hyperparameter("random_seed", "int", 123, min=0),
    _hyperparameter("sagemaker_submit_directory", "text", "/opt/ml/input/data/code/sourcedir.tar.gz", "container"),
    _hyperparameter("sagemaker_program", "text", "transfer_learning.py", "container"),
    _hyperparameter("sagemaker_container_log_level", "text", "20", "container"),
]


def _instance_type_variants(region: str, repository: str, version: str) -> dict[str, Any]:
    """Images per instance family, through the per-region aliases the SDK resolves ("$gpu_ecr_uri_2")."""
    registry = f"{ECR_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repository}"
    families = {"c5": "cpu", "m5": "cpu", "p3": "gpu", "g4dn": "gpu", "g5": "gpu"}
    return {
        "regional_aliases": {region: {
            "cpu_ecr_uri_1": f"{registry}:{version}-cpu-py39",
            "gpu_ecr_uri_2": f"{registry}:{version}-gpu-py39",
        }},
        "variants": {
            family: {"regional_properties": {"image_uri": "$cpu_ecr_uri_1" if kind == "cpu" else "$gpu_ecr_uri_2"}}
            for family, kind in families.items()
        },
    }


def model_spec(model_id: str, region: str = "us-west-2") -> dict[str, Any]:
    """One model's spec: trainable, TensorFlow 2.9 training images, weights and script in `region` only."""
    name = model_id.removeprefix("tensorflow-ic-")
    return {
        "model_id": model_id,
        "version": MODEL_VERSION,
        "min_sdk_version": MIN_SDK_VERSION,
        "training_supported": True,
        "incremental_training_supported": True,
        "hosting_ecr_specs": {"framework": "tensorflow", "framework_version": "2.8", "py_version": "py39"},
        "hosting_artifact_key": f"tensorflow-infer/v2.0.0/infer-{model_id}.tar.gz",
        "hosting_script_key": "source-directory-tarballs/tensorflow/inference/ic/v2.0.0/sourcedir.tar.gz",
        "hosting_instance_type_variants": _instance_type_variants(region, "tensorflow-inference", "2.8"),
        "inference_vulnerable": False,
        "inference_dependencies": [],
        "inference_vulnerabilities": [],
        "training_vulnerable": False,
        "training_dependencies": [],
        "training_vulnerabilities": [],
        "deprecated": False,
        "hyperparameters": HYPERPARAMETERS,
        "training_script_key": TRAINING_SCRIPT_KEY,
        "training_ecr_specs": {"framework": "tensorflow", "framework_version": "2.9", "py_version": "py39"},
        "training_artifact_key": f"tensorflow-training/v2.0.0/train-{model_id}.tar.gz",
        "training_instance_type_variants": _instance_type_variants(region, "tensorflow-training", "2.9"),
        "inference_environment_variables": [
            {"name": "SAGEMAKER_PROGRAM", "type": "text", "default": "inference.py", "scope": "container",
             "required_for_model_class": True},
        ],
        "metrics": [{"Name": "tensorflow-ic:val-accuracy", "Regex": "- val_accuracy: ([0-9\\.]+)"}],
        "default_inference_instance_type": "ml.m5.large",
        "supported_inference_instance_types": ["ml.m5.large", "ml.m5.xlarge", "ml.c5.xlarge", "ml.p3.2xlarge", "ml.g4dn.xlarge"],
        "default_training_instance_type": "ml.p3.2xlarge",
        "supported_training_instance_types": TRAINING_INSTANCE_TYPES,
        "estimator_kwargs": {"encrypt_inter_container_traffic": True},
        "training_volume_size": 256,
        "training_enable_network_isolation": True,
        "inference_enable_network_isolation": True,
        "resource_name_base": f"tf-ic-{name}"[:40],
    }


def write_jumpstart_metadata(root: Path, models: list[str], region: str = "us-west-2") -> dict[str, str]:
    """Writes the manifest and one spec per model under `root`; returns the environment to set.

    The environment points the SDK at these files and gives boto3 a region and dummy
    credentials, with IMDS and the user's ~/.aws files out of reach, so nothing looks elsewhere.
    """
    manifest = []
    for model_id in models:
        spec_key = f"community_models/{model_id}/specs_v{MODEL_VERSION}.json"
        manifest.append({"model_id": model_id, "version": MODEL_VERSION, "min_version": MIN_SDK_VERSION,
                         "spec_key": spec_key})
        (root / spec_key).parent.mkdir(parents=True, exist_ok=True)
        (root / spec_key).write_text(json.dumps(model_spec(model_id, region), indent=1))
    root.mkdir(parents=True, exist_ok=True)
    (root / "models_manifest.json").write_text(json.dumps(manifest, indent=1))
    return {
        "AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE": str(root),
        "AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE": str(root),
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(root / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
    }


def upload_jumpstart_metadata(root: Path, s3_client: Any, region: str = "us-west-2") -> str:
    """Copies what `write_jumpstart_metadata` wrote into the region's JumpStart content bucket.

    Adds a one-entry `proprietary-sdk-manifest.json`, which the SDK's model listing requires.
    Returns the bucket name.
    """
    bucket = f"jumpstart-cache-prod-{region}"
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3_client.create_bucket(Bucket=bucket, **location)
    for path in sorted(root.rglob("*.json")):
        s3_client.put_object(Bucket=bucket, Key=path.relative_to(root).as_posix(), Body=path.read_bytes())
    s3_client.put_object(Bucket=bucket, Key="proprietary-sdk-manifest.json", Body=json.dumps(PROPRIETARY_MANIFEST))
    return bucket


# -- the Airflow AWS connection, and a moto server that checks credentials ---------------------------

def aws_connection(endpoint: str | None = None, login: str | None = "testing", password: str | None = "testing",
                   region: str | None = "us-west-2", **extra: Any) -> str:
    """An Airflow AWS connection as AIRFLOW_CONN_... takes it (JSON)."""
    extra = {**({"region_name": region} if region else {}), **({"endpoint_url": endpoint} if endpoint else {}), **extra}
    connection: dict[str, Any] = {"conn_type": "aws", "extra": extra}
    if login is not None:
        connection.update(login=login, password=password)
    return json.dumps(connection)


def enforce_moto_auth(monkeypatch: Any, iam_client: Any, allowed: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
    """Creates one IAM user per entry of `allowed` (name -> allowed S3 resource ARNs, every s3 action), then
    makes the in-process moto server check every request's access key, signature and permissions.

    Returns name -> (access key id, secret). Undone by monkeypatch at the end of the test.
    """
    import moto.settings
    from moto.core.authorization import ActionAuthenticatorMixin

    keys = {}
    for name, resources in allowed.items():
        iam_client.create_user(UserName=name)
        if resources:
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}
            iam_client.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam_client.create_access_key(UserName=name)["AccessKey"]
        keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    return keys


def write_bogus_default_chain(root: Path, monkeypatch: Any) -> str:
    """Environment credentials and an AWS_PROFILE (which exists, in a credentials file) that AWS refuses.

    Whatever reads boto3's default chain gets these; returns their access key id prefix.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "credentials").write_text("[elsewhere]\naws_access_key_id = BOGUSPROFILEKEY\n"
                                      "aws_secret_access_key = bogus\n")
    (root / "config").write_text("[profile elsewhere]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(root / "config"))
    monkeypatch.setenv("AWS_PROFILE", "elsewhere")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "BOGUSENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "bogus")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return "BOGUS"


class S3Requests:
    """Every S3 request any botocore client sends from now on: (operation, access key id), or an answer to it.

    `answer[operation] = (status, code, message)` returns that S3 error (XML, as S3 sends it) instead
    of sending the request, so botocore parses it exactly as a real one.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self.answer: dict[str, tuple[int, str, str]] = {}

    def install(self, monkeypatch: Any) -> "S3Requests":
        import botocore.session

        create_client = botocore.session.Session.create_client

        def create_and_hook(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = create_client(session, *args, **kwargs)
            client.meta.events.register("before-send.s3.*", self)
            return client

        monkeypatch.setattr(botocore.session.Session, "create_client", create_and_hook)
        return self

    def __call__(self, request: Any, event_name: str, **kwargs: Any) -> Any:
        import re

        from botocore.awsrequest import AWSResponse

        operation = event_name.rsplit(".", 1)[-1]
        authorization = request.headers.get("Authorization") or b""
        authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
        found = re.search(r"Credential=([^/]+)/", authorization)
        self.sent.append((operation, found.group(1) if found else None))
        if operation in self.answer:
            status, code, message = self.answer[operation]
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                    "<RequestId>4442587FB7D0A2F9</RequestId></Error>").encode()
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Body(body))
        return None

    def keys(self) -> set[str | None]:
        return {key for _, key in self.sent}


class _Body:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs: Any) -> Any:
        yield self.body
