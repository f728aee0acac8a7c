"""The recommended model under the user's objectives and constraints, and why every other one was not chosen.

Objectives come from frontier.Objective (`test_accuracy:max`, ...); constraints are text such
as `test_throughput>=100`, `num_params<=10e6` or `cost_usd<=5`. The recommendation is the best
model on the first objective (ties broken by the next objectives) among the comparable models
that meet every constraint. Runners-up are the next best such models that no other such model
dominates (up to three). Every other model gets a plain-English reason: which constraint it
breaks and by how much, which model dominates it, or why it could not be compared at all.

A model is comparable when it completed (status "Completed") and has a value for every
objective. Results without a status column at all (a CSV of a published table) count as
completed when they have every objective's value.

Accuracy carries a 95 % Wilson score interval computed from the test set's size, read from
the row's `test_examples` field (or the `test_examples` argument when rows lack it). A
runner-up whose interval overlaps the winner's is listed as indistinguishable from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_selection.cost import as_number
from model_selection.frontier import COMPLETED, DEFAULT_OBJECTIVES, Objective, as_objectives, pareto_mask
from model_selection.names import display_name

OPERATORS = (">=", "<=", "==", ">", "<")
CONSTRAINT_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")
MAX_RUNNERS_UP = 3
TEST_EXAMPLES = "test_examples"
Z_95 = 1.959963984540054


def _fmt(value: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:.4g}"


def _label(metric: str) -> str:
    """`test_accuracy` -> `accuracy`, as a reader says it."""
    return metric[len("test_"):] if metric.startswith("test_") else metric


@dataclass(frozen=True)
class Constraint:
    """A limit a model must meet: `metric op value`, e.g. test_throughput >= 100."""

    metric: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"constraint operator must be one of {', '.join(OPERATORS)}, not {self.op!r}")
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool) or not math.isfinite(self.value):
            raise ValueError(f"constraint value must be a finite number, not {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Read `metric>=value` (also <=, >, <, ==); the value may be written 10e6 or 1_000."""
        match = CONSTRAINT_PATTERN.match(str(text))
        if not match:
            raise ValueError(
                f"constraint {text!r} is not of the form METRIC OP VALUE with OP one of "
                f"{', '.join(OPERATORS)}; write e.g. 'test_throughput>=100' or 'num_params<=10e6'"
            )
        metric, op, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"constraint {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"constraint {text!r}: the value must be finite")
        return cls(metric, op, value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def met_by(self, row: Mapping[str, Any]) -> bool:
        """Whether the row meets it; a row without the metric does not."""
        actual = as_number(row.get(self.metric))
        if actual is None:
            return False
        return {
            ">=": actual >= self.value, "<=": actual <= self.value,
            ">": actual > self.value, "<": actual < self.value, "==": actual == self.value,
        }[self.op]

    def violation(self, row: Mapping[str, Any]) -> float:
        """How far the row misses, relative to the limit: |shortfall| / |limit| (or / 1 when the limit is 0).

        0 when it is met, infinity when the row lacks the metric. For strict operators a value
        exactly at the limit misses by 0 in size but still breaks the constraint.
        """
        actual = as_number(row.get(self.metric))
        if actual is None:
            return math.inf
        if self.met_by(row):
            return 0.0
        scale = abs(self.value) or 1.0
        return abs(actual - self.value) / scale

    def reason(self, row: Mapping[str, Any]) -> str:
        actual = as_number(row.get(self.metric))
        if actual is None:
            return f"breaks {self} (it has no {self.metric})"
        return f"breaks {self} (it has {_fmt(actual)})"


def as_constraints(constraints: Iterable[Constraint | str] | None) -> tuple[Constraint, ...]:
    """Accept parsed constraints or their text, so the DAG Param, the CLI and callers share one path."""
    return tuple(item if isinstance(item, Constraint) else Constraint.parse(item) for item in constraints or ())


def wilson_interval(successes_fraction: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion observed as `successes_fraction` of `n` trials (95 % by default)."""
    if n is None or n <= 0:
        raise ValueError(f"a Wilson interval needs a positive number of examples, not {n!r}")
    p = float(successes_fraction)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"accuracy must be a fraction between 0 and 1, not {successes_fraction!r}")
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high


def is_comparable(row: Mapping[str, Any], objectives: Sequence[Objective]) -> bool:
    """Completed (or, with no status key at all, simply has the values) and a number for every objective."""
    has_values = all(as_number(row.get(objective.metric)) is not None for objective in objectives)
    if "status" not in row:
        return has_values
    return row.get("status") == COMPLETED and has_values


@dataclass
class Recommendation:
    """The chosen model (None when nothing meets the constraints) and why every other one was not chosen."""

    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    chosen: dict[str, Any] | None
    runners_up: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    closest: dict[str, Any] | None = None
    indistinguishable: list[str] = field(default_factory=list)
    frontier: list[str] = field(default_factory=list)
    within_noise: list[str] = field(default_factory=list)  # dominated only within accuracy or throughput noise
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph a report can open with."""
        first = self.objectives[0]
        if self.chosen is None:
            if self.closest is None:
                return "No model completed with a value for every objective, so none can be recommended."
            limits = ", ".join(str(c) for c in self.constraints)
            return (f"No model meets every constraint ({limits}). The closest is "
                    f"{display_name(self.closest['model_id'])}: {self.reasons.get(self.closest['model_id'], '')}.")
        text = (f"Recommended: {display_name(self.chosen['model_id'])}, the best on {first.metric} "
                f"({_fmt(as_number(self.chosen.get(first.metric)))})")
        text += f" among the models that meet {', '.join(str(c) for c in self.constraints)}." if self.constraints else "."
        if self.runners_up:
            text += " Runners-up: " + ", ".join(display_name(row["model_id"]) for row in self.runners_up) + "."
        if self.indistinguishable:
            text += (" Indistinguishable from it on accuracy (95 % Wilson intervals overlap): "
                     + ", ".join(display_name(model_id) for model_id in self.indistinguishable) + ".")
        return text


def _ranking_key(row: Mapping[str, Any], objectives: Sequence[Objective]) -> tuple[float, ...]:
    return tuple(-(1.0 if o.maximize else -1.0) * as_number(row.get(o.metric)) for o in objectives)  # type: ignore[operator]


def _comparison(winner: Mapping[str, Any], loser: Mapping[str, Any], objectives: Sequence[Objective]) -> str:
    return ", ".join(
        f"{_label(o.metric)} {_fmt(as_number(winner.get(o.metric)))} vs {_fmt(as_number(loser.get(o.metric)))}"
        for o in objectives
    )


def _accuracy_metric(objectives: Sequence[Objective], rows: Sequence[Mapping[str, Any]]) -> str | None:
    first = objectives[0].metric
    if first.endswith("accuracy"):
        return first
    return "test_accuracy" if any(as_number(row.get("test_accuracy")) is not None for row in rows) else None


def _interval(row: Mapping[str, Any], metric: str, test_examples: int | None) -> tuple[float, float] | None:
    accuracy = as_number(row.get(metric))
    n = as_number(row.get(TEST_EXAMPLES))
    n = n if n is not None else test_examples
    if accuracy is None or not n or n <= 0 or not 0.0 <= accuracy <= 1.0:
        return None
    return wilson_interval(accuracy, int(n))


def _not_compared_reason(row: Mapping[str, Any], objectives: Sequence[Objective]) -> str:
    status = row.get("status")
    if "status" in row and status != COMPLETED:
        why = f" ({row['failure_reason']})" if row.get("failure_reason") else ""
        return f"not compared: it did not complete (status {status}){why}"
    missing = [o.metric for o in objectives if as_number(row.get(o.metric)) is None]
    return f"not compared: it has no {', '.join(missing)}"


def recommend(
    rows: Sequence[Mapping[str, Any]],
    objectives: Iterable[Objective | str] = DEFAULT_OBJECTIVES,
    constraints: Iterable[Constraint | str] | None = (),
    test_examples: int | None = None,
) -> Recommendation:
    """Choose the best model on the first objective among those meeting every constraint, and explain the rest.

    `closest` (only when no comparable model meets every constraint) is the comparable model
    with the smallest sum over constraints of Constraint.violation, i.e. each shortfall
    divided by its limit; ties go to the better model on the objectives.
    """
    objectives = as_objectives(objectives)
    if not objectives:
        raise ValueError("a recommendation needs at least one objective")
    constraints = as_constraints(constraints)
    maximize = [o.maximize for o in objectives]
    result = Recommendation(objectives, constraints, None)

    comparable = [dict(row) for row in rows if is_comparable(row, objectives)]
    for row in rows:
        if not is_comparable(row, objectives):
            result.reasons[str(row.get("model_id"))] = _not_compared_reason(row, objectives)

    points = [[as_number(row[o.metric]) for o in objectives] for row in comparable]
    result.frontier = [row["model_id"] for row, keep in zip(comparable, pareto_mask(points, maximize)) if keep]

    feasible = [row for row in comparable if all(c.met_by(row) for c in constraints)]
    for row in comparable:
        broken = [c for c in constraints if not c.met_by(row)]
        if broken:
            result.reasons[row["model_id"]] = "; ".join(c.reason(row) for c in broken)

    if not feasible:
        if comparable:
            result.closest = min(
                comparable,
                key=lambda row: (sum(c.violation(row) for c in constraints), _ranking_key(row, objectives)),
            )
            result.notes.append(
                "no model meets every constraint; closest = smallest sum of each shortfall divided by its limit"
            )
        return result

    ranked = sorted(feasible, key=lambda row: _ranking_key(row, objectives))
    feasible_points = [[as_number(row[o.metric]) for o in objectives] for row in ranked]
    undominated = pareto_mask(feasible_points, maximize)
    chosen = ranked[0]
    result.chosen = chosen
    result.runners_up = [row for row, keep in zip(ranked[1:], undominated[1:]) if keep][:MAX_RUNNERS_UP]
    runner_ids = [row["model_id"] for row in result.runners_up]

    accuracy = _accuracy_metric(objectives, comparable)
    if accuracy:
        for row in comparable:
            interval = _interval(row, accuracy, test_examples)
            if interval:
                result.intervals[row["model_id"]] = interval
        winner_interval = result.intervals.get(chosen["model_id"])
        if winner_interval is None:
            result.notes.append(
                f"no test set size ({TEST_EXAMPLES}) for {chosen['model_id']}: cannot tell whether the "
                "runners-up are distinguishable from it on accuracy"
            )
        else:
            for row in result.runners_up:
                other = result.intervals.get(row["model_id"])
                if other and other[0] <= winner_interval[1] and winner_interval[0] <= other[1]:
                    result.indistinguishable.append(row["model_id"])

    first = objectives[0]
    for index, row in enumerate(ranked[1:], start=1):
        model_id = row["model_id"]
        if not undominated[index]:
            dominator = next(
                other for other, point in zip(ranked, feasible_points)
                if _dominates(point, feasible_points[index], maximize)
            )
            result.reasons[model_id] = (
                f"dominated by {display_name(dominator['model_id'])} ({_comparison(dominator, row, objectives)})"
            )
            if _within_noise(row, ranked, feasible_points, index, maximize, result.intervals):
                result.within_noise.append(model_id)
                result.reasons[model_id] += ("; on the frontier within noise: against every model that dominates it, "
                                             "its accuracy's 95 % interval or its measured throughput's range overlaps")
            continue
        comparison = _comparison(chosen, row, objectives)
        if model_id in runner_ids:
            reason = f"runner-up #{runner_ids.index(model_id) + 1}: {comparison}"
            if model_id in result.indistinguishable:
                reason += "; its accuracy is indistinguishable from the winner's (95 % Wilson intervals overlap)"
        else:
            reason = f"on the frontier but ranked {index + 1} on {first.metric}: {comparison}"
        result.reasons[model_id] = reason
    return result


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def throughput_range(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """The slowest and fastest round of the measurement pass, where one timed the model (local backend)."""
    low, high = as_number(row.get("test_throughput_low")), as_number(row.get("test_throughput_high"))
    return None if low is None or high is None else (low, high)


def _within_noise(row: Mapping[str, Any], ranked: Sequence[Mapping[str, Any]], points: Sequence[Sequence[float]],
                  index: int, maximize: Sequence[bool], intervals: Mapping[str, tuple[float, float]]) -> bool:
    """Dominated, but by each dominating model only within noise: their accuracy intervals (from the test
    set's size) or their measured throughput ranges overlap. Were those figures the other way round, as the
    noise allows, that model would not dominate it."""
    dominators = [other for other, point in zip(ranked, points) if _dominates(point, points[index], maximize)]
    return all(_overlap(intervals.get(row["model_id"]), intervals.get(other["model_id"]))
               or _overlap(throughput_range(row), throughput_range(other)) for other in dominators)


def _dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    signed = [(x if up else -x, y if up else -y) for x, y, up in zip(a, b, maximize)]
    return all(x >= y for x, y in signed) and any(x > y for x, y in signed)
