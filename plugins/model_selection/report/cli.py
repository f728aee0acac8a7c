"""`python -m model_selection.report`: read rows from a results store or any CSV / JSONL file, write the report.

    python -m model_selection.report --results FILE_OR_URI --out DIR \
        [--objective test_accuracy:max --objective test_throughput:max ...] \
        [--constraint "test_throughput>=100" ...] [--local-usd-per-hour 0.5] [--prices FILE] \
        [--dataset NAME] [--config-hash HASH]

A file needs only the objectives' columns: a row without a status counts as completed when it has
every objective (a published table of models works as is).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_selection.frontier import DEFAULT_OBJECTIVES, Objective
from model_selection.report.table import TEXT_COLUMNS, by_throughput, flag_by_dataset, throughput_note


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
    from model_selection.report import write_report

    parser = argparse.ArgumentParser(prog="python -m model_selection.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="results-store folder or URI, or a .csv / .jsonl file of rows")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the report into")
    parser.add_argument("--objective", action="append", type=_objective_argument, metavar="METRIC[:max|:min]",
                        help="repeat for each objective (default: test_accuracy:max test_throughput:max)")
    parser.add_argument("--constraint", action="append", default=[], metavar="METRIC>=VALUE",
                        help="repeat for each constraint the recommendation must meet, e.g. test_throughput>=100")
    parser.add_argument("--local-usd-per-hour", type=float, default=None, help="what an hour of the local machine costs")
    parser.add_argument("--prices", default=None, help="price table JSON (default: the bundled SageMaker prices)")
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
    paths = write_report(rows, arguments.out, objectives, settings=settings, title=title, constraints=arguments.constraint,
                         local_usd_per_hour=arguments.local_usd_per_hour, prices=arguments.prices)
    for path in paths.values():
        print(f"wrote {path}")
    _, groups = flag_by_dataset(rows, objectives)
    for group in groups:
        on_frontier = [str(row.get("model_id")) for row in by_throughput(group.frontier_rows)]
        prefix = f"{group.dataset}: " if len(groups) > 1 else ""
        print(f"{prefix}{len(group.rows)} models: {len(group.candidates)} completed with every objective, "
              f"{len(group.missing)} left out; {len(on_frontier)} on the frontier: {', '.join(on_frontier) or 'none'}")
    note = throughput_note(rows)
    if note.startswith("Throughput is not comparable"):
        print(f"warning: {note}")
    return paths
