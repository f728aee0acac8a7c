"""The report files and the CLI, on hand-made result rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from model_selection.frontier import Objective
from model_selection.report import MARKDOWN_HEADER, main, read_rows, write_report
from model_selection.results import ResultsStore

LOCAL = "per example, model forward only"
SAGEMAKER = "per batch, as the JumpStart script reports it"
FAILURE = 'training crashed: <script>alert("x")</script>'


def result_row(model_id: str, family: str, status: str = "Completed", **metrics) -> dict:
    return {
        "dataset": "flowers",
        "model_id": model_id,
        "family": family,
        "config_hash": "12e4",
        "backend": "local",
        "status": status,
        "failure_reason": None,
        "tuning_job_name": f"tune-{model_id}",
        "best_training_job_name": f"train-{model_id}",
        "learning_rate": 0.001,
        "dag_run_id": "manual__2025-01-01",
        "finished_at": "2025-01-01T12:00:00+00:00",
        "throughput_measure": LOCAL,
        **metrics,
    }


@pytest.fixture
def rows() -> list[dict]:
    return [
        result_row("resnet-50", "resnet", num_params=25_600_000, test_accuracy=0.93, test_top_5_accuracy=0.99,
                   test_throughput=400.0, train_epoch_duration=30.24, val_accuracy=0.92),
        result_row("resnet-152", "resnet", num_params=60_200_000, test_accuracy=0.95, test_top_5_accuracy=0.991,
                   test_throughput=150.0, train_epoch_duration=45.26, val_accuracy=0.94),
        result_row("mobilenet-v2", "mobilenet", num_params=3_500_000, test_accuracy=0.88,
                   test_throughput=1200.04, train_epoch_duration=10.0, val_accuracy=0.87),
        # Beaten by resnet-50 on both accuracy and throughput.
        result_row("efficientnet-b0", "efficientnet", num_params=5_300_000, test_accuracy=0.90, test_top_5_accuracy=0.98,
                   test_throughput=350.0, train_epoch_duration=12.0, val_accuracy=0.90),
        result_row("vit-base", "vit", status="Failed", failure_reason=FAILURE, test_accuracy=None, test_throughput=None),
        # The most accurate, but without a throughput it cannot be placed on the frontier.
        result_row("inception-v3", "inception", num_params=23_900_000, test_accuracy=0.96, train_epoch_duration=25.0),
    ]


EXPECTED_FRONTIER = {
    "resnet-50": "True",
    "resnet-152": "True",
    "mobilenet-v2": "True",
    "efficientnet-b0": "False",
    "vit-base": "False",
    "inception-v3": "False",
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_write_report_files(rows, tmp_path):
    paths = write_report(rows, tmp_path / "out", settings={"objective note": "<script>alert('s')</script>"})
    assert {path.name for path in paths.values()} == {"frontier.csv", "frontier.md", "frontier.png", "frontier.svg", "report.html"}
    assert all(path.exists() for path in paths.values())

    table = read_csv(paths["csv"])
    assert [row["model_id"] for row in table] == [row["model_id"] for row in rows]
    assert {row["model_id"]: row["on_frontier"] for row in table} == EXPECTED_FRONTIER
    header = list(table[0])
    assert header[:3] == ["dataset", "model_id", "family"]
    metric_columns = header[header.index("on_frontier") + 1 :]
    assert metric_columns == sorted(metric_columns)
    assert {"num_params", "test_accuracy", "test_throughput", "val_accuracy"} <= set(metric_columns)
    assert table[4]["failure_reason"] == FAILURE
    assert table[5]["test_throughput"] == "" and table[5]["test_top_5_accuracy"] == ""

    lines = paths["md"].read_text(encoding="utf-8").splitlines()
    assert lines[0] == MARKDOWN_HEADER
    assert lines[0] == (
        "| Model Name | Number of Parameters | Test Accuracy | Test Top 5 Accuracy "
        "| Throughput (images/s) | Duration per Epoch (s) |"
    )
    assert lines[2:5] == [
        "| resnet-152 | 60.2M | 95.0% | 99.1% | 150.0 | 45.3 |",
        "| resnet-50 | 25.6M | 93.0% | 99.0% | 400.0 | 30.2 |",
        "| mobilenet-v2 | 3.5M | 88.0% | – | 1200.0 | 10.0 |",
    ]
    assert lines[5] == ""
    assert f"Throughput measure: {LOCAL}." in lines
    assert "not comparable" not in paths["md"].read_text(encoding="utf-8")

    png = paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000

    page = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;s&#x27;)&lt;/script&gt;" in page
    assert '<figure class="plot" id="frontier-plot"><svg' in page, "the plot is inline, with hover titles"
    assert page.count("<title>") == 1 + 4, "the page's title and one hover title per plotted model"
    for section in ("Frontier", "All models", "Failed, stopped or not launched", "Left out: missing objectives", "Run settings"):
        assert f"<h2>{section}</h2>" in page
    left_out = page.split("<h2>Left out: missing objectives</h2>")[1].split("<h2>")[0]
    assert "inception-v3" in left_out and "test_throughput" in left_out and "vit-base" not in left_out
    failed = page.split("<h2>Failed, stopped or not launched</h2>")[1].split("<h2>")[0]
    assert "vit-base" in failed and "inception-v3" not in failed
    assert "manual__2025-01-01" in page and "12e4" in page


def test_model_ids_and_families_are_escaped_everywhere(rows, tmp_path):
    rows[0]["model_id"] = "<img src=x onerror=alert(1)>"
    rows[1]["family"] = "<b>resnet</b>"
    paths = write_report(rows, tmp_path, title="<i>study</i>")
    page = paths["html"].read_text(encoding="utf-8")
    for raw in ("<img src=x", "<b>resnet", "<i>study"):
        assert raw not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\\<img src=x onerror=alert(1)\\>" in paths["md"].read_text(encoding="utf-8")


def test_mixed_throughput_measures_are_flagged(rows, tmp_path):
    rows[2]["throughput_measure"] = SAGEMAKER
    rows[2]["backend"] = "sagemaker"
    paths = write_report(rows, tmp_path)
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "Throughput is not comparable across these rows:" in markdown
    assert f"{SAGEMAKER} (mobilenet-v2)" in markdown
    assert f"{LOCAL} (resnet-50, resnet-152, efficientnet-b0)" in markdown
    assert "Throughput is not comparable across these rows:" in paths["html"].read_text(encoding="utf-8")


def test_no_plottable_rows_still_writes_every_file(tmp_path):
    failed = [result_row("vit-base", "vit", status="NotLaunched", failure_reason="quota")]
    for rows in ([], failed):
        paths = write_report(rows, tmp_path / str(len(rows)))
        assert paths["png"].read_bytes().startswith(b"\x89PNG")
        assert paths["md"].read_text(encoding="utf-8").startswith(MARKDOWN_HEADER)
        assert "No model is on the frontier" in paths["md"].read_text(encoding="utf-8")
        assert len(read_csv(paths["csv"])) == len(rows)


def test_one_and_three_objectives(rows, tmp_path):
    three = [Objective("test_accuracy", True), Objective("test_throughput", True), Objective("train_epoch_duration", False)]
    paths = write_report(rows, tmp_path / "three", objectives=three)
    assert {row["model_id"]: row["on_frontier"] for row in read_csv(paths["csv"])}["efficientnet-b0"] == "True"
    paths = write_report(rows, tmp_path / "one", objectives=["test_accuracy:max"])
    flags = {row["model_id"]: row["on_frontier"] for row in read_csv(paths["csv"])}
    assert [model for model, flag in flags.items() if flag == "True"] == ["inception-v3"]
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def check_cli_output(out: Path, printed: str) -> None:
    for name in ("frontier.csv", "frontier.md", "frontier.png", "frontier.svg", "report.html"):
        assert (out / name).exists()
        assert str(out / name) in printed
    assert {row["model_id"]: row["on_frontier"] for row in read_csv(out / "frontier.csv")} == EXPECTED_FRONTIER
    assert "6 models" in printed
    assert "3 on the frontier: resnet-152, resnet-50, mobilenet-v2" in printed


def test_cli_reads_a_jsonl_file(rows, tmp_path, capsys):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    main(["--results", str(source), "--out", str(tmp_path / "out")])
    check_cli_output(tmp_path / "out", capsys.readouterr().out)


def test_cli_reads_a_results_store(rows, tmp_path, capsys):
    store = tmp_path / "store"
    ResultsStore(str(store)).append(rows, run_id="r1")
    other = [dict(rows[0], dataset="cifar", model_id="only-in-cifar")]
    ResultsStore(str(store)).append(other, run_id="r2")
    main(["--results", str(store), "--out", str(tmp_path / "out"), "--dataset", "flowers", "--config-hash", "12e4",
          "--objective", "test_accuracy:max", "--objective", "test_throughput:max"])
    printed = capsys.readouterr().out
    check_cli_output(tmp_path / "out", printed)
    assert "only-in-cifar" not in (tmp_path / "out" / "frontier.csv").read_text(encoding="utf-8")


def test_cli_reads_a_csv_file_back(rows, tmp_path, capsys):
    first = write_report(rows, tmp_path / "first")
    parsed = read_rows(str(first["csv"]))
    assert parsed[0]["config_hash"] == "12e4", "identity columns stay text"
    assert parsed[0]["num_params"] == 25_600_000 and parsed[0]["test_accuracy"] == 0.93
    assert parsed[5]["test_throughput"] is None and parsed[4]["failure_reason"] == FAILURE
    main(["--results", str(first["csv"]), "--out", str(tmp_path / "out")])
    check_cli_output(tmp_path / "out", capsys.readouterr().out)


def test_cli_rejects_a_bad_objective(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path), "--objective", "test_accuracy:best"])
    assert "test_accuracy:best" in capsys.readouterr().err


def test_frontier_csv_names_every_family_as_the_plot_and_page_do(tmp_path):
    """The seed's table as a CSV has no family column: frontier.csv derives it from the model id, as the plot does."""
    from test_names_cost_recommendation import SEED_CSV

    from model_selection.names import model_family, row_family

    source = tmp_path / "seed.csv"
    source.write_text(SEED_CSV, encoding="utf-8")
    rows = read_rows(str(source))
    assert rows and not any(row.get("family") for row in rows)
    table = read_csv(write_report(rows, tmp_path / "out")["csv"])
    assert len(table) == len(rows) == 21
    assert {row["model_id"]: row["family"] for row in table} == {row["model_id"]: model_family(row["model_id"]) for row in rows}
    assert {row["family"] for row in table} == {"Swin", "EfficientNet", "EfficientNet-V2", "MobileNet v1", "MobileNet v2",
                                                "MobileNet v3"}
    assert all(row["family"] == row_family(row) for row in table), "the plot's and the page's family"


def test_frontier_csv_keeps_a_row_s_own_family(rows, tmp_path):
    rows[0]["family"] = "my family"
    rows[1]["family"] = None
    table = read_csv(write_report(rows, tmp_path)["csv"])
    assert [row["family"] for row in table[:3]] == ["my family", "ResNet", "mobilenet"]
