"""The results store: one row per model per study, appended and never rewritten.

    RESULTS_URI/rows/DATASET/RUN-UUID.jsonl
    RESULTS_URI/records/KIND/DATASET/CONFIG_HASH/RUN.json   (a study's speed pass, its screen)

Every write is a new file, written under a temporary name and then renamed, so two
runs writing at once lose nothing and a run killed while writing leaves no torn rows
(a leftover `.tmp` file is ignored). A write named by a batch (the DAG run's collection)
replaces its own file when repeated, so a retried collection adds no rows. Reading takes the union and keeps, per dataset,
model id and configuration hash, the latest row. A local folder or any URI Airflow's
object storage knows (`s3://bucket/prefix` through the AWS connection) works.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS_URI_VARIABLE = "MODEL_SELECTION_RESULTS_URI"
ROW_KEY = ("dataset", "model_id", "config_hash")
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# A job that ended without a result counts as an attempt; one still running is attached to, not repeated.
ENDED_WITHOUT_RESULT = ("Failed", "Stopped", "NotLaunched")
STILL_RUNNING = ("InProgress", "Stopping")
# Not fine-tuned because the screen ranked it below the study's keep_top: a later run that names it trains it.
SCREENED_OUT = "Screened out"


def default_results_uri() -> str:
    if os.environ.get(RESULTS_URI_VARIABLE):
        return os.environ[RESULTS_URI_VARIABLE]
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    return str(airflow_home / "model-selection-results")


def safe_file_name(text: str) -> str:
    """A name that cannot leave its folder, whatever a user typed."""
    cleaned = SAFE_NAME.sub("_", text).strip("._") or "unnamed"
    return cleaned[:100]


def storage_path(uri: str, conn_id: str | None = None):
    """A pathlib-like object: plain `Path` for local folders, `ObjectStoragePath` for URIs."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri, conn_id=conn_id)


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(field)) for field in ROW_KEY)


class ResultsStore:
    def __init__(self, uri: str | None = None, conn_id: str | None = None):
        self.uri = uri or default_results_uri()
        self.root = storage_path(self.uri, conn_id)

    def check_writable(self) -> None:
        """Write and remove a probe file, so a bad location fails before anything is launched."""
        probe = self.root / "rows" / f".probe-{uuid.uuid4().hex}.tmp"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("probe")
        probe.unlink()

    def append(self, rows: Iterable[Mapping[str, Any]], run_id: str = "manual", batch: str | None = None) -> list[str]:
        """Write the rows, one file per dataset; returns the files written.

        A `batch` names the write: writing the same batch again replaces its files instead of
        adding rows, so a retried task never duplicates results. Without one, every call is new.
        """
        by_dataset: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_dataset.setdefault(str(row["dataset"]), []).append(row)
        suffix = safe_file_name(batch) if batch else uuid.uuid4().hex[:12]
        written = []
        for dataset, dataset_rows in by_dataset.items():
            folder = self.root / "rows" / safe_file_name(dataset)
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{safe_file_name(run_id)}-{suffix}.jsonl"
            _write_then_rename(final, "".join(json.dumps(dict(row), default=str, sort_keys=True) + "\n"
                                              for row in dataset_rows))
            written.append(str(final))
        return written

    def read_all(self) -> list[dict[str, Any]]:
        """Every row ever written, oldest file first; a malformed line is skipped with a warning."""
        rows_root = self.root / "rows"
        if not rows_root.exists():
            return []
        files = sorted(
            (path for folder in rows_root.iterdir() if folder.is_dir() for path in folder.iterdir()
             if path.name.endswith(".jsonl") and not path.name.startswith(".")),
            key=lambda path: path.name,
        )
        rows = []
        for path in files:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    log.warning("results store: skipping malformed line %d of %s: %s", number, path, error)
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    log.warning("results store: skipping line %d of %s: not a JSON object", number, path)
        return rows

    def read_latest(self, dataset: str | None = None, config_hash: str | None = None) -> list[dict[str, Any]]:
        """The latest row per (dataset, model id, configuration hash), optionally filtered."""
        return latest_rows(self.read_all(), dataset, config_hash)

    def _records(self, kind: str, dataset: str, config_hash: str):
        return self.root / "records" / safe_file_name(kind) / safe_file_name(dataset) / safe_file_name(config_hash)

    def write_record(self, kind: str, dataset: str, config_hash: str, run_id: str, value: Mapping[str, Any]) -> str:
        """One JSON record of a study-wide step (a speed pass, a screen) per run; a retry replaces its own."""
        folder = self._records(kind, dataset, config_hash)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{safe_file_name(run_id)}.json"
        recorded = {**value, "run_id": run_id, "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        _write_then_rename(final, json.dumps(recorded, default=str, sort_keys=True))
        return str(final)

    def latest_record(self, kind: str, dataset: str, config_hash: str) -> dict[str, Any] | None:
        """The newest record of that kind for the study (by its `recorded_at`), or None; unreadable ones are skipped."""
        folder = self._records(kind, dataset, config_hash)
        if not folder.exists():
            return None
        records = []
        for path in folder.iterdir():
            if not path.name.endswith(".json") or path.name.startswith("."):
                continue
            try:
                records.append(json.loads(path.read_text()))
            except json.JSONDecodeError as error:
                log.warning("results store: skipping unreadable record %s: %s", path, error)
        return max(records, key=lambda record: str(record.get("recorded_at", "")), default=None)


def latest_rows(rows: Iterable[Mapping[str, Any]], dataset: str | None = None,
                config_hash: str | None = None) -> list[dict[str, Any]]:
    """The latest row per (dataset, model id, configuration hash), optionally filtered."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        if dataset is not None and row.get("dataset") != dataset:
            continue
        if config_hash is not None and row.get("config_hash") != config_hash:
            continue
        key = row_key(row)
        if key not in latest or str(row.get("finished_at", "")) >= str(latest[key].get("finished_at", "")):
            latest[key] = dict(row)
    return sorted(latest.values(), key=lambda row: (row.get("dataset", ""), row.get("model_id", "")))


def _write_then_rename(final: Any, text: str) -> None:
    """Readers never see half a file: write a hidden temporary (flushed to disk when local), then rename."""
    temporary = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    if isinstance(temporary, Path):
        with open(temporary, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    else:
        temporary.write_text(text)
        if final.exists():
            final.unlink()  # object storage: a rename onto an existing key is not an overwrite everywhere
        temporary.rename(final)


@dataclass(frozen=True)
class ModelHistory:
    """What the store says of one model under one configuration, for the plan."""

    ended_attempts: int  # distinct jobs that ended without a result: Failed, Stopped, NotLaunched
    completed: bool
    running_job: str | None  # the job of the latest row when it was still InProgress or Stopping


def model_histories(rows: Iterable[Mapping[str, Any]], dataset: str, config_hash: str,
                    model_version: str | None = None) -> dict[str, ModelHistory]:
    """Per model id: ended attempts, whether one completed, and a job still running. One read serves a whole plan.

    A JumpStart model's version is part of its configuration: rows of another version do not count.
    """
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if (row.get("dataset") == dataset and row.get("config_hash") == config_hash
                and (model_version is None or row.get("model_version") == model_version)):
            by_model.setdefault(str(row.get("model_id")), []).append(row)
    histories = {}
    for model_id, model_rows in by_model.items():
        ended = {row.get("tuning_job_name") for row in model_rows if row.get("status") in ENDED_WITHOUT_RESULT}
        latest = max(model_rows, key=lambda row: str(row.get("finished_at", "")))
        histories[model_id] = ModelHistory(
            ended_attempts=len(ended),
            completed=any(row.get("status") == "Completed" for row in model_rows),
            running_job=latest.get("tuning_job_name") if latest.get("status") in STILL_RUNNING else None,
        )
    return histories
