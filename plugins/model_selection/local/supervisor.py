"""Drives one local tuning job to its end, detached from the process that created it.

    python -m model_selection.local.supervisor JOBS_ROOT TUNING_JOB_NAME

Like a SageMaker job, it outlives the Airflow task or worker that launched it. It starts
the trials (trainer processes), at most `MaxParallelTrainingJobs` at once and never more
on the machine than the machine-wide cap of trainer slots, reads each trial's metrics
from its log with the request's `MetricDefinitions`, and stops the trials when asked.
"""

from __future__ import annotations

import dataclasses
import functools
import fnmatch
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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
# A recorded process counts as the same process only if its start time is within this of the recorded one.
CREATE_TIME_TOLERANCE_SECONDS = 1.0

LOG = logging.getLogger(__name__)

PROCESS_ENVIRONMENT_ALLOWED = (
    # the process itself: where programs, the home folder, locale, time zone and temporary files are
    "PATH", "HOME", "LANG", "LC_*", "TZ", "TMPDIR",
    # the project's code (PLUGINS_DIR is always put first) and its own settings
    "PYTHONPATH", "MODEL_SELECTION_*",
    # SageMaker's training-toolkit variables, which the trainer reads as defaults
    "SM_*",
    # which GPUs, and the libraries to drive them (LD_LIBRARY_PATH: where CUDA is found on many hosts)
    "CUDA_VISIBLE_DEVICES", "CUDA_*", "NVIDIA_*", "LD_LIBRARY_PATH",
    # CPU threads: the supervisor splits the cores between the trainers it runs at once
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_*",
    # where model weights are cached, and whether a hub may be reached (HF_HUB_OFFLINE)
    "TORCH_HOME", "HF_HOME", "HF_HUB_*", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE", "TIMM_*", "XDG_CACHE_HOME",
)
"""Environment variables (exact names or `fnmatch` patterns) that local supervisors and trainers get.

Supervisors and trainers run long, detached from Airflow, print into logs anyone who can read the
job store may read, and run whatever code a training job brings. Airflow's own environment holds
secrets they never need: AWS keys, connections (`AIRFLOW_CONN_*`), the fernet key and other
`AIRFLOW__*` settings, API tokens. So they get only what training needs, named here, and nothing
else; `PROCESS_ENVIRONMENT_DENIED` is checked after it, in case an allowed pattern meets a secret.
A trainer that needs more gets it from the request's `TrainingJobDefinition.Environment`, as on
SageMaker.
"""

PROCESS_ENVIRONMENT_DENIED = (
    "AWS_*", "AIRFLOW*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*",
    "*_KEY", "*_KEY_ID", "*API_KEY*", "*PRIVATE_KEY*",
)
"""Names never passed on, even when `PROCESS_ENVIRONMENT_ALLOWED` matches them (say `HF_HUB_TOKEN`)."""


def _passed_on(name: str) -> bool:
    upper = name.upper()
    return (any(fnmatch.fnmatchcase(name, pattern) for pattern in PROCESS_ENVIRONMENT_ALLOWED)
            and not any(fnmatch.fnmatchcase(upper, pattern) for pattern in PROCESS_ENVIRONMENT_DENIED))


def process_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a local supervisor or trainer: `source` (this process's environment)
    filtered by `PROCESS_ENVIRONMENT_ALLOWED`, with the plugins folder first on `PYTHONPATH`."""
    source = os.environ if source is None else source
    environment = {name: value for name, value in source.items() if _passed_on(name)}
    paths = [str(PLUGINS_DIR), *(source.get("PYTHONPATH") or "").split(os.pathsep)]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path for path in paths if path))
    return environment


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub (`HF_ENDPOINT`, else huggingface.co) within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_probe(log: Callable[[str], None]) -> Callable[[], bool]:
    """`hub_reachable`, probed on the first call only (once per job), logging when processes will run offline."""

    @functools.cache
    def probe() -> bool:
        reachable = hub_reachable()
        if not reachable:
            log("the model hub cannot be reached: trainers run with HF_HUB_OFFLINE=1 (cached weights still load)")
        return reachable

    return probe


def offline_unless_hub_reachable(environment: dict[str, str], reachable: Callable[[], bool]) -> None:
    """Set HF_HUB_OFFLINE=1 where the environment does not say and the hub cannot be reached: weights
    already in the hub cache still load, and nothing waits ~50 s per process on a hub it cannot reach."""
    if "HF_HUB_OFFLINE" not in environment and not reachable():
        environment["HF_HUB_OFFLINE"] = "1"


def visible_gpus() -> list[str]:
    """GPU indices this process may use, without importing a framework."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [index for index in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if index.strip() not in ("", "-1")]
    return sorted(entry.name[len("nvidia"):] for entry in Path("/dev").glob("nvidia[0-9]*"))


def usable_cores() -> int:
    """The cores this process may run on: its affinity, which a container's cpuset or `taskset` narrows
    (`os.cpu_count()` counts the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_limit() -> int | None:
    """`OMP_NUM_THREADS` where the environment sets it: the usual cap on one process's CPU threads."""
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(limit) if limit.isdigit() and int(limit) > 0 else None


def trainer_threads(trainers: int) -> int:
    """The CPU threads of each of `trainers` trainers that run at once: their share of the usable cores,
    at most `OMP_NUM_THREADS`. OpenMP threads that outnumber the free cores spin-wait for each other: beside
    two busy processes on 2 cores, a tiny trainer measured 16 s of CPU at 2 threads against 4.5 s at 1."""
    share = max(1, usable_cores() // trainers)
    return min(share, thread_limit() or share)


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
    create_time: float  # psutil's, recorded as PidCreateTime: no signal reaches a later process with its pid
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
        self.hub_reachable = hub_probe(self.log)

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
            "--feature-cache-dir", str(self.store.feature_cache),  # machine-wide: the screen fills it too
        ]
        for channel in self.definition["InputDataConfig"]:
            command += [f"--{channel['ChannelName']}", local_path(channel["DataSource"]["S3DataSource"]["S3Uri"])]
        threads = str(trainer_threads(self.slots.count))
        allowed = process_environment()
        environment = {
            **allowed,
            **(self.definition.get("Environment") or {}),  # what the request asks for, as on SageMaker
            "PYTHONPATH": allowed["PYTHONPATH"],
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        if self.gpus:
            environment["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        offline_unless_hub_reachable(environment, self.hub_reachable)
        process, create_time = start_recorded(command, folder, environment, pass_fds=(slot_descriptor,), Slot=slot)
        self.store.update_state(self.folder, lambda state: state["TrainingJobNames"].append(name))
        self.log(f"started {name} (pid {process.pid}, slot {slot}) with {tuned}")
        max_runtime = (self.definition.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        return RunningTrial(name, folder, process, create_time, time.monotonic(), max_runtime)

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
        end_process(trial.process, trial.create_time)

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


def signal_recorded_process_group(pid: int | None, create_time: float | None, signal_number: int) -> bool:
    """Send `signal_number` to the process group that a recorded process leads, if that very process
    still runs: the only way this package signals a pid it recorded.

    A pid read from a state file may belong to another process by now (the machine restarted, or
    the recorded one ended long ago and its pid was reused), so the signal goes out only when a
    process with that pid exists, its start time is within `CREATE_TIME_TOLERANCE_SECONDS` of the
    recorded `create_time` and it leads its own process group (trainers start in a new session).
    Otherwise nothing is sent, and that is logged. True if the signal was sent.
    """
    import psutil

    name = signal.Signals(signal_number).name
    if pid is None:
        return False
    if create_time is None:
        LOG.warning("not sending %s to pid %s: no start time was recorded with it, so it may be another process",
                    name, pid)
        return False
    try:
        actual = psutil.Process(pid).create_time()
        group = os.getpgid(pid)
    except (psutil.Error, ProcessLookupError):
        LOG.info("not sending %s to pid %s: that process has ended", name, pid)
        return False
    if abs(actual - float(create_time)) > CREATE_TIME_TOLERANCE_SECONDS:
        LOG.warning("not sending %s to pid %s: that pid now belongs to another process (started at %.2f, the "
                    "recorded one at %.2f)", name, pid, actual, float(create_time))
        return False
    if group != pid:
        LOG.warning("not sending %s to pid %s: it does not lead its own process group (%s)", name, pid, group)
        return False
    try:
        os.killpg(pid, signal_number)
    except ProcessLookupError:
        LOG.info("not sending %s to pid %s: its process group has ended", name, pid)
        return False
    return True


def terminate_process_group(pid: int | None, create_time: float | None) -> bool:
    """SIGTERM to a recorded process's group, through `signal_recorded_process_group`'s check."""
    return signal_recorded_process_group(pid, create_time, signal.SIGTERM)


def kill_process_group(pid: int | None, create_time: float | None) -> bool:
    """SIGKILL to a recorded process's group, through `signal_recorded_process_group`'s check."""
    return signal_recorded_process_group(pid, create_time, signal.SIGKILL)


def start_recorded(
    command: Sequence[str], folder: Path, environment: Mapping[str, str], *, cwd: Path | None = None,
    pass_fds: Sequence[int] = (), **recorded: Any,
) -> tuple[subprocess.Popen, float]:
    """Start a job's process in a session of its own (so it and its children can be signalled as a
    group), its output in `folder/log.txt`, and record its pid and start time (Pid, PidCreateTime,
    and `recorded`) in the job's state: no signal may later reach another process with that pid."""
    import psutil

    with open(folder / "log.txt", "w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            env=dict(environment), start_new_session=True, pass_fds=tuple(pass_fds),
        )
    create_time = psutil.Process(process.pid).create_time()  # not reaped yet: it exists, at worst a zombie
    JobStore.update_state(folder, lambda state: state.update(Pid=process.pid, PidCreateTime=create_time, **recorded))
    return process, create_time


def end_process(process: subprocess.Popen, create_time: float) -> int:
    """SIGTERM to a process started by `start_recorded` and its group, SIGKILL after `STOP_GRACE_SECONDS`,
    as SageMaker stops a training job; its exit status."""
    terminate_process_group(process.pid, create_time)
    try:
        return process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        kill_process_group(process.pid, create_time)
        return process.wait()


# How long a new job may go without a recorded supervisor before it counts as unsupervised.
SUPERVISOR_START_SECONDS = 120


def detach(folder: Path, log_name: str, run: Callable[[], None]) -> None:
    """Run `run` in a forked child that outlives its caller, its output in `folder/log_name`.

    The parent records the child's pid and start time in the job's state at `folder`
    (SupervisorPid, SupervisorCreateTime: what the client's liveness check reads), prints the pid
    and exits, so the child is nobody's zombie. The pid is recorded here, not by the caller, so that
    a caller killed while this starts (Airflow SIGKILLed mid-launch) cannot leave a running
    supervisor unrecorded.
    """
    child = os.fork()
    if child:
        import psutil

        create_time = psutil.Process(child).create_time()
        JobStore.update_state(folder, lambda state: state.update(SupervisorPid=child, SupervisorCreateTime=create_time))
        print(child, flush=True)
        os._exit(0)
    log_descriptor = os.open(folder / log_name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_descriptor = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_descriptor, 0)
    os.dup2(log_descriptor, 1)
    os.dup2(log_descriptor, 2)
    try:
        run()
    finally:
        sys.stdout.flush()
        os._exit(0)


def detach_and_run(jobs_root: str, name: str) -> None:
    """Supervise tuning job `name` in a detached process (`detach`)."""
    store = JobStore(jobs_root)
    detach(store.tuning_dir(name), "supervisor.log", lambda: Supervisor(store, name).run())


if __name__ == "__main__":
    detach_and_run(sys.argv[1], sys.argv[2])
