"""Runs one local training job (CreateTrainingJob) to its end, detached, as SageMaker's training toolkit would.

    python -m model_selection.local.training_job JOBS_ROOT TRAINING_JOB_NAME

The toolkit in SageMaker's framework images reads the hyperparameters `sagemaker_program` and
`sagemaker_submit_directory`, extracts that archive into /opt/ml/code and runs `python <program>`
there with SM_* variables. This does the same on this machine: the archive goes to `<job>/code`,
the program runs with cwd `<job>/code` and only that folder on PYTHONPATH (it imports the code it
ships, not this machine's plugins), SM_CHANNEL_<NAME> naming each channel's local folder and
SM_MODEL_DIR `<job>/model`, which is then packed into `<S3OutputPath>/<name>/output/model.tar.gz`,
as SageMaker packs /opt/ml/model. Its output goes to `<job>/log.txt`, this runner's to `runner.log`.
Unlike the toolkit it installs no requirements.txt: the local python has them (requirements-local.txt).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from model_selection.local.jobstore import JOBS_ROOT_VARIABLE, JobStore, now, read_json
from model_selection.local.supervisor import (
    POLL_SECONDS,
    PYTHON_VARIABLE,
    detach,
    end_process,
    failure_reason,
    hub_probe,
    local_path,
    offline_unless_hub_reachable,
    process_environment,
    start_recorded,
)

PROGRAM_HYPERPARAMETER = "sagemaker_program"
SUBMIT_DIRECTORY_HYPERPARAMETER = "sagemaker_submit_directory"
MODEL_ARCHIVE = "model.tar.gz"


def archive_members(path: Path) -> set[str]:
    """The normalised member names of a .tar.gz (`./x.py` is `x.py`); raises tarfile.TarError or OSError."""
    with tarfile.open(path, "r:gz") as archive:
        return {os.path.normpath(name) for name in archive.getnames()}


def model_artifacts_path(request: dict[str, Any]) -> Path:
    """`<S3OutputPath>/<TrainingJobName>/output/model.tar.gz`, where SageMaker leaves the packed model."""
    output = Path(local_path(request["OutputDataConfig"]["S3OutputPath"]))
    return output / request["TrainingJobName"] / "output" / MODEL_ARCHIVE


def user_hyperparameters(hyperparameters: dict[str, str]) -> dict[str, Any]:
    """The toolkit's SM_HPS: the hyperparameters less its own `sagemaker_*`, each JSON-decoded where it can be."""

    def decoded(value: str) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            return value

    return {name: decoded(value) for name, value in hyperparameters.items() if not name.startswith("sagemaker_")}


def pack_folder(folder: Path, target: Path) -> None:
    """`folder`'s files as a .tar.gz at `target` (names relative to `folder`), written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with tarfile.open(partial, "w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=path.relative_to(folder).as_posix())
    os.replace(partial, target)


class TrainingJobRunner:
    """Extracts the job's code, runs its program, stops it when asked or out of time, records the outcome."""

    def __init__(self, store: JobStore, name: str):
        self.store = store
        self.name = name
        self.folder = store.training_dir(name)
        self.request: dict[str, Any] = read_json(self.folder / "request.json")
        self.hyperparameters: dict[str, str] = self.request.get("HyperParameters") or {}

    def log(self, message: str) -> None:
        print(f"{now()} {message}", flush=True)

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # noqa: BLE001 - whatever breaks, the job must end Failed, not InProgress
            self.log(f"runner error: {type(error).__name__}: {error}")
            self._finish("Failed", reason=f"the local training job runner failed: {type(error).__name__}: {error}")
            raise

    def _run(self) -> None:
        self._update(SecondaryStatus="Downloading", TrainingStartTime=now())
        code = self.folder / "code"
        with tarfile.open(local_path(self.hyperparameters[SUBMIT_DIRECTORY_HYPERPARAMETER]), "r:gz") as archive:
            archive.extractall(code, filter="data")  # no absolute paths, links out or device files
        if self._stop_requested():
            self._finish("Stopped")
            return
        program = self.hyperparameters[PROGRAM_HYPERPARAMETER]
        arguments = [item for name, value in sorted(user_hyperparameters(self.hyperparameters).items())
                     for item in (f"--{name}", self.hyperparameters[name])]  # as the toolkit passes them
        command = [os.environ.get(PYTHON_VARIABLE, sys.executable), program, *arguments]
        process, create_time = start_recorded(command, self.folder, self._environment(code), cwd=code)
        self._update(SecondaryStatus="Training")
        self.log(f"started python {program} (pid {process.pid}) in {code}")
        started = time.monotonic()
        max_runtime = self.request["StoppingCondition"].get("MaxRuntimeInSeconds")
        stopped_because = None
        while process.poll() is None and stopped_because is None:
            if self._stop_requested():
                stopped_because = "Stopped"
            elif max_runtime and time.monotonic() - started > max_runtime:
                stopped_because = "MaxRuntimeExceeded"
            else:
                time.sleep(POLL_SECONDS)
        if stopped_because:
            self.log(f"stopping the program: {stopped_because}")
        return_code = end_process(process, create_time) if stopped_because else process.wait()
        self.log(f"the program ended with exit status {return_code}")
        if return_code != 0 and not stopped_because:
            self._finish("Failed", reason=failure_reason(self.folder, return_code))
            return
        self._update(SecondaryStatus="Uploading")
        artifacts = model_artifacts_path(self.request)
        pack_folder(self.folder / "model", artifacts)  # a stopped job's model is kept too, as on SageMaker
        self._finish("Stopped" if stopped_because else "Completed", secondary=stopped_because,
                     reason="MaxRuntimeExceeded: stopped after MaxRuntimeInSeconds"
                     if stopped_because == "MaxRuntimeExceeded" else None,
                     ModelArtifacts={"S3ModelArtifacts": artifacts.as_uri()})

    def _environment(self, code: Path) -> dict[str, str]:
        """The allow-listed environment, the request's Environment, and the toolkit's SM_* variables."""
        (self.folder / "model").mkdir(exist_ok=True)
        (self.folder / "output" / "data").mkdir(parents=True, exist_ok=True)
        channels = {channel["ChannelName"]: local_path(channel["DataSource"]["S3DataSource"]["S3Uri"])
                    for channel in self.request.get("InputDataConfig", [])}
        environment = {
            **process_environment(),
            **(self.request.get("Environment") or {}),  # what the request asks for, as on SageMaker
            "PYTHONPATH": str(code),  # only the shipped code: not this machine's plugins folder
            **{f"SM_CHANNEL_{name.upper()}": path for name, path in channels.items()},
            "SM_CHANNELS": json.dumps(sorted(channels)),
            "SM_HPS": json.dumps(user_hyperparameters(self.hyperparameters)),
            "SM_MODEL_DIR": str(self.folder / "model"),
            "SM_OUTPUT_DIR": str(self.folder / "output"),  # a program's `failure` file there is the FailureReason
            "SM_OUTPUT_DATA_DIR": str(self.folder / "output" / "data"),
            JOBS_ROOT_VARIABLE: str(self.store.root),  # machine-wide trainer slots and feature cache
        }
        offline_unless_hub_reachable(environment, hub_probe(self.log))
        return environment

    def _stop_requested(self) -> bool:
        return (self.folder / "stop-requested").exists()

    def _update(self, **changes: Any) -> dict[str, Any]:
        return self.store.update_state(self.folder, lambda state: state.update(changes))

    def _finish(self, status: str, secondary: str | None = None, reason: str | None = None, **changes: Any) -> None:
        """Record the end, with SageMaker's times: training and billable seconds from the start to now."""
        ended = now()

        def change(state: dict[str, Any]) -> None:
            started = dt.datetime.fromisoformat(state.get("TrainingStartTime") or ended)
            seconds = max(1, round((dt.datetime.fromisoformat(ended) - started).total_seconds()))
            state.update(TrainingJobStatus=status, SecondaryStatus=secondary or status, TrainingEndTime=ended,
                         TrainingTimeInSeconds=seconds, BillableTimeInSeconds=seconds, **changes)
            if reason:
                state["FailureReason"] = reason

        self.store.update_state(self.folder, change)
        self.log(f"training job {self.name} ended {status}{': ' + reason if reason else ''}")


def detach_and_run(jobs_root: str, name: str) -> None:
    """Run training job `name` in a detached process (`supervisor.detach`)."""
    store = JobStore(jobs_root)
    detach(store.training_dir(name), "runner.log", lambda: TrainingJobRunner(store, name).run())


if __name__ == "__main__":
    detach_and_run(sys.argv[1], sys.argv[2])
