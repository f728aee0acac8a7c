"""The model-selection DAG: integrity, and real `airflow dags test` runs on the local backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow_env import PROJECT_ROOT, airflow_environment, dags_test, migrate, run_succeeded
from conftest import write_image_folders

from model_selection.results import ResultsStore

HEAVY_MODULES = ("sagemaker", "torch", "timm", "pandas", "matplotlib")
TINY = {"pretrained": "false", "image_size": "16", "batch_size": "8", "train_only_top_layer": "False"}


def test_dag_file_imports_cleanly_with_tags_retries_and_no_heavy_modules():
    probe = f"""
import sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(PROJECT_ROOT / "dags")!r})
assert not bag.import_errors, bag.import_errors
dag = bag.dags["image_classification_model_selection"]
assert dag.tags, "no tags"
for task in dag.tasks:
    assert task.retries >= 2, (task.task_id, task.retries)
    assert task.retry_exponential_backoff, task.task_id
import json
pools = json.load(open({str(PROJECT_ROOT / "include" / "airflow" / "pools.json")!r}))
unknown = {{task.task_id: task.pool for task in dag.tasks if task.pool not in pools and task.pool != "default_pool"}}
assert not unknown, f"pools missing from include/airflow/pools.json: {{unknown}}"
for name in dag.params:  # the trigger form rejects an empty field unless its type allows null
    param = dag.params.get_param(name)
    types = param.schema.get("type")
    nullable = "null" in (types if isinstance(types, list) else [types])
    assert nullable or param.value not in ("", None), f"Param {{name}} is empty by default but required in the form"
heavy = [name for name in {HEAVY_MODULES!r} if name in sys.modules]
assert not heavy, heavy
print(sorted(task.task_id for task in dag.tasks))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**airflow_environment(Path("/tmp/unused"), Path("/tmp/unused"), Path("/tmp/unused"))})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['collect_metrics', 'frontier_report', 'lane.launch', 'lane.wait', 'measure_speed', 'plan', 'screen', 'screen_launch', 'screen_wait']" in result.stdout


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow")
    environment = airflow_environment(root / "home", root / "jobs", root / "results")
    migrate(environment)
    data = root / "data"
    for channel, seed in (("training", 1), ("validation", 2), ("test", 3)):
        write_image_folders(data / channel, classes=3, per_class=8 if channel == "training" else 4, seed=seed)
    return {"environment": environment, "root": root, "data": data}


def conf(airflow, model_ids: list[str], **extra) -> dict:
    data = airflow["data"]
    return {
        "model_ids": model_ids,
        "dataset": {"name": "tiny", "training": str(data / "training"), "validation": str(data / "validation"),
                    "test": str(data / "test")},
        "hyperparameters": TINY,
        "epochs": 2,
        "speed_rounds": 1,  # the measurement pass runs, briefly: these tests are about the DAG
        **extra,
    }


def tuning_jobs(airflow) -> list[str]:
    folder = airflow["root"] / "jobs" / "tuning-jobs"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_end_to_end_backfill_and_a_failing_model(airflow):
    """Run 1 trains two models; run 2 adds a good and a crashing model and launches only those;
    run 3 retries only the crashed one. Every run reports old and new results together."""
    store = ResultsStore(str(airflow["root"] / "results"))

    first = dags_test(airflow["environment"], conf(airflow, ["test_efficientnet", "test_resnet"]))
    assert run_succeeded(first.stdout + first.stderr), (first.stdout + first.stderr)[-4000:]
    rows = {row["model_id"]: row for row in store.read_latest(dataset="tiny")}
    assert {model: row["status"] for model, row in rows.items()} == {"test_efficientnet": "Completed",
                                                                     "test_resnet": "Completed"}
    for row in rows.values():
        assert row["test_accuracy"] is not None and row["test_throughput"] > 0 and row["learning_rate"] in (0.001, 0.0002)
        assert row["best_training_job_name"].startswith(row["tuning_job_name"])
        assert row["test_examples"] == 3 * 4  # what the trainer timed: every test image
    assert len(tuning_jobs(airflow)) == 2
    # the Asset event carries the recommendation: a model with the best test accuracy
    import json
    import sqlite3

    with sqlite3.connect(airflow["root"] / "home" / "airflow.db") as database:
        extra = json.loads(database.execute("SELECT extra FROM asset_event ORDER BY id DESC LIMIT 1").fetchone()[0])
    best = max(row["test_accuracy"] for row in rows.values())
    assert rows[extra["recommended"]]["test_accuracy"] == best, extra
    assert extra["summary"].startswith("Recommended: ") and extra["report"].endswith(rows[extra["recommended"]]["config_hash"])

    # test_convnext cannot run on 16-pixel images (its stem shrinks them below its kernel): a real crash.
    second = dags_test(airflow["environment"],
                       conf(airflow, ["test_efficientnet", "test_resnet", "test_byobnet", "test_convnext"]))
    output = second.stdout + second.stderr
    assert len(tuning_jobs(airflow)) == 4  # only the two new models were launched
    rows = {row["model_id"]: row for row in store.read_latest(dataset="tiny")}
    assert rows["test_byobnet"]["status"] == "Completed"
    assert rows["test_convnext"]["status"] == "Failed"
    assert "Kernel size can't be greater than actual input size" in rows["test_convnext"]["failure_reason"]
    assert "test_convnext" in output and "failed" in output.lower()
    report = Path(next((airflow["root"] / "results" / "reports" / "tiny").iterdir()))
    frontier = (report / "frontier.csv").read_text()
    assert all(model in frontier for model in ("test_efficientnet", "test_resnet", "test_byobnet", "test_convnext"))
    assert "Kernel size can&#x27;t be greater" in (report / "report.html").read_text()

    crashed_job = rows["test_convnext"]["tuning_job_name"]
    third = dags_test(airflow["environment"], conf(airflow, ["test_efficientnet", "test_resnet", "test_byobnet",
                                                             "test_convnext"]))
    output = third.stdout + third.stderr
    # the retried model crashes again, for real; its lane fails alone and the run still reports
    assert run_succeeded(output), output[-4000:]
    assert "test_convnext" in output and "Kernel size can't be greater" in output
    jobs = tuning_jobs(airflow)
    assert len(jobs) == 5  # a new attempt, under a new name, for the failed model only
    assert sum("convnext" in job for job in jobs) == 2
    rows = {row["model_id"]: row for row in store.read_latest(dataset="tiny")}
    assert rows["test_convnext"]["status"] == "Failed" and rows["test_convnext"]["tuning_job_name"] != crashed_job
    assert rows["test_convnext"]["tuning_job_name"] in jobs
    assert {model: row["status"] for model, row in rows.items() if model != "test_convnext"} == {
        "test_efficientnet": "Completed", "test_resnet": "Completed", "test_byobnet": "Completed"}


def test_invalid_input_fails_in_plan_and_launches_nothing(airflow):
    bad = conf(airflow, ["test_resnet", "test_resnet", "no_such_model_xyz"], learning_rate_multipliers=[1.0, -0.2])
    bad["dataset"]["validation"] = str(airflow["root"] / "missing")
    before = tuning_jobs(airflow)
    result = dags_test(airflow["environment"], bad)
    output = result.stdout + result.stderr
    for problem in ("duplicate model ids: ['test_resnet']", "learning rate multiplier -0.2 is not a positive number",
                    "unknown model id 'no_such_model_xyz'", "validation channel: folder", "does not exist"):
        assert problem in output, output[-4000:]
    assert tuning_jobs(airflow) == before


def test_screen_fine_tunes_only_the_best_and_a_later_run_trains_a_screened_out_model(airflow):
    """Three candidates, keep_top 1: one tuning job, two `Screened out` rows with their scores, the screen's
    record and the report's table; then a run naming a screened-out model (no screen) fine-tunes it."""
    store = ResultsStore(str(airflow["root"] / "results"))
    candidates = ["test_efficientnet", "test_resnet", "test_byobnet"]
    screened = conf(airflow, candidates, screen={"keep_top": 1, "score": "knn"}, speed_rounds=2)
    screened["dataset"]["name"] = "screened"
    before = tuning_jobs(airflow)
    result = dags_test(airflow["environment"], screened)
    output = result.stdout + result.stderr
    assert run_succeeded(output), output[-4000:]
    assert ("screen: 3 candidate(s) scored on at most 10 images per class of training and validation, in one local "
            "job; the best 1 fine-tuned; saves 4 training job(s)") in output
    launched = sorted(set(tuning_jobs(airflow)) - set(before))
    rows = {row["model_id"]: row for row in store.read_latest(dataset="screened")}
    kept = [model for model, row in rows.items() if row["status"] == "Completed"]
    out = sorted(model for model, row in rows.items() if row["status"] == "Screened out")
    assert len(kept) == 1 and len(out) == 2 and len(launched) == 1, (rows, launched)
    assert rows[kept[0]]["screen_rank"] == 1
    assert max(rows[model]["screen_knn"] for model in out) <= rows[kept[0]]["screen_knn"]
    for model in out:
        assert rows[model]["tuning_job_name"] is None and "the screen kept the top 1" in rows[model]["failure_reason"]
        assert 0.0 <= rows[model]["screen_knn"] <= 1.0 and rows[model]["screen_seconds"] > 0
    record = store.latest_record("screen", "screened", rows[kept[0]]["config_hash"])
    assert record["kept"] == kept and sorted(record["screened_out"]) == out and record["training_jobs_saved"] == 4
    # the scores came from one training job the DAG launched and waited for, not from the Airflow task
    from model_selection.backends.local import LocalSageMakerClient

    job = LocalSageMakerClient(airflow["root"] / "jobs").describe_training_job(TrainingJobName=record["job_name"])
    assert job["TrainingJobStatus"] == "Completed" and job["ModelArtifacts"]["S3ModelArtifacts"].endswith("model.tar.gz")
    assert record["images"] == 3 * 8 + 3 * 4  # every image: the sample (10 per class) is at least the data set
    speed = store.latest_record("speed", "screened", rows[kept[0]]["config_hash"])
    assert list(speed["models"]) == kept and speed["models"][kept[0]]["throughput"] > 0
    report = (airflow["root"] / "results" / "reports" / "screened" / rows[kept[0]]["config_hash"] / "report.html").read_text()
    assert "Screened out" in report and all(model in report for model in out)

    backfill = conf(airflow, [out[0]], speed_rounds=0)
    backfill["dataset"]["name"] = "screened"
    again = dags_test(airflow["environment"], backfill)
    assert run_succeeded(again.stdout + again.stderr), (again.stdout + again.stderr)[-4000:]
    rows = {row["model_id"]: row for row in store.read_latest(dataset="screened")}
    assert rows[out[0]]["status"] == "Completed" and rows[out[1]]["status"] == "Screened out"
    assert len(set(tuning_jobs(airflow)) - set(before)) == 2
