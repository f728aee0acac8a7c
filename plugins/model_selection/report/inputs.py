"""What a report is made of, from the results store: one function for the DAG's report task and the plugin page.

A study's rows are not the whole answer. Its records say more:

    speed    the measurement pass (local backend): every trained model timed side by side after training;
             its figures replace each job's own `test_throughput` (see `with_speed`)
    screen   the screen's scores, ranked against what was fine-tuned since
    report   the study's report settings (objectives, constraints, local_usd_per_hour), written by the
             DAG's report task, so that the page decides as the run's report did

`report.html`, `frontier.md`, `frontier.csv`, the plugin page and its plot all start from
`read_report_inputs`, so for one data set and configuration they show one frontier, one
recommendation and one set of throughput figures.

Pure Python (no torch): the plugin page runs in an API server without the local training stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_selection.frontier import DEFAULT_OBJECTIVES, Objective, as_objectives
from model_selection.report.page import with_costs

SPEED_RECORD, SCREEN_RECORD, REPORT_RECORD = "speed", "screen", "report"

SPEED_FIELDS = {  # figure in the pass -> field of the row
    "throughput_low": "test_throughput_low",
    "throughput_high": "test_throughput_high",
    "latency_bs1_median": "latency_bs1_median",
    "latency_bs1_p90": "latency_bs1_p90",
    "end_to_end_throughput": "end_to_end_throughput",
    "end_to_end_throughput_low": "end_to_end_throughput_low",
    "end_to_end_throughput_high": "end_to_end_throughput_high",
    "rounds": "speed_rounds",
    "batch_size": "speed_batch_size",
    "threads": "speed_threads",
    "measured_at": "speed_measured_at",
}


def with_speed(rows: Sequence[Mapping[str, Any]], speed_pass: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows with the pass's figures: `test_throughput` becomes the pass's median, the job's own figure is kept
    as `job_test_throughput`. A row is changed only if the pass measured that very model folder; a model the
    pass could not time keeps its job figures and gets `speed_error`. Other rows are returned unchanged.
    Here, not in `local.speed`, so that the page merges the pass without importing torch.
    """
    merged = []
    for row in rows:
        figures = speed_pass.get("models", {}).get(row.get("model_id"))
        same_model = speed_pass.get("model_artifacts", {}).get(row.get("model_id")) == row.get("model_artifacts")
        if not figures or not same_model:
            merged.append(dict(row))
        elif "error" in figures:
            merged.append({**row, "speed_error": figures["error"]})
        else:
            merged.append({
                **row,
                "job_test_throughput": row.get("job_test_throughput", row.get("test_throughput")),  # merging twice
                "test_throughput": figures["throughput"],
                **{field: figures[name] for name, field in SPEED_FIELDS.items()},
                "speed_device": f"{figures['device']} ({figures['device_name']})",
                "throughput_measure": figures["method"],
            })
    return merged


def report_settings(study: Mapping[str, Any]) -> dict[str, Any]:
    """How the study's report decides: what the report task records for the plugin page."""
    return {"objectives": [str(objective) for objective in study.get("objectives") or DEFAULT_OBJECTIVES],
            "constraints": [str(constraint) for constraint in study.get("constraints") or ()],
            "local_usd_per_hour": study.get("local_usd_per_hour")}


@dataclass(frozen=True)
class ReportInputs:
    """The rows as the report shows them (measurement pass applied, costed) and how it decides."""

    rows: list[dict[str, Any]]
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    constraints: tuple[str, ...] = ()
    screen: Mapping[str, Any] | None = None  # `screening.screen_ranking` of the latest screen
    speed: Mapping[str, Any] | None = field(default=None, repr=False)  # the measurement pass applied, if any

    def options(self) -> dict[str, Any]:
        """Keyword arguments of `write_report` and `render_html`."""
        return {"objectives": self.objectives, "constraints": self.constraints, "screen": self.screen}


def prepare_report(
    rows: Sequence[Mapping[str, Any]],
    speed: Mapping[str, Any] | None = None,
    screen: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    prices: Any = None,
) -> ReportInputs:
    """(rows, records) -> the report's inputs: the measurement pass's figures first, then costs, then the screen's ranking."""
    settings = settings or {}
    rows = with_speed(rows, speed) if speed else [dict(row) for row in rows]
    rows = [dict(row) for row in with_costs(rows, prices, settings.get("local_usd_per_hour"))]
    if screen:
        from model_selection.screening import screen_ranking

        screen = screen_ranking(screen, rows)
    return ReportInputs(rows, as_objectives(settings.get("objectives") or DEFAULT_OBJECTIVES),
                        tuple(str(item) for item in settings.get("constraints") or ()), screen or None, speed or None)


def read_report_inputs(
    store: Any,
    dataset: str,
    config_hash: str,
    rows: Sequence[Mapping[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    prices: Any = None,
) -> ReportInputs:
    """The report's inputs for one data set and configuration of a `ResultsStore`.

    `rows`: the latest rows of that data set and configuration when already read (else read here);
    `settings`: the study's `report_settings` (else the latest `report` record, else the defaults).
    """
    if rows is None:
        rows = store.read_latest(dataset=dataset, config_hash=config_hash)
    if settings is None:
        settings = store.latest_record(REPORT_RECORD, dataset, config_hash) or {}
    return prepare_report(rows, speed=store.latest_record(SPEED_RECORD, dataset, config_hash),
                          screen=store.latest_record(SCREEN_RECORD, dataset, config_hash), settings=settings,
                          prices=prices)
