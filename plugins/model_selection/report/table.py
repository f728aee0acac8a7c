"""The report's tables: cell formats, the frontier flags, CSV and Markdown files, and the HTML tables' cells.

Every function here returns plain text (or `Link`s); escaping is the templates' job (autoescape).
"""

from __future__ import annotations

import csv
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from model_selection.frontier import (
    COMPLETED,
    DEFAULT_OBJECTIVES,
    Objective,
    as_objectives,
    frontier,
    is_candidate,
    metric_value,
)
from model_selection.names import display_name
from model_selection.names import row_family as family
from model_selection.recommendation import throughput_range, wilson_interval

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
    "cost_usd": "Cost (USD)",
}
# How many test examples an accuracy was measured on (for its interval): used where a row has it, never guessed.
TEST_SIZE_COLUMNS = ("test_examples", "test_samples", "test_size")


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


def format_cost(value: Any) -> str:
    number = _number(value)
    if number is None:
        return MISSING
    return f"${number:,.2f}" if abs(number) >= 0.01 or number == 0 else f"${number:.4f}"


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


def test_size(row: Mapping[str, Any]) -> int | None:
    for column in TEST_SIZE_COLUMNS:
        number = metric_value(row, column)
        if number is not None and number > 0:
            return int(number)
    return None


def accuracy_interval(row: Mapping[str, Any], metric: str = "test_accuracy") -> tuple[float, float] | None:
    """The 95 % Wilson interval of an accuracy, where the test set's size is known."""
    accuracy, size = metric_value(row, metric), test_size(row)
    if accuracy is None or size is None or not 0 <= accuracy <= 1:
        return None
    low, high = wilson_interval(accuracy, size)
    return float(low), float(high)


def format_accuracy(row: Mapping[str, Any], metric: str = "test_accuracy") -> str:
    """'93.0% (91.2–94.5%, n=1,000)' where the test size is known, else '93.0%'."""
    text = format_percent(row.get(metric))
    interval = accuracy_interval(row, metric)
    if interval is None:
        return text
    return f"{text} ({interval[0] * 100:.1f}–{interval[1] * 100:.1f}%, n={test_size(row):,})"


def format_throughput(row: Mapping[str, Any]) -> str:
    """The median, and the slowest and fastest round where a measurement pass timed the model."""
    text = format_decimal(row.get("test_throughput"))
    spread = throughput_range(row)
    return text if spread is None or text == MISSING else f"{text} ({spread[0]:.1f}–{spread[1]:.1f})"


def model_name(value: Any) -> str:
    return MISSING if value in (None, "") else str(value)


# Where a row's starting weights came from (`weights_source`, see collection.py and model_selection.weights).
RANDOM_INIT_SOURCE = "random init"
PRETRAINED_SOURCES = frozenset({"hub", "file"})
RANDOM_INIT_MARK = " (random init)"


def started_from_random(row: Mapping[str, Any]) -> bool:
    return row.get("weights_source") == RANDOM_INIT_SOURCE


def started_pretrained(row: Mapping[str, Any]) -> bool:
    """Local rows say so; a SageMaker row is a JumpStart fine-tune, which always starts from pretrained weights."""
    source = row.get("weights_source")
    return source in PRETRAINED_SOURCES or (source in (None, "") and row.get("backend") == "sagemaker")


def marked_model_name(row: Mapping[str, Any]) -> str:
    """The model id, marked where the model started from random weights."""
    return model_name(row.get("model_id")) + (RANDOM_INIT_MARK if started_from_random(row) else "")


def weights_warning(rows: Iterable[Mapping[str, Any]]) -> str | None:
    """A warning when completed models started from random weights: beside pretrained ones, or all of them."""
    completed = [row for row in rows if row.get("status") in (None, COMPLETED)]
    random_init = [model_name(row.get("model_id")) for row in completed if started_from_random(row)]
    if not random_init:
        return None
    if any(started_pretrained(row) for row in completed):
        return (f"Mixed starting weights: {', '.join(random_init)} started from random weights, the other models "
                f"from pretrained weights; their accuracies do not compare like for like (marked{RANDOM_INIT_MARK}).")
    return ("Every model here started from random weights (no pretrained weights could be had): "
            "the accuracies do not show transfer learning.")


def twin_cell(row: Mapping[str, Any]) -> str:
    """A JumpStart id trained locally: the timm twin that trained it and how close it is (include/model_maps)."""
    if not row.get("timm_twin"):
        return MISSING
    return f"{row['timm_twin']} ({row.get('twin_kind') or 'kind not recorded'})"


def twin_note(rows: Iterable[Mapping[str, Any]]) -> str | None:
    """Which rows ran as timm twins of JumpStart ids, naming each approximate one (None when no row did)."""
    twins = [row for row in rows if row.get("timm_twin")]
    if not twins:
        return None
    approximate = [f"{model_name(row.get('model_id'))} as {twin_cell(row)}" for row in twins
                   if row.get("twin_kind") != "exact"]
    return (f"Local twins of JumpStart ids: {len(twins) - len(approximate)} exact (the TF weights, ported)"
            + (f"; approximate: {'; '.join(approximate)}." if approximate else "."))


# (header, key, formatter) of the article-style frontier table (and the Markdown file).
FRONTIER_TABLE = (
    ("Model Name", "model_id", model_name),
    ("Number of Parameters", "num_params", format_params),
    ("Test Accuracy", "test_accuracy", format_percent),
    ("Test Top 5 Accuracy", "test_top_5_accuracy", format_percent),
    ("Throughput (images/s)", "test_throughput", format_decimal),
    ("Duration per Epoch (s)", "train_epoch_duration", format_decimal),
)


def by_throughput(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
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


# --- which rows are on the frontier ---------------------------------------------------------


def with_status(row: Mapping[str, Any], objectives: Sequence[Objective]) -> Mapping[str, Any]:
    """A row from any results file: without a status it counts as completed when it has every objective."""
    if row.get("status") not in (None, ""):
        return row
    if all(metric_value(row, objective.metric) is not None for objective in objectives):
        return {**row, "status": COMPLETED}
    return row


def flag_rows(
    rows: Sequence[Mapping[str, Any]], objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(every row flagged, in input order; frontier candidates; rows left out), over the rows as one set."""
    objectives = as_objectives(objectives)
    rows = [with_status(row, objectives) for row in rows]
    candidates, missing = frontier(rows, objectives)
    # frontier() keeps input order within each list; merge them back by the same test it used.
    remaining_candidates, remaining_missing = iter(candidates), iter(missing)
    flagged = [next(remaining_candidates) if is_candidate(row, objectives) else next(remaining_missing) for row in rows]
    return flagged, candidates, missing


def datasets_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({str(row.get("dataset")) for row in rows if row.get("dataset") not in (None, "")})


@dataclass
class DatasetFrontier:
    """One data set's rows, flagged against that data set's models only."""

    dataset: str | None
    rows: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    missing: list[dict[str, Any]]

    @property
    def frontier_rows(self) -> list[dict[str, Any]]:
        return [row for row in self.candidates if row.get("on_frontier")]


def flag_by_dataset(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> tuple[list[dict[str, Any]], list[DatasetFrontier]]:
    """One frontier per data set (a model on cifar does not compete with one on flowers); rows keep input order."""
    names = datasets_of(rows)
    if len(names) <= 1:
        flagged, candidates, missing = flag_rows(rows, objectives)
        return flagged, [DatasetFrontier(names[0] if names else None, flagged, candidates, missing)]
    groups: list[DatasetFrontier] = []
    flagged_by_position: dict[int, dict[str, Any]] = {}
    for name in names + [None]:
        positions = [index for index, row in enumerate(rows)
                     if (str(row.get("dataset")) == name if name is not None else row.get("dataset") in (None, ""))]
        if not positions:
            continue
        flagged, candidates, missing = flag_rows([rows[index] for index in positions], objectives)
        flagged_by_position.update(zip(positions, flagged))
        groups.append(DatasetFrontier(name, flagged, candidates, missing))
    return [flagged_by_position[index] for index in range(len(rows))], groups


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
    """The rows as they are, but `family` as the plot and the page name it: the row's own, else its model id's."""
    columns = csv_columns(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(family(row) if column == "family" else row.get(column))
                             for column in columns})
    return path


def _markdown_cell(text: str) -> str:
    """Keep a cell one cell: escape pipes and angle brackets, flatten newlines."""
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def _markdown_table(frontier_rows: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The frontier's table, after a warning when `rows` mix pretrained and random-init models."""
    warning = weights_warning(rows)
    lines = [f"**Warning:** {_markdown_cell(warning)}", ""] if warning else []
    lines += [MARKDOWN_HEADER, "|" + "---|" * len(FRONTIER_TABLE)]
    for row in by_throughput(frontier_rows):
        cells = [marked_model_name(row), *(formatter(row.get(key)) for _, key, formatter in FRONTIER_TABLE[1:])]
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
    lines.append("")
    if not frontier_rows:
        lines += ["No model is on the frontier: no completed model has every objective.", ""]
    return lines


def write_markdown(frontier_rows: Sequence[Mapping[str, Any]], all_rows: Sequence[Mapping[str, Any]], path: Path,
                   groups: Sequence[DatasetFrontier] | None = None) -> Path:
    """The article's table of the frontier; one table per data set when `groups` holds several."""
    if groups is not None and len(groups) > 1:
        lines = []
        for group in groups:
            lines += [f"## {_markdown_cell(str(group.dataset or MISSING))}", "",
                      *_markdown_table(group.frontier_rows, group.rows)]
    else:
        lines = _markdown_table(frontier_rows, all_rows)
    lines.append(_markdown_cell(throughput_note(all_rows)))
    if twin_note(all_rows):
        lines += ["", _markdown_cell(twin_note(all_rows))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the HTML tables (plain text cells; the template escapes them) ----------------------------


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere; its text and address are escaped like any cell."""

    text: str
    href: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    row_classes: list[str] = field(default_factory=list)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, row_classes: Sequence[str] = ()) -> Table:
        return cls([str(column) for column in frame.columns], frame.astype(object).values.tolist(), list(row_classes))

    def __bool__(self) -> bool:
        return bool(self.rows)


def frontier_table(frontier_rows: Sequence[Mapping[str, Any]], cost: bool = False) -> Table:
    """The article's columns, with the display name and family, the accuracy's interval and the throughput's spread."""
    records = [
        {
            "Model": marked_model_name(row),
            "Name": display_name(row.get("model_id")) or MISSING,
            "Family": family(row),
            "Number of Parameters": format_params(row.get("num_params")),
            "Test Accuracy (95% interval)": format_accuracy(row),
            "Test Top 5 Accuracy": format_percent(row.get("test_top_5_accuracy")),
            "Throughput (images/s)": format_throughput(row),
            "Duration per Epoch (s)": format_decimal(row.get("train_epoch_duration")),
            **({"Cost": format_cost(row.get("cost_usd"))} if cost else {}),
            "Local twin (kind)": twin_cell(row),
        }
        for row in by_throughput(frontier_rows)
    ]
    twins = any(row.get("timm_twin") for row in frontier_rows)  # JumpStart ids trained locally: which timm model
    columns = ["Model", "Name", "Family", "Number of Parameters", "Test Accuracy (95% interval)", "Test Top 5 Accuracy",
               "Throughput (images/s)", "Duration per Epoch (s)", *(["Cost"] if cost else []),
               *(["Local twin (kind)"] if twins else [])]
    return Table.from_frame(pd.DataFrame.from_records(records, columns=columns))


def records_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], row_classes: Sequence[str] = ()) -> Table:
    """Rows' values under their own column names, each formatted by `format_cell`."""
    frame = pd.DataFrame.from_records([{column: format_cell(row.get(column)) for column in columns} for row in rows],
                                      columns=list(columns))
    return Table.from_frame(frame, row_classes)


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> Table | None:
    """Model by data set: test accuracy and throughput, as the notebook's pivot; None for one data set."""
    completed = [row for row in rows if row.get("status") == COMPLETED and row.get("dataset") not in (None, "")]
    if len(datasets_of(completed)) < 2:
        return None
    frame = pd.DataFrame.from_records([
        {"model_id": str(row.get("model_id")), "dataset": str(row.get("dataset")),
         "accuracy": metric_value(row, "test_accuracy"), "throughput": metric_value(row, "test_throughput")}
        for row in completed
    ])
    pivot = frame.pivot_table(index="model_id", columns="dataset", values=["accuracy", "throughput"], aggfunc="first", dropna=False)
    datasets = sorted(frame["dataset"].unique())
    out = pd.DataFrame(index=pivot.index)
    out.insert(0, "Model", pivot.index)
    out.insert(1, "Name", [display_name(model) for model in pivot.index])
    for name in datasets:
        out[f"{name}: test accuracy"] = [format_percent(value) for value in pivot.get(("accuracy", name), pd.Series(index=pivot.index))]
        out[f"{name}: throughput (images/s)"] = [format_decimal(value) for value in pivot.get(("throughput", name), pd.Series(index=pivot.index))]
    return Table.from_frame(out.reset_index(drop=True))
