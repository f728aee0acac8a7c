"""Where local tuning and training jobs live: one folder each, state written atomically.

    ROOT/tuning-jobs/NAME/{request.json, state.json, supervisor.log, stop-requested}
    ROOT/training-jobs/NAME/{state.json, hyperparameters.json, log.txt, model/, output/}     a tuning job's trial
    ROOT/training-jobs/NAME/{request.json, state.json, runner.log, stop-requested, log.txt, code/, model/, output/}
                               a standalone training job (CreateTrainingJob), run by local/training_job.py
    ROOT/slots/slot-N.lock     machine-wide trainer slots (see MachineSlots)
    ROOT/feature-cache/        backbone features, machine-wide: every top-layer trial and the screen share them

Any process can describe any job from these files. A state file is replaced whole
(write to a temporary file, then rename), so a crash never leaves half of one, and
read-modify-write goes through a per-job lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

JOBS_ROOT_VARIABLE = "MODEL_SELECTION_LOCAL_JOBS_ROOT"


def default_jobs_root() -> Path:
    """`$MODEL_SELECTION_LOCAL_JOBS_ROOT`, else `model-selection-jobs` under the Airflow home."""
    if os.environ.get(JOBS_ROOT_VARIABLE):
        return Path(os.environ[JOBS_ROOT_VARIABLE])
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    return airflow_home / "model-selection-jobs"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def write_json_atomically(path: Path, value: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(value, stream, indent=1, default=str)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_job_folder(folder: Path, request: dict[str, Any], state: dict[str, Any]) -> bool:
    """Lay out a new job folder whole, then move it into place; False if the name is taken."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".creating-{folder.name}-{uuid.uuid4().hex}"
    staging.mkdir()
    write_json_atomically(staging / "request.json", request)
    write_json_atomically(staging / "state.json", state)
    try:
        os.rename(staging, folder)  # atomic; fails if the target exists and is not empty
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


class JobStore:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_jobs_root()
        self.tuning_root = self.root / "tuning-jobs"
        self.training_root = self.root / "training-jobs"
        # Safe to share between jobs: a feature's key covers model, weights, preprocessing and every image file.
        self.feature_cache = self.root / "feature-cache"

    def tuning_dir(self, name: str) -> Path:
        return self.tuning_root / name

    def training_dir(self, name: str) -> Path:
        return self.training_root / name

    def create_tuning_job(self, name: str, request: dict[str, Any], state: dict[str, Any]) -> bool:
        """A new tuning job's folder; False if the name is taken."""
        return _create_job_folder(self.tuning_dir(name), request, state)

    def create_standalone_training_job(self, name: str, request: dict[str, Any], state: dict[str, Any]) -> bool:
        """A new training job's folder (one of its own, not a tuning job's trial); False if the name is taken."""
        return _create_job_folder(self.training_dir(name), request, state)

    def create_training_job(self, name: str, state: dict[str, Any]) -> Path:
        """A tuning job's trial, named by its supervisor after the tuning job (`supervisor.training_job_name`)."""
        folder = self.training_dir(name)
        (folder / "output").mkdir(parents=True)
        write_json_atomically(folder / "state.json", state)
        return folder

    def tuning_job_names(self) -> list[str]:
        if not self.tuning_root.is_dir():
            return []
        return sorted(entry.name for entry in self.tuning_root.iterdir() if not entry.name.startswith("."))

    @staticmethod
    def read_state(folder: Path) -> dict[str, Any]:
        return read_json(folder / "state.json")

    @staticmethod
    def update_state(folder: Path, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply `change` to the state under the job's lock; it may edit in place or return a new dict."""
        with file_lock(folder / "state.lock"):
            state = read_json(folder / "state.json")
            changed = change(state)
            state = changed if changed is not None else state
            state["LastModifiedTime"] = now()
            write_json_atomically(folder / "state.json", state)
            return state
