"""Drives one local tuning job to its end, detached from the process that created it.

    python -m model_selection.local.supervisor JOBS_ROOT TUNING_JOB_NAME

Like a SageMaker job, it outlives the Airflow task or worker that launched it. It starts
the trials (trainer processes), at most `MaxParallelTrainingJobs` at once and never more
on the machine than the machine-wide cap of trainer slots, reads each trial's metrics
from its log with the request's `MetricDefinitions`, and stops the trials when asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from model_selection.local.jobstore import JobStore, now, read_json
from model_selection.local.strategy import plan_trials
from model_selection.metrics import extract_final_metrics

MAX_TRAINERS_VARIABLE = "MODEL_SELECTION_MAX_TRAINERS"
PYTHON_VARIABLE = "MODEL_SELECTION_LOCAL_PYTHON"
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
PLUGINS_DIR = Path(__file__).resolve().parents[2]


def visible_gpus() -> list[str]:
    """GPU indices this process may use, without importing a framework."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [index for index in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if index.strip() not in ("", "-1")]
    return sorted(entry.name[len("nvidia"):] for entry in Path("/dev").glob("nvidia[0-9]*"))


def machine_trainer_cap() -> int:
    """`$MODEL_SELECTION_MAX_TRAINERS`, else one trainer per GPU, or one on a CPU-only machine."""
    if os.environ.get(MAX_TRAINERS_VARIABLE):
        return max(1, int(os.environ[MAX_TRAINERS_VARIABLE]))
    return max(1, len(visible_gpus()))


class MachineSlots:
    """Machine-wide trainer slots as lock files: a slot is taken while some process holds its lock.

    The lock is handed to the trainer process, so it holds while the trainer runs even if
    the supervisor dies, and the kernel releases it when the trainer ends, however it ends.
    """

    def __init__(self, folder: Path, count: int):
        self.folder = folder
        self.count = count
        folder.mkdir(parents=True, exist_ok=True)

    def try_acquire(self) -> tuple[int, int] | None:
        import fcntl

        for index in range(self.count):
            descriptor = os.open(self.folder / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            return index, descriptor
        return None


@dataclasses.dataclass
class RunningTrial:
    name: str
    folder: Path
    process: subprocess.Popen
    started: float
    max_runtime: float | None


def training_job_name(tuning_job_name: str, index: int) -> str:
    """SageMaker's form: the tuning job's name, a 3-digit trial number and 8 hex characters."""
    digest = hashlib.sha1(f"{tuning_job_name}/{index}".encode()).hexdigest()[:8]
    return f"{tuning_job_name}-{index + 1:03d}-{digest}"


def failure_reason(folder: Path, return_code: int) -> str:
    """The trainer's own error (its `failure` file), else how the process ended."""
    failure_file = folder / "output" / "failure"
    if failure_file.exists() and failure_file.read_text().strip():
        return failure_file.read_text().strip()[:1024]
    if return_code < 0:
        name = signal.Signals(-return_code).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"AlgorithmError: the trainer was killed by {name}{hint}"
    lines = [line for line in (folder / "log.txt").read_text(errors="replace").splitlines() if line.strip()]
    last = f": {lines[-1].strip()}" if lines else ""
    return f"AlgorithmError: the trainer exited with code {return_code}{last}"[:1024]


class Supervisor:
    def __init__(self, store: JobStore, name: str):
        self.store = store
        self.name = name
        self.folder = store.tuning_dir(name)
        self.request: dict[str, Any] = read_json(self.folder / "request.json")
        self.config = self.request["HyperParameterTuningJobConfig"]
        self.definition = self.request["TrainingJobDefinition"]
        self.slots = MachineSlots(store.root / "slots", machine_trainer_cap())
        self.gpus = visible_gpus()

    def log(self, message: str) -> None:
        print(f"{now()} {message}", flush=True)

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # noqa: BLE001 - whatever breaks, the job must end Failed, not InProgress
            self.log(f"supervisor error: {type(error).__name__}: {error}")
            self._finish("Failed", f"the local supervisor failed: {type(error).__name__}: {error}")
            raise

    def _run(self) -> None:
        trials = plan_trials(self.config)
        max_parallel = self.config["ResourceLimits"]["MaxParallelTrainingJobs"]
        self.log(f"{len(trials)} trials, at most {max_parallel} at once, machine-wide cap {self.slots.count}")
        running: list[RunningTrial] = []
        next_index = 0
        while next_index < len(trials) or running:
            if (self.folder / "stop-requested").exists():
                self._stop(running)
                self._finish("Stopped", None)
                return
            for trial in [trial for trial in running if trial.process.poll() is not None]:
                running.remove(trial)
                self._record_end(trial)
            for trial in [t for t in running if t.max_runtime and time.monotonic() - t.started > t.max_runtime]:
                running.remove(trial)
                self._terminate(trial)
                self._record_end(trial, stopped_because="MaxRuntimeExceeded")
            while len(running) < max_parallel and next_index < len(trials):
                slot = self.slots.try_acquire()
                if slot is None:
                    break
                slot_index, slot_descriptor = slot
                try:
                    running.append(self._start(next_index, trials[next_index], slot_index, slot_descriptor))
                finally:
                    os.close(slot_descriptor)  # the trainer holds the slot's lock from here on
                next_index += 1
            time.sleep(POLL_SECONDS)
        self._finish(*self._outcome())

    def _start(self, index: int, tuned: dict[str, str], slot: int, slot_descriptor: int) -> RunningTrial:
        name = training_job_name(self.name, index)
        objective = self.config["HyperParameterTuningJobObjective"]["MetricName"]
        hyperparameters = {
            **{key: str(value) for key, value in (self.definition.get("StaticHyperParameters") or {}).items()},
            **tuned,
            "_tuning_objective_metric": objective,
        }
        folder = self.store.create_training_job(
            name,
            {
                "TrainingJobName": name,
                "TuningJobName": self.name,
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Training",
                "HyperParameters": hyperparameters,
                "TunedHyperParameters": tuned,
                "CreationTime": now(),
                "TrainingStartTime": now(),
                "LastModifiedTime": now(),
            },
        )
        (folder / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=1))
        command = [
            os.environ.get(PYTHON_VARIABLE, sys.executable), "-m", "model_selection.local.train",
            "--model-dir", str(folder / "model"), "--output-dir", str(folder / "output"),
            "--hyperparameters", str(folder / "hyperparameters.json"),
            "--feature-cache-dir", str(self.folder / "feature-cache"),
        ]
        for channel in self.definition["InputDataConfig"]:
            command += [f"--{channel['ChannelName']}", local_path(channel["DataSource"]["S3DataSource"]["S3Uri"])]
        threads = str(max(1, (os.cpu_count() or 1) // self.slots.count))
        environment = {
            **os.environ,
            **(self.definition.get("Environment") or {}),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS_DIR), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        if self.gpus:
            environment["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        with open(folder / "log.txt", "w") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=environment, start_new_session=True, pass_fds=(slot_descriptor,),
            )
        self.store.update_state(folder, lambda state: state.update(Pid=process.pid, Slot=slot))
        self.store.update_state(self.folder, lambda state: state["TrainingJobNames"].append(name))
        self.log(f"started {name} (pid {process.pid}, slot {slot}) with {tuned}")
        max_runtime = (self.definition.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        return RunningTrial(name, folder, process, time.monotonic(), max_runtime)

    def _record_end(self, trial: RunningTrial, stopped_because: str | None = None) -> None:
        return_code = trial.process.wait()
        log_text = (trial.folder / "log.txt").read_text(errors="replace")
        metrics = extract_final_metrics(log_text, self.definition["AlgorithmSpecification"].get("MetricDefinitions", []))
        objective = self.config["HyperParameterTuningJobObjective"]
        ended = now()
        final_metrics = [{"MetricName": name, "Value": value, "Timestamp": ended} for name, value in metrics.items()]

        def change(state: dict[str, Any]) -> None:
            state.update(TrainingEndTime=ended, FinalMetricDataList=final_metrics)
            if stopped_because:
                state.update(
                    TrainingJobStatus="Stopped", SecondaryStatus=stopped_because,
                    FailureReason=f"{stopped_because}: stopped after MaxRuntimeInSeconds", ObjectiveStatus="Failed",
                )
            elif return_code == 0:
                value = metrics.get(objective["MetricName"])
                state.update(TrainingJobStatus="Completed", SecondaryStatus="Completed",
                             ObjectiveStatus="Succeeded" if value is not None else "Failed")
                if value is not None:
                    state["FinalHyperParameterTuningJobObjectiveMetric"] = {
                        "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": value,
                    }
            else:
                state.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", ObjectiveStatus="Failed",
                             FailureReason=failure_reason(trial.folder, return_code))
            state["ModelArtifacts"] = {"S3ModelArtifacts": (trial.folder / "model").as_uri()}

        state = self.store.update_state(trial.folder, change)
        self.log(f"{trial.name} ended {state['TrainingJobStatus']} (exit {return_code})")

    def _terminate(self, trial: RunningTrial) -> None:
        terminate_process_group(trial.process.pid)
        try:
            trial.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            kill_process_group(trial.process.pid)
            trial.process.wait()

    def _stop(self, running: list[RunningTrial]) -> None:
        self.log(f"stop requested: stopping {len(running)} running trial(s)")
        for trial in running:
            self._terminate(trial)
            self.store.update_state(trial.folder, lambda state, ended=now(): state.update(
                TrainingJobStatus="Stopped", SecondaryStatus="Stopped", TrainingEndTime=ended, ObjectiveStatus="Failed"))

    def _outcome(self) -> tuple[str, str | None]:
        """Completed if any trial gave an objective value, as SageMaker does; else Failed with the first reason."""
        states = [self.store.read_state(self.store.training_dir(name))
                  for name in self.store.read_state(self.folder)["TrainingJobNames"]]
        if any(state.get("ObjectiveStatus") == "Succeeded" for state in states):
            return "Completed", None
        reasons = [state.get("FailureReason") or "no objective metric in the log" for state in states]
        return "Failed", f"No training job succeeded. First failure: {reasons[0] if reasons else 'no trials'}"

    def _finish(self, status: str, reason: str | None) -> None:
        ended = now()

        def change(state: dict[str, Any]) -> None:
            state.update(HyperParameterTuningJobStatus=status, HyperParameterTuningEndTime=ended)
            if reason:
                state["FailureReason"] = reason

        self.store.update_state(self.folder, change)
        self.log(f"tuning job {self.name} ended {status}{': ' + reason if reason else ''}")


def local_path(uri: str) -> str:
    """A `file://` URI or a plain path, as a path."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path) if uri.startswith("file://") else uri


def terminate_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def kill_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# How long a new job may go without a recorded supervisor before it counts as unsupervised.
SUPERVISOR_START_SECONDS = 120


def detach_and_run(jobs_root: str, name: str) -> None:
    """Fork; the parent records the child's pid in the job, prints it and exits, so the child is
    nobody's zombie. The pid is recorded here, not by the caller, so that a caller killed while
    this starts (Airflow SIGKILLed mid-launch) cannot leave a running supervisor unrecorded."""
    store = JobStore(jobs_root)
    child = os.fork()
    if child:
        import psutil

        create_time = psutil.Process(child).create_time()
        store.update_state(store.tuning_dir(name), lambda state: state.update(
            SupervisorPid=child, SupervisorCreateTime=create_time))
        print(child, flush=True)
        os._exit(0)
    log_path = store.tuning_dir(name) / "supervisor.log"
    log_descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_descriptor = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_descriptor, 0)
    os.dup2(log_descriptor, 1)
    os.dup2(log_descriptor, 2)
    try:
        Supervisor(store, name).run()
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    detach_and_run(sys.argv[1], sys.argv[2])
