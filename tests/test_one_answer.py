"""The plugin page and report.html give one answer: one results store holding a study's rows and its
measurement pass, rendered by the DAG's report task and by the plugin page as the API server serves it."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import pytest

from model_selection.dag_tasks import report_task
from model_selection.results import ResultsStore

DATASET, CONFIG_HASH, RUN_ID = "digits", "5c0ffee1d2a3", "manual__2026-11-28T10:00:00+00:00"
JOB_MEASURE = "per example: model forward passes only, after a warm-up batch, in inference mode (local trainer)"
PASS_METHOD = "measurement pass after training: the saved weights of every completed model timed in one process"
# (model, test accuracy, the job's own throughput, the measurement pass's median, parameters). On the job's
# figures resnet10t dominates mobilenetv3_small_050; the pass, with 2 rounds, puts both on the frontier.
# efficientnet_b0 is dominated by resnet10t either way.
MODELS = (
    ("resnet10t", 0.953, 2348.8, 2268.9, 4.9e6),
    ("mobilenetv3_small_050", 0.912, 2101.4, 2329.1, 1.6e6),
    ("efficientnet_b0", 0.950, 900.3, 880.2, 4.0e6),
)


def collected_row(index: int, model_id: str, accuracy: float, throughput: float, params: float, root: Path) -> dict:
    """A row as collect_metrics writes it for a local model."""
    return {
        "dataset": DATASET, "model_id": model_id, "config_hash": CONFIG_HASH, "backend": "local",
        "status": "Completed", "failure_reason": None, "tuning_job_name": f"ms-digits-{index}",
        "best_training_job_name": f"ms-digits-{index}-001", "learning_rate": 0.001,
        "model_artifacts": (root / "jobs" / f"ms-digits-{index}-001" / "model").as_uri(),
        "test_accuracy": accuracy, "test_examples": 540, "test_throughput": throughput,
        "throughput_measure": JOB_MEASURE, "num_params": params, "train_epoch_duration": 3.2,
        "dag_id": "image_classification_model_selection", "dag_run_id": RUN_ID, "map_index": index,
        "attempt": 1, "finished_at": f"2026-11-28T10:0{index}:00+00:00",
    }


def pass_figures(median: float) -> dict:
    """One model's figures as `speed_pass_for_rows` records them (2 rounds)."""
    return {
        "throughput": median, "throughput_low": median - 14.2, "throughput_high": median + 14.2,
        "latency_bs1_median": 0.0021, "latency_bs1_p90": 0.0026, "end_to_end_throughput": median / 3,
        "end_to_end_throughput_low": median / 3 - 5, "end_to_end_throughput_high": median / 3 + 5,
        "rounds": 2, "batch_size": 32, "threads": 2, "measured_at": "2026-11-28T10:05:00+00:00",
        "device": "cpu", "device_name": "x86_64", "method": PASS_METHOD, "trainer_slots_held": 2,
    }


def study_settings(results: Path, **report: object) -> dict:
    """The plan's study settings (what the report task gets), with the report's settings in `report`."""
    return {
        "backend": "local", "dataset": {"name": DATASET}, "config_hash": CONFIG_HASH, "results_uri": str(results),
        "aws_conn_id": "aws_default", "speed_rounds": 2, "objectives": ["test_accuracy:max", "test_throughput:max"],
        "constraints": [], "local_usd_per_hour": None, "screen": None, **report,
    }


@pytest.fixture
def store(tmp_path) -> ResultsStore:
    """One results store: the run's collected rows and its measurement pass, written as the DAG writes them."""
    store = ResultsStore(str(tmp_path / "results"))
    rows = [collected_row(index, model_id, accuracy, job, params, tmp_path)
            for index, (model_id, accuracy, job, _, params) in enumerate(MODELS)]
    store.append(rows, run_id=RUN_ID, batch="collected")
    store.write_record("speed", DATASET, CONFIG_HASH, RUN_ID, {
        "models": {model_id: pass_figures(median) for model_id, _, _, median, _ in MODELS},
        "model_artifacts": {row["model_id"]: row["model_artifacts"] for row in rows},
        "not_measured": {}, "test_dir": str(tmp_path / "data" / "test"), "batch_size": 32,
    })
    return store


@pytest.fixture
def page(store, monkeypatch):
    """GET the plugin page (and its plot) as the API server serves it, Airflow's access check let through."""
    import airflow.api_fastapi.core_api.security as security
    from fastapi.testclient import TestClient

    from model_selection.ui import create_app

    monkeypatch.setenv("MODEL_SELECTION_RESULTS_URI", store.uri)
    monkeypatch.setattr(security, "requires_access_dag", lambda *args, **kwargs: (lambda: None))
    client = TestClient(create_app())

    def get(path: str = "/") -> bytes:
        answer = client.get(path, params={"dataset": DATASET, "config_hash": CONFIG_HASH})
        assert answer.status_code == 200, answer.text[:500]
        return answer.content

    return get


def _cells(table_html: str) -> list[list[str]]:
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<t[dh]>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table_html, re.S)]


def _table_after(page: str, heading: str) -> list[dict[str, str]]:
    part = page.split(f"<h2>{heading}</h2>", 1)[1]
    header, *rows = _cells(part[:part.index("</table>")])
    return [dict(zip(header, row)) for row in rows]


def answer(page: str) -> dict:
    """What a reader takes from the page: recommendation, frontier, throughput figures and what they measure."""
    recommendation = page.split('<section class="recommendation">', 1)[1].split("</section>", 1)[0]
    frontier = _table_after(page, "Frontier")
    return {
        "recommended": html.unescape(re.search(r"Choose <strong>(.*?)</strong>", recommendation).group(1)),
        "recommendation": html.unescape(re.sub(r"<[^>]+>", "", recommendation)).split(),
        "summary": html.unescape(re.search(r"<p>(\d+ models; .*?)</p>", page).group(1)),
        "frontier": [(row["Model"], row["Throughput (images/s)"]) for row in frontier],
        "note": html.unescape(re.sub(r"<[^>]+>", "", page.split("<h2>Frontier</h2>", 1)[1].split("</table>", 1)[1]
                                     .split("</p>", 1)[0])).strip(),
        "throughput": {row["model_id"]: row["test_throughput"] for row in _table_after(page, "All models")},
        "on_frontier": {row["model_id"]: row["on_frontier"] for row in _table_after(page, "All models")},
    }


def report_files(result: dict) -> tuple[str, str, list[dict[str, str]], bytes]:
    folder = Path(result["report"])
    with (folder / "frontier.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    return ((folder / "report.html").read_text(encoding="utf-8"), (folder / "frontier.md").read_text(encoding="utf-8"),
            table, (folder / "frontier.png").read_bytes())


def markdown_frontier(markdown: str) -> list[tuple[str, str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()[2:]
            if line.startswith("| ")]
    return [(row[0], row[4]) for row in rows]


def test_the_page_and_report_html_give_one_answer_after_a_measurement_pass(store, page):
    result = report_task(study_settings(Path(store.uri)))
    report, markdown, table, png = report_files(result)
    on_page, in_report = answer(page().decode("utf-8")), answer(report)

    assert on_page == in_report
    # ... and that answer is the measurement pass's, in every file.
    assert in_report["frontier"] == [("resnet10t", "2268.9 (2254.7–2283.1)"), ("mobilenetv3_small_050", "2329.1 (2314.9–2343.3)")]
    assert in_report["recommended"] == "resnet10t" == result["recommended"]
    assert in_report["throughput"] == {"resnet10t": "2269", "mobilenetv3_small_050": "2329", "efficientnet_b0": "880.2"}
    assert in_report["note"].startswith(f"Throughput measure: {PASS_METHOD}")
    assert "warm-up batch" not in in_report["note"]
    assert markdown_frontier(markdown) == [("resnet10t", "2268.9"), ("mobilenetv3_small_050", "2329.1")]
    assert {row["model_id"]: (row["on_frontier"], row["test_throughput"]) for row in table} == {
        "resnet10t": ("True", "2268.9"), "mobilenetv3_small_050": ("True", "2329.1"), "efficientnet_b0": ("False", "880.2")}
    # The page's plot is the report's plot.
    assert page("/plot.png") == png


def test_the_page_decides_by_the_study_objectives_and_constraints_as_its_report_did(store, page):
    """Objectives and constraints are not part of the configuration: the report task records them for the page."""
    study = study_settings(Path(store.uri), constraints=["test_throughput>=2300"], local_usd_per_hour=1.5)
    result = report_task(study)
    report, _, _, png = report_files(result)
    on_page, in_report = answer(page().decode("utf-8")), answer(report)

    assert on_page == in_report
    assert in_report["recommended"] == "mobilenetv3_small_050" == result["recommended"]
    assert page("/plot.png") == png


def test_the_page_reads_the_pass_without_torch():
    """The page runs in an API server with no PyTorch: it merges the measurement pass without importing it."""
    import subprocess
    import sys

    probe = "import sys, model_selection.ui, model_selection.report.inputs; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "plugins")}).stdout.strip() == "False"
