"""Run the project's DAG the way a user does: `airflow dags test` in its own process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "image_classification_model_selection"


def airflow_environment(home: Path, jobs_root: Path, results: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
        "HF_HUB_OFFLINE": "1",
        "MODEL_SELECTION_LOCAL_JOBS_ROOT": str(jobs_root),
        "MODEL_SELECTION_RESULTS_URI": str(results),
        # every SageMaker request Airflow's processes check against the service model, one JSON line each
        # (model_selection.backends.api.CHECKED_REQUESTS_LOG): a test reads what those processes checked
        "MODEL_SELECTION_CHECKED_REQUESTS": str(home / "checked-requests.jsonl"),
    }


POOLS_FILE = PROJECT_ROOT / "include" / "airflow" / "pools.json"


def migrate(environment: dict[str, str]) -> None:
    """A new metadata database with the project's pools, as `make airflow` and the compose init make it."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=environment, check=True, capture_output=True, timeout=300)
    subprocess.run([AIRFLOW, "pools", "import", str(POOLS_FILE)], env=environment, check=True, capture_output=True,
                   timeout=120)


def run_succeeded(output: str) -> bool:
    """The DAG run's own end line says success (a task's `new_state=success` does not count)."""
    return re.search(r"DagRun Finished:.*state=success", output) is not None


def dags_test_command(conf: dict) -> list[str]:
    return [AIRFLOW, "dags", "test", DAG_ID, "-c", json.dumps(conf)]


def dags_test(environment: dict[str, str], conf: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(dags_test_command(conf), env=environment, capture_output=True, text=True, timeout=timeout)


def dags_test_process(environment: dict[str, str], conf: dict, output: Path) -> subprocess.Popen:
    """`airflow dags test` running in a process group of its own, so a test can kill all of it at once.

    Its output goes to a file: a pipe nobody reads while it runs could fill and stall it.
    """
    with open(output, "w") as stream:
        return subprocess.Popen(dags_test_command(conf), env=environment, stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True)
