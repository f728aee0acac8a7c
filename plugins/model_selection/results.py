"""The results store: one row per model per study, appended and never rewritten.

    RESULTS_URI/rows/DATASET/RUN-UUID.jsonl

Every write is a new file, written under a temporary name and then renamed, so two
runs writing at once lose nothing and a run killed while writing leaves no torn rows
(a leftover `.tmp` file is ignored). Reading takes the union and keeps, per dataset,
model id and configuration hash, the latest row. A local folder or any URI Airflow's
object storage knows (`s3://bucket/prefix` through the AWS connection) works.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_URI_VARIABLE = "MODEL_SELECTION_RESULTS_URI"
ROW_KEY = ("dataset", "model_id", "config_hash")
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


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

    def append(self, rows: Iterable[Mapping[str, Any]], run_id: str = "manual") -> list[str]:
        """Write the rows, one new file per dataset; returns the files written."""
        by_dataset: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_dataset.setdefault(str(row["dataset"]), []).append(row)
        written = []
        for dataset, dataset_rows in by_dataset.items():
            folder = self.root / "rows" / safe_file_name(dataset)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{safe_file_name(run_id)}-{uuid.uuid4().hex[:12]}.jsonl"
            temporary = folder / f".{name}.tmp"
            temporary.write_text("".join(json.dumps(dict(row), default=str, sort_keys=True) + "\n" for row in dataset_rows))
            final = folder / name
            temporary.rename(final)
            written.append(str(final))
        return written

    def read_all(self) -> list[dict[str, Any]]:
        """Every row ever written, oldest file first."""
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
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return rows

    def read_latest(self, dataset: str | None = None, config_hash: str | None = None) -> list[dict[str, Any]]:
        """The latest row per (dataset, model id, configuration hash), optionally filtered."""
        latest: dict[tuple[str, ...], dict[str, Any]] = {}
        for row in self.read_all():
            if dataset is not None and row.get("dataset") != dataset:
                continue
            if config_hash is not None and row.get("config_hash") != config_hash:
                continue
            key = row_key(row)
            if key not in latest or str(row.get("finished_at", "")) >= str(latest[key].get("finished_at", "")):
                latest[key] = row
        return sorted(latest.values(), key=lambda row: (row.get("dataset", ""), row.get("model_id", "")))

    def attempts(self, dataset: str, model_id: str, config_hash: str) -> tuple[int, bool]:
        """How many rows this model has under this configuration, and whether one completed."""
        rows = [row for row in self.read_all() if row_key(row) == (dataset, model_id, config_hash)]
        return len(rows), any(row.get("status") == "Completed" for row in rows)
