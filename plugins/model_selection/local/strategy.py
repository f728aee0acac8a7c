"""Which hyperparameter sets a tuning job tries: SageMaker's Grid and Random strategies."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any


class StrategyError(ValueError):
    """The tuning configuration cannot be run as written."""


def _sample(rng: random.Random, low: float, high: float, scaling: str) -> float:
    if scaling == "Logarithmic":
        if low <= 0:
            raise StrategyError(f"Logarithmic scaling needs a positive MinValue, got {low}")
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if scaling == "ReverseLogarithmic":
        if high >= 1:
            raise StrategyError(f"ReverseLogarithmic scaling needs MaxValue < 1, got {high}")
        return 1.0 - math.exp(rng.uniform(math.log(1.0 - high), math.log(1.0 - low)))
    return rng.uniform(low, high)


def _bounds(parameter_range: dict[str, Any], cast: type) -> tuple[Any, Any]:
    low, high = cast(parameter_range["MinValue"]), cast(parameter_range["MaxValue"])
    if low > high:
        raise StrategyError(f"parameter range {parameter_range['Name']}: MinValue {low} is above MaxValue {high}")
    return low, high


def plan_trials(config: dict[str, Any]) -> list[dict[str, str]]:
    """The tuned hyperparameters of each training job, as the strings SageMaker passes."""
    ranges = config.get("ParameterRanges") or {}
    categorical = ranges.get("CategoricalParameterRanges", [])
    continuous = ranges.get("ContinuousParameterRanges", [])
    integer = ranges.get("IntegerParameterRanges", [])
    names = [r["Name"] for r in categorical + continuous + integer]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise StrategyError(f"parameter ranges name {duplicates} more than once")
    for parameter_range in categorical:
        if not parameter_range.get("Values"):
            raise StrategyError(f"categorical range {parameter_range['Name']} has no values")
    strategy = config.get("Strategy")
    max_jobs = (config.get("ResourceLimits") or {}).get("MaxNumberOfTrainingJobs")

    if strategy == "Grid":
        if continuous or integer:
            raise StrategyError("the Grid strategy takes categorical parameter ranges only")
        grid = itertools.product(*(parameter_range["Values"] for parameter_range in categorical))
        trials = [dict(zip((r["Name"] for r in categorical), values)) for values in grid]
        if max_jobs is not None and max_jobs < len(trials):
            raise StrategyError(
                f"ResourceLimits.MaxNumberOfTrainingJobs is {max_jobs} but the grid has {len(trials)} combinations"
            )
        return trials

    if strategy == "Random":
        if not max_jobs:
            raise StrategyError("the Random strategy needs ResourceLimits.MaxNumberOfTrainingJobs")
        rng = random.Random(config.get("RandomSeed", 0))
        trials = []
        for _ in range(max_jobs):
            trial = {r["Name"]: rng.choice(r["Values"]) for r in categorical}
            for r in continuous:
                low, high = _bounds(r, float)
                trial[r["Name"]] = repr(_sample(rng, low, high, r.get("ScalingType", "Auto")))
            for r in integer:
                low, high = _bounds(r, int)
                trial[r["Name"]] = str(round(_sample(rng, low, high, r.get("ScalingType", "Auto"))))
            trials.append(trial)
        return trials

    raise StrategyError(f"Strategy {strategy!r}: the local backend runs Grid and Random")
