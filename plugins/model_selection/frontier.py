"""The Pareto frontier of trained models over any number of objectives.

No single number picks the "best" image classifier: a larger network is usually more
accurate and slower. The frontier keeps every model that no other model beats on all
objectives at once, so the choice left to a person is only between real trade-offs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

COMPLETED = "Completed"
DIRECTIONS = {"max": True, "min": False}


@dataclass(frozen=True)
class Objective:
    """One metric to optimise, and in which direction."""

    metric: str
    maximize: bool

    @classmethod
    def parse(cls, text: str) -> Objective:
        """Read `metric`, `metric:max` or `metric:min` (a bare name means max, as for accuracy)."""
        metric, colon, direction = str(text).strip().partition(":")
        metric = metric.strip()
        if not metric:
            raise ValueError(f"objective {text!r} names no metric; write e.g. 'test_accuracy:max'")
        if not colon:
            return cls(metric, True)
        key = direction.strip().lower()
        if key not in DIRECTIONS:
            raise ValueError(f"objective {text!r}: direction must be 'max' or 'min', not {direction!r}")
        return cls(metric, DIRECTIONS[key])

    def __str__(self) -> str:
        return f"{self.metric}:{'max' if self.maximize else 'min'}"


DEFAULT_OBJECTIVES: tuple[Objective, ...] = (Objective("test_accuracy", True), Objective("test_throughput", True))


def as_objectives(objectives: Iterable[Objective | str]) -> tuple[Objective, ...]:
    """Accept parsed objectives or their text, so callers and the CLI share one path."""
    return tuple(item if isinstance(item, Objective) else Objective.parse(item) for item in objectives)


def pareto_mask(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[bool]:
    """True for each point that no other point dominates.

    A point is dominated when another is at least as good on every objective and strictly
    better on one. Equal points do not dominate each other, so exact duplicates are all
    kept: dropping one of two identical models would be an arbitrary choice. O(n^2),
    which is nothing for the tens of models a study trains.
    """
    signs = [1.0 if direction else -1.0 for direction in maximize]
    scored: list[list[float]] = []
    for index, point in enumerate(points):
        if len(point) != len(signs):
            raise ValueError(f"point {index} has {len(point)} values for {len(signs)} objectives")
        scored.append([sign * float(value) for sign, value in zip(signs, point)])

    mask = []
    for candidate in scored:
        dominated = any(
            all(o >= c for o, c in zip(other, candidate)) and any(o > c for o, c in zip(other, candidate))
            for other in scored
        )
        mask.append(not dominated)
    return mask


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    """The metric as a finite float, or None when it is absent, empty, non-numeric or NaN/inf."""
    value = row.get(metric)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_candidate(row: Mapping[str, Any], objectives: Iterable[Objective | str]) -> bool:
    """Whether a row can be compared: it completed and has a finite value for every objective."""
    return row.get("status") == COMPLETED and all(
        metric_value(row, objective.metric) is not None for objective in as_objectives(objectives)
    )


def frontier(
    rows: Sequence[Mapping[str, Any]], objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split rows into (candidates flagged with `on_frontier`, rows left out), input order kept.

    Only completed models with a finite value for every objective can be compared; the
    rest are returned in `missing` (with `on_frontier` False) so a report can say why a
    model is absent instead of silently dropping it. The input rows are not modified.
    """
    objectives = as_objectives(objectives)
    candidates: list[dict[str, Any]] = []
    points: list[list[float]] = []
    missing: list[dict[str, Any]] = []
    for row in rows:
        if not is_candidate(row, objectives):
            missing.append({**row, "on_frontier": False})
            continue
        candidates.append(dict(row))
        points.append([metric_value(row, objective.metric) for objective in objectives])  # type: ignore[misc]
    mask = pareto_mask(points, [objective.maximize for objective in objectives])
    for row, on_frontier in zip(candidates, mask):
        row["on_frontier"] = on_frontier
    return candidates, missing


def missing_objectives(row: Mapping[str, Any], objectives: Iterable[Objective | str]) -> list[str]:
    """The objective metrics a row lacks, for saying why it is not on the frontier."""
    return [objective.metric for objective in as_objectives(objectives) if metric_value(row, objective.metric) is None]
