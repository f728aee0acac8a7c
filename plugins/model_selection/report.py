"""The model-selection report: frontier table, plot and one self-contained HTML page.

    python -m model_selection.report --results FILE_OR_URI --out DIR \
        [--objective test_accuracy:max --objective test_throughput:max ...] \
        [--dataset NAME] [--config-hash HASH]

`--results` is a results-store location (folder or URI, see `model_selection.results`)
or one `.csv` / `.jsonl` file of result rows. The page is meant to be mailed or attached
to a DAG run, so it embeds its plot and escapes every piece of text that came from a row:
model ids and failure reasons come from users and from remote jobs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from model_selection.dag_tasks import LAUNCH_TASK, WAIT_TASK
from model_selection.frontier import (
    COMPLETED,
    DEFAULT_OBJECTIVES,
    Objective,
    as_objectives,
    frontier,
    is_candidate,
    metric_value,
    missing_objectives,
)

# Who and what a row is; every other key is a metric (or a detail) and sorts after these.
IDENTITY_COLUMNS = (
    "dataset",
    "model_id",
    "family",
    "config_hash",
    "backend",
    "status",
    "failure_reason",
    "tuning_job_name",
    "best_training_job_name",
    "learning_rate",
    "dag_run_id",
    "finished_at",
    "throughput_measure",
)
# Kept as text when reading a CSV: a configuration hash such as "12e4" is not a number.
TEXT_COLUMNS = frozenset(IDENTITY_COLUMNS) - {"learning_rate"}
MISSING = "–"
MARKDOWN_HEADER = (
    "| Model Name | Number of Parameters | Test Accuracy | Test Top 5 Accuracy "
    "| Throughput (images/s) | Duration per Epoch (s) |"
)
METRIC_LABELS = {
    "test_accuracy": "Test accuracy",
    "test_top_5_accuracy": "Test top-5 accuracy",
    "test_throughput": "Test throughput (images/s)",
    "test_latency_per_sample": "Test latency per sample (s)",
    "train_epoch_duration": "Duration per epoch (s)",
    "num_params": "Number of parameters",
    "val_accuracy": "Validation accuracy",
}
FILE_NAMES = {"csv": "frontier.csv", "md": "frontier.md", "png": "frontier.png", "html": "report.html"}


# --- formatting -------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return metric_value({"value": value}, "value")


def format_params(value: Any) -> str:
    """Parameter counts as the JumpStart article writes them: '195.6M'."""
    number = _number(value)
    if number is None:
        return MISSING
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= scale:
            return f"{number / scale:.1f}{suffix}"
    return f"{number:.0f}"


def format_percent(value: Any) -> str:
    """Accuracy as '96.4%'. Rows hold fractions (0.964); a value above 1 is taken as a percent already."""
    number = _number(value)
    if number is None:
        return MISSING
    return f"{number * 100 if abs(number) <= 1 else number:.1f}%"


def format_decimal(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:.1f}"


def format_cell(value: Any) -> str:
    """Any row value as short text for the all-models table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


# (header, key, formatter) of the article-style frontier table.
FRONTIER_TABLE = (
    ("Model Name", "model_id", lambda value: MISSING if value in (None, "") else str(value)),
    ("Number of Parameters", "num_params", format_params),
    ("Test Accuracy", "test_accuracy", format_percent),
    ("Test Top 5 Accuracy", "test_top_5_accuracy", format_percent),
    ("Throughput (images/s)", "test_throughput", format_decimal),
    ("Duration per Epoch (s)", "train_epoch_duration", format_decimal),
)


def _by_throughput(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Slowest first, as the article's table; rows without a throughput go last."""
    return sorted(rows, key=lambda row: (metric_value(row, "test_throughput") is None, metric_value(row, "test_throughput") or 0.0))


def throughput_note(rows: Iterable[Mapping[str, Any]]) -> str:
    """What `test_throughput` measures, or a warning when rows measured different things.

    The local backend times the model's forward pass per example, the JumpStart script
    reports per batch: their numbers differ by the batch size and must not be ranked together.
    """
    by_measure: dict[str, list[str]] = {}
    for row in rows:
        if metric_value(row, "test_throughput") is not None:
            measure = str(row.get("throughput_measure") or "not stated")
            by_measure.setdefault(measure, []).append(str(row.get("model_id")))
    if not by_measure:
        return "No row reports a test throughput."
    if len(by_measure) == 1:
        return f"Throughput measure: {next(iter(by_measure))}."
    parts = "; ".join(f"{measure} ({', '.join(models)})" for measure, models in by_measure.items())
    return f"Throughput is not comparable across these rows: {parts}."


# --- the files ----------------------------------------------------------------------------


def csv_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Identity columns first (always, for a stable schema), then `on_frontier`, then the rest sorted."""
    others = sorted({key for row in rows for key in row} - set(IDENTITY_COLUMNS) - {"on_frontier"})
    return [*IDENTITY_COLUMNS, "on_frontier", *others]


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True)
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    columns = csv_columns(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row.get(column)) for column in columns})
    return path


def _markdown_cell(text: str) -> str:
    """Keep a cell one cell: escape pipes and angle brackets, flatten newlines."""
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def write_markdown(frontier_rows: Sequence[Mapping[str, Any]], all_rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    lines = [MARKDOWN_HEADER, "|" + "---|" * len(FRONTIER_TABLE)]
    for row in _by_throughput(frontier_rows):
        cells = [_markdown_cell(formatter(row.get(key))) for _, key, formatter in FRONTIER_TABLE]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if not frontier_rows:
        lines += ["No model is on the frontier: no completed model has every objective.", ""]
    lines.append(_markdown_cell(throughput_note(all_rows)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_plot(
    candidates: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    path: Path | BinaryIO,
    title: str = "Model selection",
) -> Path | BinaryIO:
    """Accuracy against throughput (the first two objectives, y then x), frontier drawn and labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), dpi=120)
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    axes = figure.add_subplot()
    if not candidates:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no completed models with these metrics", ha="center", va="center", fontsize=16)
        axes.set_title(title)
        figure.savefig(path, format="png")
        return path
    if len(objectives) == 1:
        _plot_single_objective(figure, axes, candidates, objectives[0], title)
    else:
        _plot_scatter(figure, axes, candidates, objectives, title)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, format="png")
    return path


def _family_colours(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    import matplotlib

    families = sorted({str(row.get("family") or "unknown") for row in rows})
    palette = matplotlib.colormaps["tab10" if len(families) <= 10 else "tab20"]
    return {family: palette(index % palette.N) for index, family in enumerate(families)}


def _axis_label(objective: Objective, log: bool = False) -> str:
    better = "higher" if objective.maximize else "lower"
    return f"{metric_label(objective.metric)}{', log scale' if log else ''} ({better} is better)"


def _plot_scatter(figure, axes, rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], title: str) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    y_objective, x_objective = objectives[0], objectives[1]
    xs = [metric_value(row, x_objective.metric) for row in rows]
    ys = [metric_value(row, y_objective.metric) for row in rows]
    params = [metric_value(row, "num_params") for row in rows]
    largest = max((p for p in params if p and p > 0), default=None)
    sizes = [30 + 570 * p / largest if largest and p and p > 0 else 60 for p in params]
    colours = _family_colours(rows)
    on_frontier = [bool(row.get("on_frontier")) for row in rows]

    axes.scatter(
        xs,
        ys,
        s=sizes,
        c=[colours[str(row.get("family") or "unknown")] for row in rows],
        alpha=[0.9 if flag else 0.45 for flag in on_frontier],
        edgecolors=["black" if flag else "none" for flag in on_frontier],
        linewidths=1.2,
        zorder=3,
    )
    frontier_points = sorted((x, y, str(row.get("model_id"))) for x, y, row, flag in zip(xs, ys, rows, on_frontier) if flag)
    if len(objectives) == 2 and frontier_points:
        axes.plot([p[0] for p in frontier_points], [p[1] for p in frontier_points], "--", color="black", linewidth=1.2, zorder=2)
    log_x = "throughput" in x_objective.metric and all(x > 0 for x in xs)
    size_of = {str(row.get("model_id")): size for row, size in zip(rows, sizes)}
    position = (lambda x: math.log(x)) if log_x else (lambda x: x)
    low, high = min(map(position, xs)), max(map(position, xs))
    for index, (x, y, model_id) in enumerate(frontier_points):
        # Clear of the marker (its radius in points is sqrt(area) / 2), away from the right edge,
        # alternating above and below so neighbours on the line do not overprint each other.
        gap = math.sqrt(size_of.get(model_id, 60)) / 2 + 3
        right_side = high > low and (position(x) - low) / (high - low) > 0.6
        axes.annotate(
            model_id,
            (x, y),
            xytext=(-gap if right_side else gap, gap if index % 2 == 0 else -gap - 6),
            textcoords="offset points",
            ha="right" if right_side else "left",
            fontsize=8,
            zorder=4,
        )

    if log_x:
        axes.set_xscale("log")
    for values, axis in ((ys, axes.yaxis), (xs, axes.xaxis)):
        metric = y_objective.metric if axis is axes.yaxis else x_objective.metric
        if "accuracy" in metric and all(0 <= value <= 1 for value in values):
            axis.set_major_formatter(PercentFormatter(xmax=1))  # decimals as the range needs
    axes.set_xlabel(_axis_label(x_objective, log_x))
    axes.set_ylabel(_axis_label(y_objective))
    axes.set_title(f"{title}: {metric_label(y_objective.metric)} vs {metric_label(x_objective.metric)}")
    axes.grid(True, which="major", alpha=0.3)
    axes.margins(0.12)

    handles = [Line2D([], [], marker="o", linestyle="", markersize=8, color=colour, label=family) for family, colour in colours.items()]
    if len(objectives) == 2:
        handles.append(Line2D([], [], linestyle="--", color="black", label="Pareto frontier"))
    axes.legend(handles=handles, title="Family", loc="best", fontsize=8, title_fontsize=9)
    caption = "Point area ∝ number of parameters. Frontier models are outlined and labelled."
    if len(objectives) > 2:
        caption += f" Frontier over {len(objectives)} objectives ({', '.join(map(str, objectives))}); only the first two are plotted."
    figure.text(0.01, 0.01, caption, fontsize=8, color="dimgray")


def _plot_single_objective(figure, axes, rows: Sequence[Mapping[str, Any]], objective: Objective, title: str) -> None:
    """One objective has no trade-off to draw: a ranked bar per model, the best outlined."""
    colours = _family_colours(rows)
    ranked = sorted(rows, key=lambda row: metric_value(row, objective.metric) or 0.0, reverse=not objective.maximize)
    axes.barh(
        [str(row.get("model_id")) for row in ranked],
        [metric_value(row, objective.metric) for row in ranked],
        color=[colours[str(row.get("family") or "unknown")] for row in ranked],
        edgecolor=["black" if row.get("on_frontier") else "none" for row in ranked],
        linewidth=1.5,
    )
    axes.set_xlabel(_axis_label(objective))
    axes.set_title(f"{title}: {metric_label(objective.metric)}")
    axes.tick_params(axis="y", labelsize=8)
    figure.text(0.01, 0.01, "Outlined: the best model(s) on the one objective.", fontsize=8, color="dimgray")


# --- HTML ---------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.frontier td { background: #eef7ee; }
.scroll { overflow-x: auto; }
.note { color: #555; }
.warning { color: #a15c00; font-weight: 600; }
img { max-width: 100%; height: auto; }
"""


RUN_COLUMNS = (
    ("attempt", "attempt"),
    ("launch_try_number", "launch try"),
    ("launch_waits", "launch waits"),
    ("launch_wait_seconds", "waited for quota or throttling (s)"),
    ("throttled_describes", "throttled describes"),
    ("wait_try_number", "wait try"),
)
# Figures about how a model ran, not what it scored: shown in their own table, not as metrics.
NOT_METRICS = frozenset(IDENTITY_COLUMNS) | {"on_frontier", "dag_id", "map_index"} | {key for key, _ in RUN_COLUMNS}


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere; its text and address are escaped like any cell."""

    text: str
    href: str


class AirflowLinks(Protocol):
    """Where a row's DAG run and mapped task instances are in the Airflow UI (the plugin page has them)."""

    def dag_run(self, dag_id: str, run_id: str) -> str: ...

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str: ...


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_cell(value: Any) -> str:
    if isinstance(value, Link):
        return f'<a href="{_escape(value.href)}" target="_top">{_escape(value.text)}</a>'
    return _escape(value)


def _html_table(headers: Sequence[str], body: Iterable[Sequence[Any]], row_classes: Iterable[str] | None = None) -> str:
    """A table whose every header and cell is escaped here, so no caller can forget to."""
    classes = list(row_classes) if row_classes is not None else None
    lines = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f"<th>{_escape(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for index, cells in enumerate(body):
        css = f' class="{_escape(classes[index])}"' if classes and classes[index] else ""
        lines.append(f"<tr{css}>" + "".join(f"<td>{_html_cell(cell)}</td>" for cell in cells) + "</tr>")
    lines += ["</tbody>", "</table></div>"]
    return "\n".join(lines)


def _distinct(rows: Iterable[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({str(row.get(key)) for row in rows if row.get(key) not in (None, "")})


def _run_cells(row: Mapping[str, Any], links: AirflowLinks | None) -> list[Any]:
    """DAG run and task instances of one row: links when the page knows where Airflow is."""
    dag_id, run_id, map_index = row.get("dag_id"), row.get("dag_run_id"), row.get("map_index")
    run_text = format_cell(run_id)
    if links is None or not dag_id or not run_id:
        return [run_text, MISSING, MISSING]
    tasks = [MISSING, MISSING] if map_index is None else [
        Link(f"{task_id.rsplit('.', 1)[-1]}[{map_index}]",
             links.task_instance(str(dag_id), str(run_id), task_id, int(map_index)))
        for task_id in (LAUNCH_TASK, WAIT_TASK)
    ]
    return [Link(run_text, links.dag_run(str(dag_id), str(run_id))), *tasks]


def render_html(
    rows: Sequence[Mapping[str, Any]],
    plot_src: str,
    objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES,
    settings: Mapping[str, Any] | None = None,
    title: str = "Model selection",
    links: AirflowLinks | None = None,
    preface: str = "",
) -> str:
    """The report page; `plot_src` is the plot's address (a data: URI makes the page stand alone).

    `preface` is trusted HTML (the plugin page's navigation) put under the title; callers escape its text.
    """
    objectives = as_objectives(objectives)
    all_rows, candidates, missing = flag_rows(rows, objectives)
    frontier_rows = [row for row in candidates if row.get("on_frontier")]
    not_completed = [row for row in missing if row.get("status") != COMPLETED]
    incomplete = [row for row in missing if row.get("status") == COMPLETED]
    note = throughput_note(all_rows)
    datasets = _distinct(all_rows, "dataset")
    front_ids = ", ".join(str(row.get("model_id")) for row in _by_throughput(frontier_rows)) or "none"

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_escape(title)}</h1>",
        preface,
        f"<p>{_escape(len(all_rows))} models; {_escape(len(candidates))} completed with every objective "
        f"({_escape(', '.join(map(str, objectives)))}); {_escape(len(frontier_rows))} on the frontier: {_escape(front_ids)}.</p>",
    ]
    if len(datasets) > 1:
        parts.append(f'<p class="warning">These rows span {_escape(len(datasets))} data sets ({_escape(", ".join(datasets))}); '
                     "the frontier compares them as one set. Filter with --dataset for one frontier per data set.</p>")
    warning = note.startswith("Throughput is not comparable")
    parts += [
        "<h2>Frontier</h2>",
        _html_table(
            ["Model Name", "Family", *[header for header, _, _ in FRONTIER_TABLE[1:]]],
            (
                [FRONTIER_TABLE[0][2](row.get("model_id")), row.get("family") or MISSING,
                 *[formatter(row.get(key)) for _, key, formatter in FRONTIER_TABLE[1:]]]
                for row in _by_throughput(frontier_rows)
            ),
        ),
        f'<p class="{"warning" if warning else "note"}">{_escape(note)}</p>',
        f'<p><img id="frontier-plot" alt="{_escape(title)}: frontier plot" src="{_escape(plot_src)}"></p>',
    ]

    metric_columns = sorted({key for row in all_rows for key in row} - NOT_METRICS)
    model_columns = ["model_id", "family", "backend", "status", "on_frontier", "learning_rate", *metric_columns]
    parts += [
        "<h2>All models</h2>",
        _html_table(
            model_columns,
            ([format_cell(row.get(column)) for column in model_columns] for row in all_rows),
            ("frontier" if row.get("on_frontier") else "" for row in all_rows),
        ),
        "<h2>Failed, stopped or not launched</h2>",
        _html_table(
            ["model_id", "status", "failure_reason", "tuning_job_name", "best_training_job_name", "finished_at"],
            ([format_cell(row.get(c)) for c in ("model_id", "status", "failure_reason", "tuning_job_name", "best_training_job_name", "finished_at")]
             for row in not_completed),
        ) if not_completed else "<p>None.</p>",
        "<h2>Left out: missing objectives</h2>",
        _html_table(
            ["model_id", "family", "missing objectives"],
            ([format_cell(row.get("model_id")), format_cell(row.get("family")), ", ".join(missing_objectives(row, objectives))]
             for row in incomplete),
        ) if incomplete else "<p>None.</p>",
        "<h2>How each model ran</h2>",
        _html_table(
            ["model_id", "status", "tuning_job_name", "DAG run", "launch task", "wait task",
             *[label for _, label in RUN_COLUMNS], "finished_at"],
            ([format_cell(row.get("model_id")), format_cell(row.get("status")), format_cell(row.get("tuning_job_name")),
              *_run_cells(row, links), *[format_cell(row.get(key)) for key, _ in RUN_COLUMNS],
              format_cell(row.get("finished_at"))] for row in all_rows),
        ),
        "<h2>Run settings</h2>",
        _html_table(
            ["setting", "value"],
            [
                *[[key, value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)]
                  for key, value in (settings or {}).items()],
                ["objectives", ", ".join(map(str, objectives))],
                ["data sets", ", ".join(datasets) or MISSING],
                ["DAG run ids", ", ".join(_distinct(all_rows, "dag_run_id")) or MISSING],
                ["configuration hashes", ", ".join(_distinct(all_rows, "config_hash")) or MISSING],
                ["report generated", datetime.now(timezone.utc).isoformat(timespec="seconds")],
            ],
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def flag_rows(
    rows: Sequence[Mapping[str, Any]], objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(every row flagged, in input order; frontier candidates; rows left out)."""
    objectives = as_objectives(objectives)
    candidates, missing = frontier(rows, objectives)
    # frontier() keeps input order within each list; merge them back by the same test it used.
    remaining_candidates, remaining_missing = iter(candidates), iter(missing)
    flagged = [next(remaining_candidates) if is_candidate(row, objectives) else next(remaining_missing) for row in rows]
    return flagged, candidates, missing


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES,
    settings: Mapping[str, Any] | None = None,
    title: str = "Model selection",
) -> dict[str, Path]:
    """Write frontier.csv, frontier.md, frontier.png and report.html; returns their paths by kind."""
    objectives = as_objectives(objectives)
    if not objectives:
        raise ValueError("a frontier needs at least one objective")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in FILE_NAMES.items()}
    flagged, candidates, missing = flag_rows(rows, objectives)
    frontier_rows = [row for row in candidates if row["on_frontier"]]
    write_csv(flagged, paths["csv"])
    write_markdown(frontier_rows, flagged, paths["md"])
    write_plot(candidates, objectives, paths["png"], title)
    plot_src = "data:image/png;base64," + base64.b64encode(paths["png"].read_bytes()).decode("ascii")
    paths["html"].write_text(render_html(rows, plot_src, objectives, settings, title), encoding="utf-8")
    return paths


# --- reading rows and the CLI ---------------------------------------------------------------


def _parse_csv_value(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in TEXT_COLUMNS:
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_rows(results: str, dataset: str | None = None, config_hash: str | None = None) -> list[dict[str, Any]]:
    """Rows from a `.csv` / `.jsonl` file as they are, or the latest per model from a results store."""
    from model_selection.results import ResultsStore, storage_path

    lowered = results.lower()
    if lowered.endswith((".csv", ".jsonl")):
        text = storage_path(results).read_text(encoding="utf-8")
        if lowered.endswith(".csv"):
            rows = [{column: _parse_csv_value(column, value or "") for column, value in row.items()}
                    for row in csv.DictReader(io.StringIO(text))]
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [row for row in rows
                if (dataset is None or row.get("dataset") == dataset)
                and (config_hash is None or row.get("config_hash") == config_hash)]
    return ResultsStore(results).read_latest(dataset=dataset, config_hash=config_hash)


def _objective_argument(text: str) -> Objective:
    try:
        return Objective.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m model_selection.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="results-store folder or URI, or a .csv / .jsonl file of rows")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the report into")
    parser.add_argument("--objective", action="append", type=_objective_argument, metavar="METRIC[:max|:min]",
                        help="repeat for each objective (default: test_accuracy:max test_throughput:max)")
    parser.add_argument("--dataset", help="only rows of this data set")
    parser.add_argument("--config-hash", help="only rows of this configuration hash")
    parser.add_argument("--title", default=None)
    arguments = parser.parse_args(argv)

    objectives = tuple(arguments.objective) if arguments.objective else DEFAULT_OBJECTIVES
    rows = read_rows(arguments.results, dataset=arguments.dataset, config_hash=arguments.config_hash)
    title = arguments.title or ("Model selection" + (f": {arguments.dataset}" if arguments.dataset else ""))
    settings = {
        "results": arguments.results,
        "objectives": [str(objective) for objective in objectives],
        "dataset filter": arguments.dataset,
        "config hash filter": arguments.config_hash,
    }
    paths = write_report(rows, arguments.out, objectives, settings=settings, title=title)
    for path in paths.values():
        print(f"wrote {path}")
    _, candidates, missing = flag_rows(rows, objectives)
    on_frontier = [str(row.get("model_id")) for row in _by_throughput(row for row in candidates if row["on_frontier"])]
    print(f"{len(rows)} models: {len(candidates)} completed with every objective, {len(missing)} left out; "
          f"{len(on_frontier)} on the frontier: {', '.join(on_frontier) or 'none'}")
    note = throughput_note(rows)
    if note.startswith("Throughput is not comparable"):
        print(f"warning: {note}")
    return paths


if __name__ == "__main__":
    main()
