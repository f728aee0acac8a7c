"""The docker-compose deployment (SageMaker backend), checked without a Docker engine.

docker-compose.yaml is read with PyYAML (anchors and `<<` merges resolved) and compared with
the shape of Airflow's official compose file for 3.x; the Dockerfile, requirements.txt,
.dockerignore and .env.example are read as text. One test runs the SageMaker code path the
way the image has it: the aws_default connection from the compose file's JSON, without PyTorch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
BASE_IMAGE = "apache/airflow:3.3.2-python3.11"

# Official service names and what each runs (the image's entrypoint prefixes `airflow`).
COMMANDS = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
}
AIRFLOW_SERVICES = [*COMMANDS, "airflow-init"]
SERVICES = {"postgres", "redis", *AIRFLOW_SERVICES}
# Project folders every Airflow container must see, and where (the DAG resolves paths against dags/..).
PROJECT_MOUNTS = {"dags": "/opt/airflow/dags", "plugins": "/opt/airflow/plugins", "include": "/opt/airflow/include"}
# Folders Airflow writes at run time: created by the init, never committed.
RUNTIME_FOLDERS = {"logs", "config"}
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
CREDENTIAL_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "login", "password",
                   "session_kwargs", "profile_name"}
HEAVY_MODULES = ("torch", "torchvision", "timm", "safetensors", "sklearn")

VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE.name} is missing"
    return yaml.safe_load(compose_text())


def variables(text: str) -> list[re.Match]:
    """The `${...}` compose substitutes; `$$` is compose's escape for a literal `$`."""
    return list(VARIABLE.finditer(text.replace("$$", "")))


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """What compose makes of a value: `${X:-d}` is d unless X is given; a required one is `<X>`."""
    values = values or {}

    def one(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if values.get(name):
            return values[name]
        return arg if op in (":-", "-") else f"<{name}>"

    return VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def command_words(service: dict) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command or [])


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume, with the defaults substituted."""
    found = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"long-syntax volume {volume!r}: this test reads the short syntax only"
        parts = substitute(volume).split(":")
        assert len(parts) in (2, 3), f"volume {volume!r} is not SOURCE:TARGET[:MODE]"
        found.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    return found


def in_project(source: str) -> Path | None:
    """The repository path a bind mount's source names, or None when it is outside the project."""
    if source == "." or source.startswith("./"):
        return (ROOT / source).resolve()
    return None


def init_script(compose: dict) -> str:
    init = compose["services"]["airflow-init"]
    words = command_words(init)
    entrypoint = init.get("entrypoint")
    assert entrypoint in ("/bin/bash", "bash", ["/bin/bash"], ["bash"]) and words[:1] == ["-c"], (
        f"airflow-init must run a bash script (entrypoint /bin/bash, command [-c, SCRIPT]); got {entrypoint!r} {words[:1]!r}")
    return words[-1]


def test_the_services_are_the_official_ones(compose):
    services = set(compose.get("services", {}))
    missing = SERVICES - services
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)} (have {sorted(services)})"
    anchors = {key for key in compose if key.startswith("x-")}
    assert "x-airflow-common" in anchors, "the Airflow services should share an x-airflow-common block"


def test_each_airflow_service_runs_the_built_image_and_its_command(compose):
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        build = services[name].get("build")
        assert build, f"{name}: no `build:`: the services run the image built from the Dockerfile"
        context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (
            build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE.resolve(), (
            f"{name}: builds {context}/{dockerfile}, not the project's Dockerfile")
        image = substitute(str(services[name].get("image", "")))
        assert not image.startswith("apache/airflow"), (
            f"{name}: image {image!r} is the stock one: tag the built image with a name of its own")
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (services[name].get("environment") or {}), (
            f"{name}: requirements are built into the image, not installed at start")
    for name, expected in COMMANDS.items():
        assert command_words(services[name]) == expected, (
            f"{name}: runs {command_words(services[name])!r}, expected {expected!r}")
    assert "8080:8080" in [str(port) for port in services["airflow-apiserver"].get("ports", [])], (
        "the API server (and UI) must be published on port 8080")


def test_the_init_migrates_then_imports_the_projects_pools(compose):
    init = compose["services"]["airflow-init"]
    script = init_script(compose)
    environment = init.get("environment") or {}
    assert str(environment.get("_AIRFLOW_DB_MIGRATE")).lower() == "true", "airflow-init must set _AIRFLOW_DB_MIGRATE"
    assert str(environment.get("_AIRFLOW_WWW_USER_CREATE")).lower() == "true", "airflow-init must create the admin user"
    migrate = [match.start() for match in re.finditer(r"/entrypoint airflow |airflow db migrate", script)]
    pools = re.search(r"airflow pools import (\S+)", script)
    assert migrate, "the init script never runs the entrypoint (which migrates) nor `airflow db migrate`"
    assert pools, "the init script does not run `airflow pools import`"
    assert migrate[0] < pools.start(), "the pools are imported before the database is migrated"
    assert re.search(r"^\s*set -[a-z]*e", script, re.MULTILINE), (
        "the init script must stop at the first failure (set -e), so a failed pools import fails the init")
    target = PurePosixPath(substitute(pools[1]))
    for source, mounted, _ in mounts(init):
        if target.is_relative_to(mounted) and in_project(source):
            pools_file = in_project(source) / target.relative_to(mounted)
            break
    else:
        raise AssertionError(f"{target} is not under any folder the init mounts from the project")
    assert pools_file.is_file(), f"the init imports {target}, which is {pools_file}: no such file in the repository"
    defined = json.loads(pools_file.read_text())
    assert defined and all("slots" in pool for pool in defined.values()), f"{pools_file}: no pools, or a pool without slots"


def test_the_project_folders_are_mounted_and_exist(compose):
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target, mode in mounts(service):
            path = in_project(source)
            if path is not None:
                relative = path.relative_to(ROOT).as_posix()
                if relative in RUNTIME_FOLDERS:
                    assert relative in ignored, f"{name}: {relative}/ is written at run time and must be git-ignored"
                else:
                    assert path.is_dir(), f"{name}: mounts {source}, which does not exist in the repository"
            elif not source.startswith(("/", "~")):
                assert source in named, f"{name}: volume {source!r} is not declared under the top-level volumes"
            elif ".aws" in source:
                assert mode == "ro", f"{name}: the AWS config folder {source} must be mounted read-only"
        if name in AIRFLOW_SERVICES:
            by_target = {target: in_project(source) for source, target, _ in mounts(service)}
            for folder, target in PROJECT_MOUNTS.items():
                assert by_target.get(target) == ROOT / folder, (
                    f"{name}: ./{folder} must be mounted at {target} (mounted there: {by_target.get(target)})")


def test_the_environment_has_executor_database_broker_and_the_library(compose):
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        environment = service.get("environment") or {}
        expected = {
            "AIRFLOW__CORE__EXECUTOR": r"CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": r"postgresql\+psycopg2://\w+:[^@]*@postgres(:5432)?/\w+",
            "AIRFLOW__CELERY__RESULT_BACKEND": r"db\+postgresql://\w+:[^@]*@postgres(:5432)?/\w+",
            "AIRFLOW__CELERY__BROKER_URL": r"redis://:?[^@]*@redis:6379/\d+",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": r"http://airflow-apiserver:8080/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": r"airflow\.[\w.]+AuthManager",
            "AIRFLOW__CORE__LOAD_EXAMPLES": r"(?i)false",
            "AIRFLOW__API_AUTH__JWT_SECRET": r"\$\{AIRFLOW__API_AUTH__JWT_SECRET(:?[-?][^}]*)?\}",
            "MODEL_SELECTION_RESULTS_URI": r"\$\{MODEL_SELECTION_RESULTS_URI(:?[-?][^}]*)?\}",
            "AIRFLOW_VAR_MODEL_SELECTION_ROLE_ARN": r"\$\{AIRFLOW_VAR_MODEL_SELECTION_ROLE_ARN(:?[-?][^}]*)?\}",
        }
        for variable, pattern in expected.items():
            value = environment.get(variable)
            assert value is not None and re.fullmatch(pattern, str(value)), (
                f"{name}: {variable} is {value!r}, expected to match {pattern!r}")
        plugins = PROJECT_MOUNTS["plugins"]
        python_path = str(environment.get("PYTHONPATH", "")).split(":")
        assert plugins in python_path, f"{name}: PYTHONPATH {python_path} lacks {plugins}, where model_selection is"
        assert (ROOT / "plugins" / "model_selection" / "__init__.py").is_file()


def test_the_aws_connection_has_adaptive_retries_and_no_credentials(compose):
    for name in AIRFLOW_SERVICES:
        environment = compose["services"][name].get("environment") or {}
        raw = environment.get("AIRFLOW_CONN_AWS_DEFAULT")
        assert raw, f"{name}: no AIRFLOW_CONN_AWS_DEFAULT (the SageMaker backend's aws_default connection)"
        try:
            connection = json.loads(substitute(raw))
        except json.JSONDecodeError as error:
            raise AssertionError(f"{name}: AIRFLOW_CONN_AWS_DEFAULT is not JSON once substituted: {error}\n{raw}") from error
        assert connection.get("conn_type") == "aws", f"{name}: conn_type {connection.get('conn_type')!r}, expected 'aws'"
        extra = connection.get("extra") or {}
        retries = (extra.get("config_kwargs") or {}).get("retries") or {}
        assert retries.get("mode") == "adaptive", f"{name}: the connection's retries {retries} are not adaptive"
        attempts = retries.get("total_max_attempts", retries.get("max_attempts", 0))
        assert attempts >= 10, f"{name}: {attempts} attempts: throttled SageMaker calls would fail too soon"
        region = json.loads(raw).get("extra", {}).get("region_name")  # before substitution
        assert re.fullmatch(r"\$\{AWS_DEFAULT_REGION(:?[-?][^}]*)?\}", str(region)), (
            f"{name}: the connection's region_name {region!r} should be ${{AWS_DEFAULT_REGION}}")

        def keys(value) -> set[str]:
            if isinstance(value, dict):
                return {str(key).lower() for key in value} | set().union(*map(keys, value.values()))
            return set()

        leaked = keys(connection) & CREDENTIAL_KEYS
        assert not leaked, f"{name}: the connection holds credentials {sorted(leaked)}: boto3's chain must find them"
        for variable in CREDENTIAL_VARIABLES:
            assert variable in environment and environment[variable] is None, (
                f"{name}: {variable} must be passed through with no value (from .env or the shell), "
                f"not set to {environment.get(variable)!r}")


def test_no_secret_is_written_in_the_deployment_files(compose):
    secret_looking = {
        "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
        "a connection credential key": re.compile(r"aws_secret_access_key|aws_session_token"),
        "a 40-character secret key": re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    }
    for path in (COMPOSE_FILE, ENV_EXAMPLE, DOCKERFILE):
        text = path.read_text()
        for what, pattern in secret_looking.items():
            found = pattern.search(text)
            assert not found, f"{path.name} holds {what}: {found.group(0)!r}"
    for name in AIRFLOW_SERVICES:
        for variable, value in (compose["services"][name].get("environment") or {}).items():
            if re.search(r"SECRET|TOKEN|_KEY(_ID)?$|PASSWORD", variable) and value is not None:
                assert re.fullmatch(r"\$\{[^}]+\}", str(value)), (
                    f"{name}: {variable} has a literal value {value!r}: take it from .env")
    assigned = [line for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"\s*[A-Za-z_]\w*\s*=\s*\S", line)]
    assert not assigned, f".env.example must leave every value empty (a template, never real values): {assigned}"
    gitignored = (ROOT / ".gitignore").read_text().splitlines()
    dockerignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in gitignored, ".env (credentials) must be git-ignored"
    assert ".env" in dockerignored, ".env (credentials) must stay out of the image's build context"


def test_every_dollar_is_a_compose_variable_or_escaped():
    text = compose_text().replace("$$", "")
    stray = [text[max(0, match.start() - 30): match.start() + 30] for match in re.finditer(r"\$(?!\{)", text)]
    assert not stray, f"a `$` compose would substitute (write $$ for the shell's own): {stray}"
    broken = [match.group(0) for match in re.finditer(r"\$\{[^}]*\}", text) if not VARIABLE.fullmatch(match.group(0))]
    assert not broken, f"malformed substitutions: {broken}"


def test_services_wait_for_healthy_dependencies(compose):
    services = compose["services"]
    for name in ["postgres", "redis", *COMMANDS]:
        test = (services[name].get("healthcheck") or {}).get("test")
        assert test, f"{name}: no healthcheck"
    for name in AIRFLOW_SERVICES:
        depends_on = services[name].get("depends_on")
        assert isinstance(depends_on, dict), f"{name}: depends_on must give conditions, got {depends_on!r}"
        for dependency in ("postgres", "redis"):
            assert (depends_on.get(dependency) or {}).get("condition") == "service_healthy", (
                f"{name}: must wait for {dependency} to be healthy")
        if name != "airflow-init":
            assert (depends_on.get("airflow-init") or {}).get("condition") == "service_completed_successfully", (
                f"{name}: must wait for airflow-init to complete successfully")
    worker = services["airflow-worker"]["depends_on"]
    assert (worker.get("airflow-apiserver") or {}).get("condition") == "service_healthy", (
        "the worker reaches the execution API: it must wait for a healthy airflow-apiserver")
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency}, which is no service"
            if (condition or {}).get("condition") == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits for {dependency} to be healthy; it has no healthcheck"


def test_the_dockerfile_extends_the_official_image_with_requirements_and_no_torch():
    text = DOCKERFILE.read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    bases = [line.split()[1] for line in instructions if line.upper().startswith("FROM ")]
    assert bases == [BASE_IMAGE], f"the Dockerfile must be FROM {BASE_IMAGE} (and only that), found {bases}"
    copied = [line for line in instructions if re.match(r"(COPY|ADD)\s.*\brequirements\.txt\b", line)]
    assert copied, "the Dockerfile does not copy requirements.txt"
    installs = [line for line in instructions if re.match(r"RUN\s.*pip install\b.*-r\s+\S*requirements\.txt\b", line)]
    assert installs, "the Dockerfile does not `pip install -r requirements.txt`"
    assert re.search(r'apache-airflow==\$\{?AIRFLOW_VERSION\}?', installs[0]), (
        "pin apache-airflow to the image's AIRFLOW_VERSION in the install, as Airflow's docs extend the image")
    assert not any("requirements-local" in line for line in instructions), "the image must not install the local (PyTorch) training stack"
    requirements = [re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0].lower()
                    for line in (ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    heavy = [name for name in requirements if name in HEAVY_MODULES or name == "scikit-learn"]
    assert not heavy, f"requirements.txt (the image's) holds the local training stack: {heavy}"
    pinned = re.search(r"^apache-airflow==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned and BASE_IMAGE.split(":")[1].startswith(pinned[1] + "-"), (
        f"requirements.txt pins apache-airflow {pinned[1] if pinned else None}, the image is {BASE_IMAGE}")
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for path in (".venv", ".git", ".airflow", "include/datasets"):
        assert path in ignored, f".dockerignore must exclude {path}"


def test_env_example_names_every_variable_a_person_provides(compose):
    text = compose_text()
    required = {match["name"] for match in variables(text) if match["op"] in (None, ":?", "?")}
    passed_through = {variable for name in AIRFLOW_SERVICES
                      for variable, value in (compose["services"][name].get("environment") or {}).items() if value is None}
    named = set(re.findall(r"^\s*#?\s*([A-Za-z_]\w*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    missing = (required | passed_through) - named
    assert not missing, f".env.example does not name {sorted(missing)}, which docker-compose.yaml takes from .env"


def test_airflow_reads_the_connection_and_parses_the_dag_without_torch(compose, tmp_path):
    """The image's SageMaker path: the DAG parses, the backend's modules import and the client is built
    from the compose file's aws_default, with no PyTorch installed."""
    environment = compose["services"]["airflow-worker"]["environment"]
    connection = substitute(environment["AIRFLOW_CONN_AWS_DEFAULT"], {"AWS_DEFAULT_REGION": "eu-west-1"})
    script = f"""
import importlib, importlib.util, json, sys
for name in {HEAVY_MODULES!r}:
    sys.modules[name] = None  # the image has none of these
spec = importlib.util.spec_from_file_location("dag_file", {str(ROOT / "dags" / "image_classification_model_selection.py")!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
for module in ("planning", "dag_tasks", "hooks", "operators", "sensors", "triggers", "collection", "report",
               "results", "lanes", "ui", "backends.sagemaker", "backends.jumpstart"):
    importlib.import_module("model_selection." + module)
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from model_selection.hooks import tuning_job_hook
wrapper = AwsBaseHook(aws_conn_id="aws_default", client_type="sagemaker").conn_config
client = tuning_job_hook(dict(backend="sagemaker", aws_conn_id="aws_default", region_name=None)).conn
from model_selection.planning import plan_study
from model_selection.study import StudyError
try:
    plan_study({{"backend": "local", "model_ids": ["resnet18"], "results_uri": {str(tmp_path / "results")!r},
                "dataset": {{"name": "d", "training": {str(tmp_path)!r}}}}}, __import__("pathlib").Path({str(ROOT)!r}),
               {str(tmp_path / "jobs")!r})
    local_plan = "planned"
except StudyError as error:
    local_plan = str(error)
print(json.dumps({{"local_plan": local_plan, "retries": client.meta.config.retries, "region": client.meta.region_name,
                  "keys_in_connection": [wrapper.aws_access_key_id, wrapper.aws_secret_access_key]}}))
"""
    plugins = ROOT / "plugins"
    child_environment = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PYTHONPATH": str(plugins), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_CONN_AWS_DEFAULT": connection,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }
    result = subprocess.run([sys.executable, "-c", script], check=False, env=child_environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"the SageMaker path failed without torch:\n{result.stderr[-4000:]}"
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["region"] == "eu-west-1", seen
    assert seen["retries"].get("mode") == "adaptive", seen
    assert seen["retries"].get("total_max_attempts", 0) >= 10, seen
    assert seen["keys_in_connection"] == [None, None], seen
    # a worker without PyTorch: backend local is a plan problem naming what is missing, not an ImportError
    assert "lacks torch, torchvision, timm (requirements-local.txt)" in seen["local_plan"], seen
