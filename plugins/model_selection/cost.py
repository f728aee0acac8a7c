"""What each model cost to train, in US dollars, and the study's total.

SageMaker: the row's `billable_seconds` (BillableTimeInSeconds summed over every training job of
the model's tuning job, failed and stopped ones included; `collection.training_job_billing`) times
the on-demand hourly price of its `instance_type`, from a dated price table
(include/prices/sagemaker-training-on-demand.json unless the user gives another: on-demand list
prices of one region, see its `source`). Managed spot training needs no other price: SageMaker
reports its savings as fewer billable seconds. Rows collected before every training job was counted
(no `training_jobs` field) hold the best training job's seconds only. Local: the
tuning job's wall seconds (`tuning_duration`, else `train_duration`) times a per-hour rate the
user sets. A cost that cannot be known (no price for the instance, no seconds, no local rate)
is None, never 0: an unknown cost must not look free, and must not pass `cost_usd<=5`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

COST_METRIC = "cost_usd"
DEFAULT_PRICE_TABLE = Path(__file__).resolve().parents[2] / "include" / "prices" / "sagemaker-training-on-demand.json"


@dataclass(frozen=True)
class PriceTable:
    """On-demand USD per instance-hour by SageMaker instance type, with the date and source it came from."""

    as_of: str
    region: str
    source: str
    usd_per_hour: Mapping[str, float] = field(default_factory=dict)

    def price(self, instance_type: str | None) -> float | None:
        """The hourly price of an instance type, or None when the table has none."""
        if not instance_type:
            return None
        return self.usd_per_hour.get(str(instance_type).strip())

    def with_overrides(self, overrides: Mapping[str, float] | None) -> PriceTable:
        """A copy with some prices replaced or added (a user's own rates); the source says so."""
        if not overrides:
            return self
        prices = {**self.usd_per_hour, **{str(key): _positive(value, key) for key, value in overrides.items()}}
        note = f"{self.source} User overrides: {', '.join(sorted(overrides))}."
        return PriceTable(self.as_of, self.region, note, prices)


def _positive(value: Any, name: Any) -> float:
    number = as_number(value)
    if number is None or number < 0:
        raise ValueError(f"price for {name!r} must be a non-negative number of USD per hour, not {value!r}")
    return number


def as_number(value: Any) -> float | None:
    """A finite float from a number or numeric text (CSV rows hold text); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
    return number if math.isfinite(number) else None


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read a price table JSON (`as_of`, `region`, `source`, `usd_per_hour`); the bundled table by default."""
    table_path = Path(path) if path else DEFAULT_PRICE_TABLE
    data = json.loads(table_path.read_text())
    missing = [key for key in ("as_of", "region", "source", "usd_per_hour") if key not in data]
    if missing:
        raise ValueError(f"price table {table_path} lacks {', '.join(missing)}")
    prices = {str(name): _positive(value, name) for name, value in dict(data["usd_per_hour"]).items()}
    return PriceTable(str(data["as_of"]), str(data["region"]), str(data["source"]), prices)


def _backend(row: Mapping[str, Any]) -> str | None:
    backend = row.get("backend")
    if backend:
        return str(backend).lower()
    if row.get("instance_type") and row.get("billable_seconds") is not None:
        return "sagemaker"
    return None


def row_cost_usd(row: Mapping[str, Any], prices: PriceTable, local_usd_per_hour: float | None) -> float | None:
    """The model's training cost in USD, or None when its seconds or its rate are unknown."""
    backend = _backend(row)
    if backend == "sagemaker":
        seconds = as_number(row.get("billable_seconds"))
        price = prices.price(row.get("instance_type"))
    elif backend == "local":
        seconds = as_number(row.get("tuning_duration"))
        if seconds is None:
            seconds = as_number(row.get("train_duration"))
        price = as_number(local_usd_per_hour)
    else:
        return None
    if seconds is None or price is None or seconds < 0:
        return None
    return seconds / 3600.0 * price


def with_cost(
    rows: Iterable[Mapping[str, Any]], prices: PriceTable, local_usd_per_hour: float | None
) -> list[dict[str, Any]]:
    """Copies of the rows with `cost_usd` added (None where unknown); the input rows are not modified."""
    return [{**row, COST_METRIC: row_cost_usd(row, prices, local_usd_per_hour)} for row in rows]


class StudyTotal(NamedTuple):
    """The sum of the known costs, how many rows it covers, and the models whose cost is unknown."""

    usd: float
    priced: int
    unpriced: tuple[str, ...]

    def __str__(self) -> str:
        text = f"${self.usd:,.2f} for {self.priced} model{'s' if self.priced != 1 else ''}"
        if self.unpriced:
            text += f" (cost unknown for {len(self.unpriced)}: {', '.join(self.unpriced)})"
        return text


def study_total(rows: Sequence[Mapping[str, Any]]) -> StudyTotal:
    """Total `cost_usd` over every row (failed models cost money too); unknown costs are listed, not counted as 0."""
    total, priced, unpriced = 0.0, 0, []
    for row in rows:
        cost = as_number(row.get(COST_METRIC))
        if cost is None:
            unpriced.append(str(row.get("model_id")))
        else:
            total += cost
            priced += 1
    return StudyTotal(total, priced, tuple(unpriced))
