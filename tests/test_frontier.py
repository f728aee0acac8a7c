"""The Pareto frontier on hand-made points whose answer is known."""

from __future__ import annotations

import math

import pytest

from model_selection.frontier import DEFAULT_OBJECTIVES, Objective, frontier, pareto_mask

MAX_MAX = [True, True]


def test_two_objectives_known_answer():
    # (accuracy, throughput): c is beaten by b on both; d is beaten by a on both.
    points = [(0.95, 100.0), (0.90, 300.0), (0.85, 250.0), (0.80, 50.0), (0.70, 1000.0)]
    assert pareto_mask(points, MAX_MAX) == [True, True, False, False, True]


def test_tie_in_one_objective_the_worse_in_the_other_is_dominated():
    points = [(0.9, 100.0), (0.9, 200.0), (0.8, 200.0)]
    assert pareto_mask(points, MAX_MAX) == [False, True, False]


def test_exact_duplicates_are_both_kept():
    points = [(0.9, 100.0), (0.9, 100.0), (0.5, 50.0)]
    assert pareto_mask(points, MAX_MAX) == [True, True, False]


def test_minimised_objectives():
    # (latency, error): lower is better on both.
    points = [(1.0, 0.10), (2.0, 0.05), (2.0, 0.20), (0.5, 0.30), (3.0, 0.05)]
    assert pareto_mask(points, [False, False]) == [True, True, False, True, False]


def test_mixed_directions():
    # (accuracy max, latency min): b is as accurate as a and slower, so dominated.
    points = [(0.9, 1.0), (0.9, 2.0), (0.95, 3.0)]
    assert pareto_mask(points, [True, False]) == [True, False, True]


def test_three_objectives():
    # A point beaten on the first two can survive through the third.
    points = [(0.9, 100.0, 5.0), (0.8, 90.0, 1.0), (0.8, 90.0, 6.0), (0.95, 50.0, 9.0)]
    assert pareto_mask(points, [True, True, False]) == [True, True, False, True]


def test_single_point_and_empty():
    assert pareto_mask([(0.5, 1.0)], MAX_MAX) == [True]
    assert pareto_mask([], MAX_MAX) == []


def test_point_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="point 1"):
        pareto_mask([(1.0, 2.0), (1.0,)], MAX_MAX)


def row(model_id: str, accuracy=None, throughput=None, status: str = "Completed", **extra) -> dict:
    return {"model_id": model_id, "status": status, "test_accuracy": accuracy, "test_throughput": throughput, **extra}


def test_frontier_leaves_out_incomplete_and_unfinished_rows():
    rows = [
        row("big", 0.95, 100.0),
        row("failed", 0.99, 9999.0, status="Failed"),
        row("small", 0.80, 800.0),
        row("no_throughput", 0.97),  # None
        row("nan_accuracy", math.nan, 500.0),
        {"model_id": "absent_key", "status": "Completed", "test_accuracy": 0.99},
        row("text_value", "0.99", 900.0),
        row("bool_value", True, 900.0),
        row("dominated", 0.75, 700.0),
        row("stopped", None, None, status="Stopped"),
    ]
    candidates, missing = frontier(rows, DEFAULT_OBJECTIVES)
    assert [(r["model_id"], r["on_frontier"]) for r in candidates] == [("big", True), ("small", True), ("dominated", False)]
    assert [r["model_id"] for r in missing] == [
        "failed", "no_throughput", "nan_accuracy", "absent_key", "text_value", "bool_value", "stopped"
    ]
    assert all(r["on_frontier"] is False for r in missing)
    # The failed row would dominate everything if it were compared; it must not be.
    assert "on_frontier" not in rows[0], "input rows are not modified"


def test_frontier_accepts_objective_text_and_minimisation():
    rows = [
        row("fast", 0.80, 900.0, test_latency_per_sample=0.001),
        row("slow", 0.95, 100.0, test_latency_per_sample=0.010),
        row("worse", 0.79, 100.0, test_latency_per_sample=0.010),
    ]
    candidates, missing = frontier(rows, ["test_accuracy", "test_latency_per_sample:min"])
    assert [r["on_frontier"] for r in candidates] == [True, True, False]
    assert missing == []


def test_frontier_of_no_rows():
    assert frontier([], DEFAULT_OBJECTIVES) == ([], [])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("test_accuracy:max", Objective("test_accuracy", True)),
        ("test_throughput:max", Objective("test_throughput", True)),
        ("test_latency_per_sample:min", Objective("test_latency_per_sample", False)),
        ("test_accuracy", Objective("test_accuracy", True)),
    ],
)
def test_objective_parse(text, expected):
    assert Objective.parse(text) == expected
    assert Objective.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["test_accuracy:maximum", "test_accuracy:", "test_accuracy:up", ":max", ""])
def test_objective_parse_errors_name_the_text(text):
    with pytest.raises(ValueError) as error:
        Objective.parse(text)
    assert repr(text) in str(error.value)


def test_objective_is_frozen():
    with pytest.raises(AttributeError):
        DEFAULT_OBJECTIVES[0].maximize = False  # type: ignore[misc]
