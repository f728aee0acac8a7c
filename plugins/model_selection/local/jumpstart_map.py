"""JumpStart TensorFlow image-classification ids on the local backend: their timm equivalents.

The mapping is data, `include/model_maps/jumpstart-tf-ic-to-timm.json`: for each mapped id, the timm
name with its pretrained tag, the input size, and a note where the weights differ from the TF ones.
An id the file does not map has no equivalent with the same architecture and input size.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JUMPSTART_PREFIX = "tensorflow-ic-"
MAP_PATH = Path("include") / "model_maps" / "jumpstart-tf-ic-to-timm.json"


def is_jumpstart_id(model_id: str) -> bool:
    return model_id.startswith(JUMPSTART_PREFIX)


def load_map(project_root: Path) -> dict[str, dict[str, Any]]:
    """JumpStart id -> {"timm": name.tag, "input_size": pixels, "note"?: text}."""
    return json.loads((Path(project_root) / MAP_PATH).read_text())["models"]


def nearest_mapped(model_id: str, mapping: dict[str, Any], n: int = 3) -> list[str]:
    """The `n` mapped ids closest to `model_id` by spelling (difflib), best first."""
    return difflib.get_close_matches(model_id, list(mapping), n=n, cutoff=0.0)


def translate_jumpstart_ids(model_ids: Iterable[str], project_root: Path) -> tuple[dict[str, str], list[str]]:
    """Mapped JumpStart id -> timm name, and one problem per JumpStart id without an equivalent.

    Ids that are not JumpStart TF ic ids (timm names) are neither mapped nor reported.
    """
    model_ids = [model_id for model_id in model_ids if is_jumpstart_id(model_id)]
    if not model_ids:
        return {}, []
    mapping = load_map(project_root)
    names, problems = {}, []
    for model_id in model_ids:
        if model_id in mapping:
            names[model_id] = mapping[model_id]["timm"]
        else:
            nearest = ", ".join(nearest_mapped(model_id, mapping))
            problems.append(f"model {model_id!r} has no timm equivalent for the local backend ({MAP_PATH}); "
                            f"nearest mapped ids: {nearest}")
    return names, problems
