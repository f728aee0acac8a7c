"""JumpStart TensorFlow image-classification ids on the local backend: their timm equivalents.

The mapping is data, `include/model_maps/jumpstart-tf-ic-to-timm.json`: for each mapped id, the timm
name with its pretrained tag, the input size, and a note where the weights differ from the TF ones.
An id the file does not map has no equivalent with the same architecture, input size and weights;
the file's `unmapped` patterns say why for the catalogue's ids.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JUMPSTART_PREFIX = "tensorflow-ic-"
MAP_PATH = Path("include") / "model_maps" / "jumpstart-tf-ic-to-timm.json"


def is_jumpstart_id(model_id: str) -> bool:
    return model_id.startswith(JUMPSTART_PREFIX)


def load_document(project_root: Path) -> dict[str, Any]:
    """The whole map file: `about`, `models` and `unmapped`."""
    return json.loads((Path(project_root) / MAP_PATH).read_text())


def load_map(project_root: Path) -> dict[str, dict[str, Any]]:
    """JumpStart id -> {"timm": name.tag, "input_size": pixels, "note"?: text}."""
    return load_document(project_root)["models"]


def nearest_mapped(model_id: str, mapping: dict[str, Any], n: int = 3) -> list[str]:
    """The `n` mapped ids closest to `model_id` by spelling (difflib), best first."""
    return difflib.get_close_matches(model_id, list(mapping), n=n, cutoff=0.0)


def unmapped_reason(model_id: str, unmapped: dict[str, str]) -> str:
    """Why an id has no timm equivalent: the first `unmapped` pattern it matches, else "not in the map"."""
    for pattern, reason in unmapped.items():
        if fnmatch.fnmatchcase(model_id, pattern):
            return reason
    return f"not in {MAP_PATH}"


@dataclasses.dataclass(frozen=True)
class Translation:
    """The JumpStart ids of a model list, split into those the local backend can train and the rest."""

    timm_names: dict[str, str]  # mapped JumpStart id -> the timm model the local trainer loads
    input_sizes: dict[str, int]  # mapped JumpStart id -> the JumpStart model's input size (pixels)
    unmapped: dict[str, str]  # JumpStart id without an equivalent -> why
    nearest: dict[str, list[str]]  # JumpStart id without an equivalent -> the closest mapped ids

    def problems(self) -> list[str]:
        """One plan problem per unmapped id, naming it, why, and the nearest mapped ids."""
        return [f"model {model_id!r} has no timm equivalent for the local backend ({reason}; {MAP_PATH}); "
                f"nearest mapped ids: {', '.join(self.nearest[model_id])}"
                for model_id, reason in self.unmapped.items()]


def translate_jumpstart_ids(model_ids: Iterable[str], project_root: Path) -> Translation:
    """Each JumpStart TF ic id mapped to its timm model and input size, or named as unmapped with why.

    Ids that are not JumpStart TF ic ids (timm names) are neither mapped nor reported.
    """
    model_ids = [model_id for model_id in model_ids if is_jumpstart_id(model_id)]
    if not model_ids:
        return Translation({}, {}, {}, {})
    document = load_document(project_root)
    mapping = document["models"]
    mapped = [model_id for model_id in model_ids if model_id in mapping]
    unmapped = [model_id for model_id in model_ids if model_id not in mapping]
    return Translation(
        timm_names={model_id: mapping[model_id]["timm"] for model_id in mapped},
        input_sizes={model_id: int(mapping[model_id]["input_size"]) for model_id in mapped},
        unmapped={model_id: unmapped_reason(model_id, document["unmapped"]) for model_id in unmapped},
        nearest={model_id: nearest_mapped(model_id, mapping) for model_id in unmapped},
    )
