"""The frontier plot and the training curves: the report's only matplotlib import.

Accuracy against throughput (the first two objectives, y then x), coloured by family with a
legend, point area by parameters with a size key. Labels are placed one by one where they
overlap no other label and no point (further out with a leader line when the near places are
taken); a model left without a place is listed under the plot. In the SVG each point carries
a `<title>`, so hovering it shows the model, its accuracy, throughput, parameters and cost.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from model_selection.frontier import Objective, metric_value
from model_selection.names import display_name
from model_selection.names import row_family as family
from model_selection.report.table import (
    format_accuracy,
    format_cost,
    format_params,
    format_throughput,
    metric_label,
)

FIGSIZE, DPI = (10, 6), 120  # 1200 x 720 pixels: the plugin page's image
POINT_GID = "ms-point-{}"
LABEL_GID = "ms-label-{}"
LABEL_PAD_PX = 2.0


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    return figure


def hover_text(row: Mapping[str, Any], objectives: Sequence[Objective] = ()) -> str:
    """What hovering a point shows: model, accuracy, throughput, parameters and cost."""
    name, model_id = display_name(row.get("model_id")), str(row.get("model_id"))
    lines = [
        name if name == model_id else f"{name} ({model_id})",
        f"Family: {family(row)}",
        f"Test accuracy: {format_accuracy(row)}",
        f"Throughput: {format_throughput(row)} images/s",
        f"Parameters: {format_params(row.get('num_params'))}",
        f"Cost: {format_cost(row.get('cost_usd'))}",
    ]
    for objective in objectives:
        if objective.metric not in ("test_accuracy", "test_throughput", "num_params", "cost_usd"):
            value = metric_value(row, objective.metric)
            lines.append(f"{metric_label(objective.metric)}: {'–' if value is None else f'{value:.4g}'}")
    return "\n".join(lines)


def build_figure(candidates: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], title: str = "Model selection"):
    """(figure, {point gid: hover text}); the figure is laid out and its labels placed."""
    figure = _figure()
    axes = figure.add_subplot()
    if not candidates:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no completed models with these metrics", ha="center", va="center", fontsize=16)
        axes.set_title(title)
        return figure, {}
    if len(objectives) == 1:
        _plot_single_objective(figure, axes, candidates, objectives[0], title)
        return figure, {}
    return figure, _plot_scatter(figure, axes, candidates, objectives, title)


def write_plot(
    candidates: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    path: Path | BinaryIO,
    title: str = "Model selection",
    format: str | None = None,
) -> Path | BinaryIO:
    """Write the plot as PNG, or SVG with hover titles (`format="svg"` or a `.svg` path)."""
    kind = format or (Path(path).suffix.lstrip(".").lower() if isinstance(path, (str, Path)) else "png") or "png"
    if kind != "svg":
        figure, _ = build_figure(candidates, objectives, title)
        figure.savefig(path, format="png")
        return path
    svg = plot_svg(candidates, objectives, title)
    if isinstance(path, (str, Path)):
        Path(path).write_text(svg, encoding="utf-8")
    else:
        path.write(svg.encode("utf-8"))
    return path


def plot_svg(candidates: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], title: str = "Model selection",
             png: Path | BinaryIO | None = None) -> str:
    """The plot as an SVG document whose points have hover `<title>`s; also fit to inline in HTML.

    With `png`, the same figure is also written there as PNG (one layout for both).
    """
    import matplotlib

    figure, titles = build_figure(candidates, objectives, title)
    if png is not None:
        figure.savefig(png, format="png")
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "model-selection"}):
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # no XML declaration or DOCTYPE: the same text inlines in HTML
    for gid, text in titles.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{html.escape(text, quote=True)}</title>', 1)
    # Scale with the page instead of a fixed size in points.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', svg, count=1)
    return svg


def _family_colours(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    import matplotlib

    families = sorted({family(row) for row in rows})
    palette = matplotlib.colormaps["tab10" if len(families) <= 10 else "tab20"]
    return {name: palette(index % palette.N) for index, name in enumerate(families)}


def _axis_label(objective: Objective, log: bool = False) -> str:
    better = "higher" if objective.maximize else "lower"
    return f"{metric_label(objective.metric)}{', log scale' if log else ''} ({better} is better)"


def marker_area(params: float | None, largest: float | None) -> float:
    """Scatter area in points²: proportional to the parameter count, within 30..600."""
    return 30 + 570 * params / largest if largest and params and params > 0 else 60


def _plot_scatter(figure, axes, rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], title: str) -> dict[str, str]:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    y_objective, x_objective = objectives[0], objectives[1]
    xs = [metric_value(row, x_objective.metric) for row in rows]
    ys = [metric_value(row, y_objective.metric) for row in rows]
    params = [metric_value(row, "num_params") for row in rows]
    largest = max((p for p in params if p and p > 0), default=None)
    sizes = [marker_area(p, largest) for p in params]
    colours = _family_colours(rows)
    on_frontier = [bool(row.get("on_frontier")) for row in rows]
    titles: dict[str, str] = {}

    for index, (row, x, y, size, flag) in enumerate(zip(rows, xs, ys, sizes, on_frontier)):
        axes.scatter([x], [y], s=size, color=[colours[family(row)]], alpha=0.9 if flag else 0.45,
                     edgecolors="black" if flag else "none", linewidths=1.2, zorder=3, gid=POINT_GID.format(index))
        titles[POINT_GID.format(index)] = hover_text(row, objectives)
    frontier_points = sorted((x, y) for x, y, flag in zip(xs, ys, on_frontier) if flag)
    if len(objectives) == 2 and frontier_points:
        axes.plot([p[0] for p in frontier_points], [p[1] for p in frontier_points], "--", color="black", linewidth=1.2, zorder=2)
    log_x = "throughput" in x_objective.metric and all(x > 0 for x in xs)
    if log_x:
        axes.set_xscale("log")
    for values, axis, metric in ((ys, axes.yaxis, y_objective.metric), (xs, axes.xaxis, x_objective.metric)):
        if "accuracy" in metric and all(0 <= value <= 1 for value in values):
            axis.set_major_formatter(PercentFormatter(xmax=1))  # decimals as the range needs
    axes.set_xlabel(_axis_label(x_objective, log_x))
    axes.set_ylabel(_axis_label(y_objective))
    axes.set_title(f"{title}: {metric_label(y_objective.metric)} vs {metric_label(x_objective.metric)}", fontsize=11)
    axes.grid(True, which="major", alpha=0.3)
    axes.margins(0.12)

    # Legends outside the axes, so no label can land under them.
    handles = [Line2D([], [], marker="o", linestyle="", markersize=7, color=colour, label=name) for name, colour in colours.items()]
    if len(objectives) == 2:
        handles.append(Line2D([], [], linestyle="--", color="black", label="Pareto frontier"))
    family_legend = axes.legend(handles=handles, title="Family", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                fontsize=8, title_fontsize=9, frameon=False, ncols=1 if len(handles) <= 14 else 2)
    axes.add_artist(family_legend)
    known = sorted({p for p in params if p and p > 0})
    if known:
        keys = sorted({known[0], known[len(known) // 2], known[-1]})
        size_handles = [Line2D([], [], marker="o", linestyle="", color="0.6", markersize=math.sqrt(marker_area(p, largest)),
                               label=format_params(p)) for p in keys]
        axes.legend(handles=size_handles, title="Parameters (area)", loc="lower left", bbox_to_anchor=(1.02, 0.0),
                    fontsize=8, title_fontsize=9, frameon=False, labelspacing=1.6, borderpad=1.0)
    figure.subplots_adjust(left=0.08, right=0.76 if len(handles) <= 14 else 0.66, top=0.93, bottom=0.13)
    axes.autoscale_view()
    _fit_left_margin(figure, axes)

    unlabelled = _place_labels(figure, axes, rows, xs, ys, sizes, on_frontier)
    caption = "Point area ∝ number of parameters. Frontier models are outlined. Hover a point (SVG) for its figures."
    if len(objectives) > 2:
        caption += f" Frontier over {len(objectives)} objectives; only the first two are plotted."
    if unlabelled:
        caption += f" Not labelled (no free space): {', '.join(unlabelled)}."
    figure.text(0.01, 0.01, caption, fontsize=7, color="dimgray", wrap=True)
    return titles


def _fit_left_margin(figure, axes, pad_px: float = 4.0) -> None:
    """Widen the left margin until the y axis (tick labels and its label) lies inside the figure.

    Wide tick labels ("100.0%") push the axis label left of a fixed margin, and the PNG cut off its
    start. Only the axes' width changes, so the y ticks stay as they are: one pass is enough.
    """
    overflow = pad_px - axes.yaxis.get_tightbbox(figure.canvas.get_renderer()).x0
    if overflow > 0:
        figure.subplots_adjust(left=figure.subplotpars.left + overflow / figure.bbox.width)


def _ring_offsets(radius_pt: float) -> Iterable[tuple[float, float, str, str, bool]]:
    """(dx, dy, ha, va, needs a leader line) in points, nearest first, around a marker."""
    for ring in range(7):
        distance = radius_pt + 3 + ring * 9
        for degrees in (45, -45, 135, -135, 0, 180, 90, -90, 20, -20, 160, -160, 70, -70, 110, -110):
            angle = math.radians(degrees)
            dx, dy = distance * math.cos(angle), distance * math.sin(angle)
            ha = "left" if dx > 0.3 * distance else "right" if dx < -0.3 * distance else "center"
            va = "bottom" if dy > 0.3 * distance else "top" if dy < -0.3 * distance else "center"
            yield dx, dy, ha, va, ring > 0


def _disc_hits_box(cx: float, cy: float, radius: float, box) -> bool:
    nearest_x = min(max(cx, box.x0), box.x1)
    nearest_y = min(max(cy, box.y0), box.y1)
    return math.hypot(cx - nearest_x, cy - nearest_y) < radius


def _place_labels(figure, axes, rows, xs, ys, sizes, on_frontier) -> list[str]:
    """Label every point where its name overlaps no other label and no point; returns the names left out."""
    renderer = figure.canvas.get_renderer()
    points_to_px = figure.dpi / 72
    centres = axes.transData.transform(list(zip(xs, ys)))
    discs = [(cx, cy, math.sqrt(size) / 2 * points_to_px + 1.5) for (cx, cy), size in zip(centres, sizes)]
    area = axes.bbox.padded(-LABEL_PAD_PX)
    placed = []
    unlabelled = []
    order = sorted(range(len(rows)), key=lambda i: (not on_frontier[i], -(ys[i] or 0.0)))
    for index in order:
        name = display_name(rows[index].get("model_id")) or "?"
        label = axes.annotate(name, (xs[index], ys[index]), xytext=(0, 0), textcoords="offset points",
                              fontsize=8 if on_frontier[index] else 7, color="black" if on_frontier[index] else "0.3",
                              zorder=5, gid=LABEL_GID.format(index), annotation_clip=False)
        radius_pt = math.sqrt(sizes[index]) / 2
        for dx, dy, ha, va, leader in _ring_offsets(radius_pt):
            label.xyann = (dx, dy)
            label.set_horizontalalignment(ha)
            label.set_verticalalignment(va)
            box = label.get_window_extent(renderer).padded(LABEL_PAD_PX)
            if not (area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1):
                continue
            if any(box.overlaps(other) for other in placed):
                continue
            if any(_disc_hits_box(cx, cy, r, box) for cx, cy, r in discs):
                continue
            placed.append(box)
            if leader:
                axes.annotate("", (xs[index], ys[index]), xytext=(dx, dy), textcoords="offset points", zorder=2,
                              arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6,
                                          "shrinkA": 0, "shrinkB": radius_pt})
            break
        else:
            label.remove()
            unlabelled.append(name)
    return unlabelled


def _plot_single_objective(figure, axes, rows: Sequence[Mapping[str, Any]], objective: Objective, title: str) -> None:
    """One objective has no trade-off to draw: a ranked bar per model, the best outlined."""
    colours = _family_colours(rows)
    ranked = sorted(rows, key=lambda row: metric_value(row, objective.metric) or 0.0, reverse=not objective.maximize)
    axes.barh(
        [display_name(row.get("model_id")) for row in ranked],
        [metric_value(row, objective.metric) for row in ranked],
        color=[colours[family(row)] for row in ranked],
        edgecolor=["black" if row.get("on_frontier") else "none" for row in ranked],
        linewidth=1.5,
    )
    axes.set_xlabel(_axis_label(objective))
    axes.set_title(f"{title}: {metric_label(objective.metric)}")
    axes.tick_params(axis="y", labelsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.text(0.01, 0.01, "Outlined: the best model(s) on the one objective.", fontsize=8, color="dimgray")


# --- training curves: one small panel per model ------------------------------------------------

CURVE_KEYS = ("epoch_accuracy", "epoch_val_accuracy")
CURVES_COLUMNS, CURVES_PANEL_INCHES, CURVES_DPI = 4, (3.0, 2.2), 100


def _curve(value: Any) -> list[float]:
    """A stored curve as floats: a list, or its JSON text (a row read back from a file); [] otherwise."""
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            return []
    if not isinstance(value, (list, tuple)):
        return []
    try:
        return [float(item) for item in value]
    except (TypeError, ValueError):
        return []


def row_curves(row: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """(train accuracy per epoch, validation accuracy per epoch) of a row; empty where it has none."""
    return _curve(row.get(CURVE_KEYS[0])), _curve(row.get(CURVE_KEYS[1]))


def has_curves(row: Mapping[str, Any]) -> bool:
    return any(row_curves(row))


def _best_epoch(row: Mapping[str, Any]) -> int | None:
    try:
        value = int(float(row.get("best_epoch")))
    except (TypeError, ValueError):
        return None
    return value if value >= 1 else None


def build_curves_figure(rows: Sequence[Mapping[str, Any]], with_dataset: bool = False):
    """Small multiples: per row with curves, train and validation accuracy per epoch, the best epoch marked.

    Returns None when no row has curves.
    """
    from matplotlib.lines import Line2D
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    rows = [row for row in rows if has_curves(row)]
    if not rows:
        return None
    columns = min(CURVES_COLUMNS, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(CURVES_PANEL_INCHES[0] * columns, CURVES_PANEL_INCHES[1] * lines + 0.6), dpi=CURVES_DPI)
    FigureCanvasAgg(figure)
    panels = figure.subplots(lines, columns, squeeze=False)
    for index, axes in enumerate(panels.flat):
        if index >= len(rows):
            axes.set_axis_off()
            continue
        row = rows[index]
        train, validation = row_curves(row)
        for values, colour, style in ((train, "tab:blue", "-"), (validation, "tab:orange", "--")):
            if values:
                axes.plot(range(1, len(values) + 1), values, style, color=colour, marker="o", markersize=3, linewidth=1.2)
        best = _best_epoch(row)
        if best is not None and best <= max(len(train), len(validation)):
            axes.axvline(best, color="0.4", linestyle=":", linewidth=1)
            if best <= len(validation):
                axes.plot([best], [validation[best - 1]], marker="*", markersize=11, color="tab:red", linestyle="", zorder=4)
        name = display_name(row.get("model_id")) or "?"
        if with_dataset and row.get("dataset"):
            name = f"{name} · {row.get('dataset')}"
        axes.set_title(name, fontsize=9)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if all(0 <= value <= 1 for value in train + validation):
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        axes.tick_params(labelsize=7)
        axes.grid(True, alpha=0.3)
        if index % columns == 0:
            axes.set_ylabel("accuracy", fontsize=8)
        if index >= len(rows) - columns:
            axes.set_xlabel("epoch", fontsize=8)
    handles = [Line2D([], [], color="tab:blue", marker="o", markersize=3, label="train accuracy"),
               Line2D([], [], color="tab:orange", linestyle="--", marker="o", markersize=3, label="validation accuracy"),
               Line2D([], [], color="tab:red", marker="*", markersize=9, linestyle="", label="best epoch (weights kept)")]
    figure.legend(handles=handles, loc="upper center", ncols=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / figure.get_figheight()))
    return figure


def curves_png(rows: Sequence[Mapping[str, Any]], with_dataset: bool = False) -> bytes | None:
    """The training-curves figure as PNG bytes; None when no row has curves."""
    figure = build_curves_figure(rows, with_dataset)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def curves_data_uri(rows: Sequence[Mapping[str, Any]], with_dataset: bool = False) -> str | None:
    """The training-curves PNG as a `data:` address for an `<img>` in a stand-alone page; None without curves."""
    import base64

    png = curves_png(rows, with_dataset)
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")
