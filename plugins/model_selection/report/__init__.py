"""The model-selection report: frontier table, plot and one self-contained HTML page.

    table.py   cell formats, frontier flags (one frontier per data set), CSV, Markdown, HTML table cells
    plot.py    the plot (PNG, or SVG with hover titles); the only matplotlib import
    page.py    the page from templates/ (Jinja2, autoescape); the plugin page uses ui_page.html
    inputs.py  the report's inputs from a results store (rows + measurement pass, screen and report records):
               one function for the DAG's report task and the plugin page, so both give one answer
    cli.py     `python -m model_selection.report` (see there)

The page is meant to be mailed or attached to a DAG run, so it embeds its plots, and every piece of
text that came from a row is escaped: model ids and failure reasons come from users and remote jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from model_selection.frontier import DEFAULT_OBJECTIVES, Objective, as_objectives
from model_selection.report.cli import main, read_rows
from model_selection.report.inputs import ReportInputs, prepare_report, read_report_inputs, report_settings
from model_selection.report.page import AirflowLinks, render_html, with_costs
from model_selection.report.plot import plot_svg, write_plot
from model_selection.report.table import (
    FRONTIER_TABLE,
    MARKDOWN_HEADER,
    Link,
    comparison_table,
    flag_by_dataset,
    flag_rows,
    format_cell,
    format_decimal,
    format_params,
    format_percent,
    throughput_note,
    write_csv,
    write_markdown,
)

FILE_NAMES = {"csv": "frontier.csv", "md": "frontier.md", "png": "frontier.png", "svg": "frontier.svg", "html": "report.html"}

__all__ = [
    "FILE_NAMES", "FRONTIER_TABLE", "MARKDOWN_HEADER", "AirflowLinks", "Link", "ReportInputs", "comparison_table",
    "flag_by_dataset", "flag_rows", "format_cell", "format_decimal", "format_params", "format_percent", "main",
    "plot_svg", "prepare_report", "read_report_inputs", "read_rows", "render_html", "report_settings",
    "throughput_note", "write_csv", "write_markdown", "write_plot", "write_report",
]


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES,
    settings: Mapping[str, Any] | None = None,
    title: str = "Model selection",
    constraints: Sequence[Any] = (),
    local_usd_per_hour: float | None = None,
    prices: Any = None,
    screen: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write frontier.csv, frontier.md, the plot (PNG and SVG) and report.html; returns their paths by kind.

    With several data sets each gets its own frontier and plot files `frontier-<data set>.png/.svg`
    (keys `png:<data set>`, `svg:<data set>`). `constraints` are texts such as "test_throughput>=100"
    for the recommendation; `prices` a price-table path (default: the bundled one) and
    `local_usd_per_hour` the local machine's rate, for each model's `cost_usd`; `screen` how well the
    study's screen ranked (`screening.screen_ranking`).
    """
    from model_selection.results import safe_file_name

    objectives = as_objectives(objectives)
    if not objectives:
        raise ValueError("a frontier needs at least one objective")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = with_costs(rows, prices, local_usd_per_hour)
    flagged, groups = flag_by_dataset(rows, objectives)
    paths = {kind: out_dir / FILE_NAMES[kind] for kind in ("csv", "md")}
    write_csv(flagged, paths["csv"])
    write_markdown(groups[0].frontier_rows, flagged, paths["md"], groups)
    plots: dict[str | None, str] = {}
    for group in groups:
        suffix = "" if len(groups) == 1 else f":{group.dataset}"
        stem = "frontier" if len(groups) == 1 else f"frontier-{safe_file_name(str(group.dataset))}"
        group_title = title if len(groups) == 1 else f"{title}: {group.dataset}"
        paths["png" + suffix] = out_dir / f"{stem}.png"
        plots[group.dataset] = plot_svg(group.candidates, objectives, group_title, png=paths["png" + suffix])
        paths["svg" + suffix] = out_dir / f"{stem}.svg"
        paths["svg" + suffix].write_text(plots[group.dataset], encoding="utf-8")
    paths["html"] = out_dir / FILE_NAMES["html"]
    paths["html"].write_text(render_html(rows, None, objectives, settings, title, plots=plots, constraints=constraints,
                                         screen=screen),
                             encoding="utf-8")
    return paths
