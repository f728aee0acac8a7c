"""The report page, rendered from `templates/` with autoescape: every value in the context is plain text or a `Link`.

`report.html` is the stand-alone page (mailed, attached to a DAG run); `ui_page.html` extends it with
the plugin page's navigation. The only markup that goes in unescaped is the plot's SVG, which
`plot.py` writes itself (matplotlib escapes its text, `plot_svg` escapes the hover titles).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Protocol

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from model_selection.dag_tasks import LAUNCH_TASK, WAIT_TASK
from model_selection.frontier import COMPLETED, DEFAULT_OBJECTIVES, Objective, as_objectives, missing_objectives
from model_selection import cost, recommendation as ranking
from model_selection.names import display_name
from model_selection.names import row_family as family
from model_selection.results import SCREENED_OUT
from model_selection.report.plot import CURVE_KEYS, curves_data_uri, has_curves
from model_selection.report.table import (
    MISSING,
    IDENTITY_COLUMNS,
    Link,
    Table,
    by_throughput,
    comparison_table,
    datasets_of,
    flag_by_dataset,
    format_cell,
    frontier_table,
    records_table,
    throughput_note,
    weights_warning,
)

log = logging.getLogger(__name__)

RUN_COLUMNS = (
    ("attempt", "attempt"),
    ("launch_try_number", "launch try"),
    ("launch_waits", "launch waits"),
    ("launch_wait_seconds", "waited for quota or throttling (s)"),
    ("throttled_describes", "throttled describes"),
    ("wait_try_number", "wait try"),
)
# Figures about how a model ran, not what it scored: shown in their own table, not as metrics.
NOT_METRICS = frozenset(IDENTITY_COLUMNS) | {"on_frontier", "dag_id", "map_index"} | {key for key, _ in RUN_COLUMNS} | set(CURVE_KEYS)
FAILED_COLUMNS = ("model_id", "status", "failure_reason", "tuning_job_name", "best_training_job_name", "finished_at")
SCREEN_COLUMNS = ("model_id", "screen_rank", "screen_score_name", "screen_score", "screen_knn", "screen_linear",
                  "screen_logme", "screen_combined", "screen_seconds", "screen_weights", "failure_reason")


class AirflowLinks(Protocol):
    """Where a row's DAG run and mapped task instances are in the Airflow UI (the plugin page has them)."""

    def dag_run(self, dag_id: str, run_id: str) -> str: ...

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str: ...


def _escape_as_before(value: Any) -> Any:
    """Escape with `html.escape` (`&#x27;`, `&quot;`), as the page did before templates; markup passes."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("model_selection.report"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, finalize=_escape_as_before)
    env.tests["link"] = lambda value: isinstance(value, Link)
    return env


# --- what the page says ---------------------------------------------------------------------


@dataclass
class RecommendationView:
    chosen: str | None
    runners_up: list[str]
    reasons: list[tuple[str, str]]
    unmet: str | None = None
    closest: str | None = None
    indistinguishable: list[str] = field(default_factory=list)
    within_noise: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _model_id(item: Any) -> str:
    return str(item.get("model_id")) if isinstance(item, Mapping) else str(item)


def _named(item: Any) -> str:
    model_id = _model_id(item)
    name = display_name(model_id)
    return name if name == model_id else f"{name} ({model_id})"


def recommendation(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], constraints: Sequence[Any]) -> RecommendationView | None:
    """The winner, runners-up and why the others lost, from `model_selection.recommendation.recommend`."""
    if not rows:
        return None
    parsed = [ranking.Constraint.parse(item) if isinstance(item, str) else item for item in constraints]
    result = ranking.recommend(rows, objectives, parsed)
    return RecommendationView(
        chosen=_named(result.chosen) if result.chosen else None,
        runners_up=[_named(item) for item in result.runners_up],
        reasons=[(_named(model), str(text)) for model, text in result.reasons.items()],
        unmet=None if result.chosen else ("No model meets " + (", ".join(map(str, parsed)) or "the objectives") + "."),
        closest=_named(result.closest) if result.closest else None,
        indistinguishable=[_named(item) for item in result.indistinguishable],
        within_noise=[_named(item) for item in result.within_noise],
        notes=[str(note) for note in result.notes],
    )


def with_costs(rows: Sequence[Mapping[str, Any]], prices: Any = None, local_usd_per_hour: float | None = None) -> list[Mapping[str, Any]]:
    """Rows with `cost_usd` (kept where a row has it already), priced from `prices` (a table or its path)."""
    if not rows or all("cost_usd" in row for row in rows):
        return list(rows)
    table = prices if prices is not None and not isinstance(prices, str) else cost.load_prices(prices)
    costed = cost.with_cost(rows, table, local_usd_per_hour)
    return [row if "cost_usd" in row else new for row, new in zip(rows, costed)]


def study_cost(rows: Sequence[Mapping[str, Any]]) -> str | None:
    if not any("cost_usd" in row for row in rows):
        return None
    return str(cost.study_total(rows))


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


def _distinct(rows: Iterable[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({str(row.get(key)) for row in rows if row.get(key) not in (None, "")})


def _figure(value: Any, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def screen_view(screen: Mapping[str, Any] | None) -> Table | None:
    """What the screen cost and saved, and how its ranking compared with fine-tuned accuracy and the ImageNet prior."""
    if not screen:
        return None
    return Table(["", ""], [
        ["score used", f"{screen.get('score')} (kept the top {screen.get('keep_top')} of {screen.get('candidates')})"],
        ["cost", f"{_figure(screen.get('seconds'), 1)} s over {screen.get('images')} images"],
        ["training jobs saved", format_cell(screen.get("training_jobs_saved"))],
        ["Kendall τ, screen score vs fine-tuned test accuracy", _figure(screen.get("screen_tau"))],
        ["Kendall τ, ImageNet top-1 (prior) vs fine-tuned test accuracy", _figure(screen.get("prior_tau"))],
        ["models compared (score, prior and fine-tuned accuracy known)", ", ".join(screen.get("compared_models") or []) or MISSING],
        ["regret: best known accuracy minus best kept", _figure(screen.get("regret"), 4)],
        ["verdict", str(screen.get("verdict"))],
    ])


def render_html(
    rows: Sequence[Mapping[str, Any]],
    plot_src: str | None = None,
    objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES,
    settings: Mapping[str, Any] | None = None,
    title: str = "Model selection",
    links: AirflowLinks | None = None,
    template: str = "report.html",
    plots: Mapping[str | None, str] | None = None,
    constraints: Sequence[Any] = (),
    screen: Mapping[str, Any] | None = None,
    **extra: Any,
) -> str:
    """The report page.

    `plot_src` is the address of a PNG shown as `img#frontier-plot` (the plugin page's route);
    `plots` maps each data set (None for rows without one) to its inline SVG, with hover titles.
    `extra` goes to the template as is (the plugin page's `nav`). Rows with `cost_usd` give the study's cost.
    `screen` is `screening.screen_ranking` of the study's latest screen: how well it ranked, shown beside
    the `Screened out` models' table.
    """
    objectives = as_objectives(objectives)
    flagged, groups = flag_by_dataset(rows, objectives)
    candidates = [row for group in groups for row in group.candidates]
    missing = [row for group in groups for row in group.missing]
    has_cost = any("cost_usd" in row for row in flagged)
    multi = len(groups) > 1

    sections = []
    for group in groups:
        note = throughput_note(group.rows)
        svg = (plots or {}).get(group.dataset)
        sections.append({
            "dataset": group.dataset or MISSING,
            "heading_suffix": f": {group.dataset or MISSING}" if multi else "",
            "recommendation": recommendation(group.rows, objectives, constraints),
            "frontier": frontier_table(group.frontier_rows, cost=has_cost),
            "frontier_names": ", ".join(display_name(row.get("model_id")) for row in by_throughput(group.frontier_rows)) or "none",
            "note": note,
            "note_is_warning": note.startswith("Throughput is not comparable"),
            "weights_warning": weights_warning(group.rows),
            "plot_svg": Markup(svg) if svg else None,
            "plot_id": "frontier-plot" if not multi else f"frontier-plot-{len(sections) + 1}",
        })

    metric_columns = sorted({key for row in flagged for key in row} - NOT_METRICS)
    model_columns = ["model_id", "family", "backend", "status", "on_frontier", "learning_rate", *metric_columns]
    all_models = records_table([{**row, "family": family(row)} for row in flagged], model_columns,
                               ["frontier" if row.get("on_frontier") else "" for row in flagged])
    all_models.headers.insert(1, "name")
    for cells, row in zip(all_models.rows, flagged):
        cells.insert(1, display_name(row.get("model_id")) or MISSING)
    screened_out = sorted((row for row in flagged if row.get("status") == SCREENED_OUT),
                          key=lambda row: (row.get("screen_rank") is None, row.get("screen_rank") or 0))
    not_completed = [row for row in missing if row.get("status") not in (COMPLETED, SCREENED_OUT)]
    incomplete = [row for row in missing if row.get("status") == COMPLETED]
    datasets = datasets_of(flagged)
    # Per-epoch curves of completed models only (a failed job's partial log is not a result).
    curve_rows = [row for row in flagged if row.get("status") in (None, COMPLETED) and has_curves(row)]
    settings_rows = [
        *[[key, value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)]
          for key, value in (settings or {}).items()],
        ["objectives", ", ".join(map(str, objectives))],
        ["constraints", ", ".join(map(str, constraints)) or MISSING],
        ["data sets", ", ".join(datasets) or MISSING],
        ["DAG run ids", ", ".join(_distinct(flagged, "dag_run_id")) or MISSING],
        ["configuration hashes", ", ".join(_distinct(flagged, "config_hash")) or MISSING],
        ["report generated", datetime.now(timezone.utc).isoformat(timespec="seconds")],
    ]
    context = {
        "title": title,
        "summary": (f"{len(flagged)} models; {len(candidates)} completed with every objective "
                    f"({', '.join(map(str, objectives))}); "
                    f"{sum(len(group.frontier_rows) for group in groups)} on the frontier"
                    + ("" if multi else f": {sections[0]['frontier_names']}") + "."),
        "study_cost": study_cost(flagged),
        "multi": multi,
        "datasets": ", ".join(datasets),
        "comparison": comparison_table(flagged) if multi else None,
        "sections": sections,
        "plot_src": plot_src,
        "curves_src": curves_data_uri(curve_rows, with_dataset=multi),
        "curves_names": ", ".join(display_name(row.get("model_id")) or MISSING for row in curve_rows),
        "all_models": all_models,
        "failed": records_table(not_completed, FAILED_COLUMNS),
        "screened_out": records_table(screened_out, SCREEN_COLUMNS),
        "screen": screen_view(screen),
        "incomplete": Table(["model_id", "name", "family", "missing objectives"],
                            [[format_cell(row.get("model_id")), display_name(row.get("model_id")), family(row),
                              ", ".join(missing_objectives(row, objectives))] for row in incomplete]),
        "runs": Table(["model_id", "status", "tuning_job_name", "DAG run", "launch task", "wait task",
                       *[label for _, label in RUN_COLUMNS], "finished_at"],
                      [[format_cell(row.get("model_id")), format_cell(row.get("status")), format_cell(row.get("tuning_job_name")),
                        *_run_cells(row, links), *[format_cell(row.get(key)) for key, _ in RUN_COLUMNS],
                        format_cell(row.get("finished_at"))] for row in flagged]),
        "settings": Table(["setting", "value"], settings_rows),
        **extra,
    }
    return environment().get_template(template).render(context)
