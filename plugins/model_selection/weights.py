"""Where a model's starting weights came from, as the local trainer records it in metrics.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe_weights(weights: Mapping[str, Any] | str | None) -> str | None:
    """One line for logs, rows and reports: `hub TAG`, `file PATH (sha256 ...)` or `random init`."""
    if weights is None or isinstance(weights, str):
        return weights
    if weights["source"] == "hub":
        return f"hub {weights['tag']}"
    if weights["source"] == "file":
        return f"file {weights['path']} (sha256 {weights['sha256']})"
    return "random init"
