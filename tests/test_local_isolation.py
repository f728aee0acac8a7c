"""The local backend touches only its own: allow-listed environments, and no signal to a reused pid."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_local_backend import client, data, request, wait_for  # noqa: F401 - client and data are fixtures

from model_selection.local.jobstore import now
from model_selection.local.supervisor import PLUGINS_DIR, process_environment, signal_recorded_process_group

CANARY_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW__CORE__FERNET_KEY", "SOME_API_TOKEN")


def environment_dumping_python(folder: Path) -> Path:
    """A stand-in for `$MODEL_SELECTION_LOCAL_PYTHON`: writes its whole environment to a file of `folder`,
    prints it too when it is a trainer (so it lands in the trainer's log), then runs the real python."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "python"
    script.write_text(
        "#!/bin/sh\n"
        f'dump="{folder}/$$.env"\n'
        'echo "ARGUMENTS=$*" > "$dump"\n'
        'env >> "$dump"\n'
        'case "$*" in *model_selection.local.train*) echo "--- environment ---"; env; echo "--- end ---";; esac\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_supervisors_and_trainers_get_no_secret_from_the_environment(client, data, tmp_path, monkeypatch):
    canaries = {name: secrets.token_hex(16) for name in CANARY_VARIABLES}
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    probe = secrets.token_hex(8)
    monkeypatch.setenv("MODEL_SELECTION_ISOLATION_PROBE", probe)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker's cap on threads reaches the trainer, which uses it
    dumps = tmp_path / "environment-dumps"
    monkeypatch.setenv("MODEL_SELECTION_LOCAL_PYTHON", str(environment_dumping_python(dumps)))

    client.create_hyper_parameter_tuning_job(**request("isolated", data, rates=(1.0,)))
    assert wait_for(client, "isolated")["HyperParameterTuningJobStatus"] == "Completed"

    environments = {path: path.read_text() for path in dumps.glob("*.env")}
    supervisors = [text for text in environments.values() if "model_selection.local.supervisor" in text]
    trainers = [text for text in environments.values() if "model_selection.local.train" in text]
    assert len(supervisors) == 1 and len(trainers) == 1, sorted(environments)
    (trial,) = client.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="isolated")["TrainingJobSummaries"]
    log = client.training_job_log(trial["TrainingJobName"])
    assert "--- environment ---" in log  # the trainer printed its whole environment into its log
    for text in (*supervisors, *trainers, log):
        lines = text.splitlines()
        assert any(line.startswith("PATH=") for line in lines)
        assert f"MODEL_SELECTION_ISOLATION_PROBE={probe}" in lines
        assert "HF_HUB_OFFLINE=1" in lines
        assert any(line.startswith("PYTHONPATH=" + str(PLUGINS_DIR)) for line in lines)
    assert "OMP_NUM_THREADS=1" in log.splitlines() and ", 1 threads," in log

    scanned = [path for root in (client.store.root, dumps) for path in root.rglob("*") if path.is_file()]
    assert len(scanned) >= 8
    leaks = [f"{name} in {path}" for path in scanned for name, value in canaries.items()
             if value.encode() in path.read_bytes()]
    assert leaks == []
    names = {line.split("=", 1)[0] for text in environments.values() for line in text.splitlines() if "=" in line}
    assert not {name for name in names if name.startswith(("AWS_", "AIRFLOW"))}


def test_a_hub_that_cannot_be_reached_makes_the_trainers_run_offline(client, data, tmp_path, monkeypatch):
    """Without the probe each trainer would wait about 50 s for huggingface_hub's retries (measured here)."""
    import socket

    from model_selection.local.supervisor import hub_reachable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused
        with socket.create_server(("127.0.0.1", 0)) as listening:
            monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
            assert hub_reachable() is True
        monkeypatch.setenv("HF_ENDPOINT", unreachable)
        assert hub_reachable() is False
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        dumps = tmp_path / "environment-dumps"
        monkeypatch.setenv("MODEL_SELECTION_LOCAL_PYTHON", str(environment_dumping_python(dumps)))
        client.create_hyper_parameter_tuning_job(**request("offline", data, rates=(1.0,)))
        assert wait_for(client, "offline")["HyperParameterTuningJobStatus"] == "Completed"
    trainers = [path.read_text() for path in dumps.glob("*.env") if "model_selection.local.train" in path.read_text()]
    assert len(trainers) == 1 and "HF_HUB_OFFLINE=1" in trainers[0].splitlines()
    assert f"HF_ENDPOINT={unreachable}" in trainers[0].splitlines()
    assert "the model hub cannot be reached" in (client.store.tuning_dir("offline") / "supervisor.log").read_text()


def test_the_allow_list_passes_what_training_needs_and_nothing_else():
    source = {
        "PATH": "/usr/bin", "HOME": "/home/x", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "TMPDIR": "/tmp",
        "PYTHONPATH": f"/elsewhere{os.pathsep}{PLUGINS_DIR}", "MODEL_SELECTION_MAX_TRAINERS": "2",
        "CUDA_VISIBLE_DEVICES": "0", "NVIDIA_VISIBLE_DEVICES": "all", "CUDA_HOME": "/usr/local/cuda",
        "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "TORCH_HOME": "/c/torch",
        "HF_HOME": "/c/hf", "HF_HUB_OFFLINE": "1", "HUGGINGFACE_HUB_CACHE": "/c/hub", "TIMM_CACHE": "/c",
        "XDG_CACHE_HOME": "/c", "SM_MODEL_DIR": "/opt/ml/model",
    }
    secrets_ = {
        "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "x", "AWS_PROFILE": "x",
        "AIRFLOW_CONN_AWS_DEFAULT": "x", "AIRFLOW__CORE__FERNET_KEY": "x", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "x",
        "AIRFLOW_VAR_ANYTHING": "x", "SOME_API_TOKEN": "x", "GITHUB_TOKEN": "x", "DB_PASSWORD": "x", "APP_SECRET": "x",
        "HF_TOKEN": "x", "HF_HUB_TOKEN": "x", "NVIDIA_API_KEY": "x", "MODEL_SELECTION_SECRET": "x",
        "SM_API_KEY": "x", "USER": "x", "SSH_AUTH_SOCK": "x", "VIRTUAL_ENV": "x",
    }
    environment = process_environment({**source, **secrets_})
    assert set(environment) == set(source)
    assert environment["PYTHONPATH"] == f"{PLUGINS_DIR}{os.pathsep}/elsewhere"  # the plugins first, once
    assert process_environment({})["PYTHONPATH"] == str(PLUGINS_DIR)


@pytest.fixture
def bystander():
    """An unrelated process leading its own process group, as a reused pid's new owner would."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def orphaned_job(client, data, name: str, pid: int, create_time: float | None) -> str:
    """A job recorded as running, whose supervisor is gone, with one trial recorded at `pid`."""
    trial = f"{name}-001-00000000"
    client.store.create_tuning_job(name, request(name, data), {
        "HyperParameterTuningJobName": name, "HyperParameterTuningJobStatus": "InProgress",
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:local:000000000000:hyper-parameter-tuning-job/{name}",
        "CreationTime": now(), "LastModifiedTime": now(), "TrainingJobNames": [trial], "SupervisorStartBy": 0})
    trial_state = {"TrainingJobName": trial, "TuningJobName": name, "TrainingJobStatus": "InProgress",
                   "SecondaryStatus": "Training", "HyperParameters": {}, "TunedHyperParameters": {},
                   "CreationTime": now(), "LastModifiedTime": now(), "Pid": pid, "Slot": 0}
    if create_time is not None:
        trial_state["PidCreateTime"] = create_time
    client.store.create_training_job(trial, trial_state)
    return trial


@pytest.mark.parametrize("recorded", ["another process's start time", "no start time"])
def test_an_orphaned_trial_whose_pid_was_reused_is_not_signalled(client, data, bystander, recorded):
    create_time = psutil.Process(bystander.pid).create_time() - 3600 if recorded != "no start time" else None
    trial = orphaned_job(client, data, "reused-pid", bystander.pid, create_time)
    description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="reused-pid")
    assert description["HyperParameterTuningJobStatus"] == "Failed"
    assert client.describe_training_job(TrainingJobName=trial)["TrainingJobStatus"] == "Failed"
    time.sleep(0.3)
    assert bystander.poll() is None  # still running: nothing was sent to it


def test_an_orphaned_trial_that_still_runs_is_killed(client, data, bystander):
    trial = orphaned_job(client, data, "orphan", bystander.pid, psutil.Process(bystander.pid).create_time())
    assert client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="orphan")[
        "HyperParameterTuningJobStatus"] == "Failed"
    assert client.describe_training_job(TrainingJobName=trial)["TrainingJobStatus"] == "Failed"
    assert bystander.wait(timeout=10) == -signal.SIGKILL


def test_signals_reach_a_recorded_process_only_while_it_is_that_process(bystander):
    started = psutil.Process(bystander.pid).create_time()
    for wrong in (None, started - 5, started + 5):
        assert not signal_recorded_process_group(bystander.pid, wrong, signal.SIGTERM)
    time.sleep(0.2)
    assert bystander.poll() is None
    assert signal_recorded_process_group(bystander.pid, started + 0.5, signal.SIGTERM)
    assert bystander.wait(timeout=10) == -signal.SIGTERM
    assert not signal_recorded_process_group(bystander.pid, started, signal.SIGTERM)  # ended: nothing to send
