"""The report's plot at 25 models, its hover titles, the page's escaping, several data sets, any results file."""

from __future__ import annotations

import csv
import itertools
import math
import random
import xml.etree.ElementTree as ElementTree


from model_selection.frontier import DEFAULT_OBJECTIVES
from model_selection.report import flag_rows, main, render_html, write_report
from model_selection.report.plot import build_figure, plot_svg

SVG = "{http://www.w3.org/2000/svg}"
FAMILIES = ("resnet", "efficientnet", "mobilenetv3", "vit", "convnext", "swin", "regnet")
HOSTILE = '<img src=x onerror="alert(1)">'


def study_rows(count: int = 25, dataset: str = "flowers", seed: int = 7) -> list[dict]:
    generator = random.Random(seed)
    rows = []
    for index in range(count):
        family = FAMILIES[index % len(FAMILIES)]
        rows.append({
            "dataset": dataset, "model_id": f"{family}_{index}_in1k", "family": family, "status": "Completed",
            "backend": "sagemaker", "instance_type": "ml.g5.xlarge", "billable_seconds": 600 + 60 * index,
            "test_accuracy": 0.80 + 0.15 * generator.random(), "test_examples": 1000,
            "test_throughput": 10 ** generator.uniform(1.5, 3.5), "num_params": generator.uniform(2e6, 3e8),
        })
    # Crowd a corner: near-identical models whose labels must still find room.
    for offset in range(min(4, count)):
        rows[offset]["test_accuracy"], rows[offset]["test_throughput"] = 0.9 + offset * 0.002, 300 + offset * 8
    return rows


def test_no_label_overlaps_another_or_a_point_at_25_models():
    _, candidates, _ = flag_rows(study_rows(), DEFAULT_OBJECTIVES)
    figure, titles = build_figure(candidates, DEFAULT_OBJECTIVES, "25 models")
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    labels = [text for text in axes.texts if (text.get_gid() or "").startswith("ms-label-")]
    boxes = [label.get_window_extent(renderer) for label in labels]
    points = []
    for collection in axes.collections:
        if (collection.get_gid() or "").startswith("ms-point-"):
            (cx, cy), = axes.transData.transform(collection.get_offsets())
            points.append((cx, cy, math.sqrt(collection.get_sizes()[0]) / 2 * figure.dpi / 72))
    assert len(points) == len(titles) == 25
    assert len(labels) >= 20, "most models are labelled; the rest are listed under the plot"
    assert all(label.get_text() for label in labels)
    for first, second in itertools.combinations(boxes, 2):
        assert not first.overlaps(second), (first, second)
    for box in boxes:
        for cx, cy, radius in points:
            nearest = (min(max(cx, box.x0), box.x1), min(max(cy, box.y0), box.y1))
            assert math.dist((cx, cy), nearest) >= radius, (box, cx, cy, radius)
        assert axes.bbox.x0 <= box.x0 and box.x1 <= axes.bbox.x1 and axes.bbox.y0 <= box.y0 and box.y1 <= axes.bbox.y1
    legend_titles = {legend.get_title().get_text() for legend in axes.findobj(lambda artist: hasattr(artist, "get_title") and artist.__class__.__name__ == "Legend")}
    assert {"Family", "Parameters (area)"} <= legend_titles


def test_svg_points_have_hover_titles():
    rows = [dict(row, cost_usd=1.25) for row in study_rows(8)]
    _, candidates, _ = flag_rows(rows, DEFAULT_OBJECTIVES)
    root = ElementTree.fromstring(plot_svg(candidates, DEFAULT_OBJECTIVES))
    groups = [group for group in root.iter(f"{SVG}g") if (group.get("id") or "").startswith("ms-point-")]
    assert len(groups) == 8
    for group in groups:
        title = group.find(f"{SVG}title").text
        model = candidates[int(group.get("id").rsplit("-", 1)[1])]
        assert model["model_id"] in title
        assert "Test accuracy: " in title and "%, n=1,000)" in title  # with its 95 % interval
        assert f"Throughput: {model['test_throughput']:.1f} images/s" in title
        assert "Parameters: " in title and "M" in title.split("Parameters: ")[1]
        assert "Cost: $1.25" in title


def test_a_hostile_model_id_is_escaped_in_page_plot_and_navigation(tmp_path):
    from model_selection.report import Link

    rows = study_rows(5)
    rows[0]["model_id"] = HOSTILE
    rows[1]["failure_reason"] = "</title><script>alert(2)</script>"
    paths = write_report(rows, tmp_path, title="<i>study</i>")
    page = paths["html"].read_text(encoding="utf-8")
    assert "<img src=x" not in page and "<script" not in page and "<i>study" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page.split("<svg", 1)[1]  # the hover title too
    ElementTree.fromstring(paths["svg"].read_text(encoding="utf-8"))  # still well-formed

    nav = {"dataset": HOSTILE, "datasets": [HOSTILE, Link("tiny", "?dataset=tiny")], "configurations": ["abc"],
           "dag": Link("Run the study", "/dags/x"), "live": None}
    ui_page = render_html(rows, "plot.png?dataset=x", template="ui_page.html", nav=nav)
    assert "<img src=x" not in ui_page and 'id="frontier-plot"' in ui_page
    assert f"Data sets: <strong>{'&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'}</strong> · <a href=\"?dataset=tiny\">tiny</a>" in ui_page


def test_two_data_sets_get_a_comparison_table_and_a_frontier_each(tmp_path, capsys):
    rows = study_rows(6, "flowers") + study_rows(6, "cifar", seed=8)
    paths = write_report(rows, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    comparison = page.split("<h2>Across data sets</h2>")[1].split("<h2>")[0]
    assert "<th>cifar: test accuracy</th><th>cifar: throughput (images/s)</th><th>flowers: test accuracy</th>" in comparison
    assert comparison.count("<tr>") == 1 + 6, "one row per model"
    assert "<h2>Frontier: cifar</h2>" in page and "<h2>Frontier: flowers</h2>" in page
    assert "<h2>Recommendation: cifar</h2>" in page and "<h2>Recommendation: flowers</h2>" in page
    assert {"png:cifar", "png:flowers", "svg:cifar", "svg:flowers"} <= set(paths)
    assert (tmp_path / "frontier-cifar.png").exists()
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "## cifar" in markdown and "## flowers" in markdown


def test_cli_reads_a_bare_table_and_recommends(tmp_path, capsys):
    source = tmp_path / "published.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model_id", "test_accuracy", "test_throughput", "num_params"])
        writer.writerows([["big", 0.95, 100, 8e7], ["small", 0.90, 900, 5e6], ["worse", 0.85, 500, 6e6], ["broken", "", 10, 1e6]])
    main(["--results", str(source), "--out", str(tmp_path / "out"), "--constraint", "test_throughput>=2000"])
    printed = capsys.readouterr().out
    assert "4 models: 3 completed with every objective, 1 left out; 2 on the frontier: big, small" in printed
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "No model meets test_throughput" in page and "Closest: <strong>small</strong>" in page


def test_throughput_spread_where_a_measurement_pass_timed_the_model(tmp_path):
    rows = study_rows(3)
    rows[0].update(test_accuracy=0.99, test_throughput=110.0, test_throughput_low=101.5, test_throughput_high=120.3)
    page = render_html(rows, None)
    assert "110.0 (101.5–120.3)" in page
    assert "(101." not in render_html(study_rows(3), None), "no spread where no pass timed the models"
    assert "(95% interval)" in page and "n=1,000)" in page


def test_page_shows_training_curves_only_for_rows_that_have_them(tmp_path):
    import base64
    import io

    from matplotlib.image import imread

    from model_selection.names import display_name
    from model_selection.report.plot import build_curves_figure

    rows = study_rows(5)
    for index, row in enumerate(rows[:3]):
        row["epoch_accuracy"] = [0.5 + 0.1 * epoch for epoch in range(4)]
        row["epoch_val_accuracy"] = [0.45 + 0.08 * epoch for epoch in range(4)]
        row["best_epoch"] = 4 - index
    rows[3].update(status="Failed", epoch_accuracy=[0.1], epoch_val_accuracy=[0.1])  # not completed: no panel

    page = write_report(rows, tmp_path)["html"].read_text(encoding="utf-8")
    figure = page.split('<figure class="curves" id="training-curves">', 1)[1].split("</figure>", 1)[0]
    source = figure.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert imread(io.BytesIO(base64.b64decode(source)), format="png").shape[0] > 100
    assert "No training curves" not in page
    assert "epoch_accuracy" not in page.split("<h2>All models</h2>", 1)[1], "curves are not table columns"

    curve_figure = build_curves_figure([row for row in rows if row["status"] == "Completed"])
    panels = [axes for axes in curve_figure.axes if axes.axison]
    assert len(panels) == 3
    assert [axes.get_title() for axes in panels] == [display_name(row["model_id"]) for row in rows[:3]]
    assert all(len(axes.lines) == 4 for axes in panels), "train, validation, best-epoch line and marker"

    plain = render_html(study_rows(5), None)
    assert 'id="training-curves"' not in plain and "data:image/png" not in plain
    assert "No training curves" in plain


def test_axis_labels_and_tick_labels_lie_inside_the_png(tmp_path):
    """Wide tick labels ("100.0%") pushed the y axis label's start off the seed table's frontier.png."""
    from test_names_cost_recommendation import SEED_CSV

    from matplotlib.image import imread

    from model_selection.report import read_rows

    source = tmp_path / "seed.csv"
    source.write_text(SEED_CSV, encoding="utf-8")
    for rows in (read_rows(str(source)), study_rows()):
        _, candidates, _ = flag_rows(rows, DEFAULT_OBJECTIVES)
        figure, _ = build_figure(candidates, DEFAULT_OBJECTIVES, "Model selection")
        figure.canvas.draw()  # as savefig does: the axis labels take their places
        renderer = figure.canvas.get_renderer()
        axes = figure.axes[0]
        boxes = {"y label": axes.yaxis.label.get_window_extent(renderer), "x label": axes.xaxis.label.get_window_extent(renderer),
                 "title": axes.title.get_window_extent(renderer),
                 # each axis with the tick labels it draws
                 "y axis": axes.yaxis.get_tightbbox(renderer), "x axis": axes.xaxis.get_tightbbox(renderer)}
        for name, box in boxes.items():
            assert (figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1
                    and figure.bbox.y0 <= box.y0 and box.y1 <= figure.bbox.y1), (name, box, figure.bbox)
    png = write_report(read_rows(str(source)), tmp_path / "out")["png"]
    assert imread(png).shape[:2] == (720, 1200), "the plugin page's size, not a tight crop"
