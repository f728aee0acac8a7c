"""JumpStart TensorFlow image-classification ids on the local backend: their timm twins.

The mapping is data, `include/model_maps/jumpstart-tf-ic-to-timm.json`: for each mapped id, the timm
name with its pretrained tag, the input size, how close the twin is (`kind`), and a note on where and
why the weights differ from the TF ones. Only `exact` twins carry the TF model's own weights; every
other kind is an approximation, which a study runs only when it sets `allow_approximate_twins`.
An id the file does not map has no twin of the same architecture; the file's `unmapped` patterns
say why for the catalogue's ids.
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
# How close a twin is, closest first. Only EXACT carries the TF model's own weights (ported).
EXACT = "exact"
OTHER_RESOLUTION = "same architecture, other resolution"
OTHER_PRETRAINING_DATA = "same architecture, other pretraining data"
OTHER_WEIGHTS = "same architecture, other weights"
KINDS = (EXACT, OTHER_RESOLUTION, OTHER_PRETRAINING_DATA, OTHER_WEIGHTS)
# The study Param that lets approximate twins (every kind but EXACT) run.
ALLOW_APPROXIMATE = "allow_approximate_twins"


def is_jumpstart_id(model_id: str) -> bool:
    return model_id.startswith(JUMPSTART_PREFIX)


def load_document(project_root: Path) -> dict[str, Any]:
    """The whole map file: `about`, `kinds`, `models` and `unmapped`."""
    return json.loads((Path(project_root) / MAP_PATH).read_text())


def load_map(project_root: Path) -> dict[str, dict[str, Any]]:
    """JumpStart id -> {"timm": name.tag, "input_size": pixels, "kind": one of KINDS, "note"?: text}."""
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


def approximate_reason(entry: dict[str, Any]) -> str:
    """Why an approximate twin does not run: its kind and timm model, and the Param that would run it."""
    return f"its timm twin {entry['timm']} is approximate ({entry['kind']}) and {ALLOW_APPROXIMATE} is off"


@dataclasses.dataclass(frozen=True)
class Translation:
    """The JumpStart ids of a model list, split into those the local backend trains and the rest."""

    timm_names: dict[str, str]  # JumpStart id that runs -> the timm model the local trainer loads
    input_sizes: dict[str, int]  # JumpStart id that runs -> the JumpStart model's input size (pixels)
    unmapped: dict[str, str]  # JumpStart id without a twin -> why
    nearest: dict[str, list[str]]  # JumpStart id without a twin -> the closest mapped ids
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # JumpStart id that runs -> its twin's kind
    # JumpStart id whose twin is only approximate, while the study does not allow approximations -> its map entry
    withheld: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def approximations(self) -> dict[str, str]:
        """JumpStart ids that run as approximate twins -> kind."""
        return {model_id: kind for model_id, kind in self.kinds.items() if kind != EXACT}

    def not_run(self) -> set[str]:
        return set(self.unmapped) | set(self.withheld)

    def twin(self, model_id: str) -> dict[str, str]:
        """The result-row fields of a JumpStart id that runs: its timm model and how close it is ({} otherwise)."""
        if model_id not in self.timm_names:
            return {}
        return {"timm_twin": self.timm_names[model_id], "twin_kind": self.kinds.get(model_id, EXACT)}

    def left_out(self) -> dict[str, str]:
        """Why each id that does not run is left out (a named list runs without them): the unmapped pattern's
        reason, or the approximate twin's kind."""
        return {**self.unmapped, **{model_id: approximate_reason(entry) for model_id, entry in self.withheld.items()}}

    def problems(self) -> list[str]:
        """One plan problem per id that cannot run: unmapped (with why and the nearest mapped ids), or approximate
        while the study does not allow approximations (with its kind and the Param)."""
        problems = [f"model {model_id!r} has no timm equivalent for the local backend ({reason}; {MAP_PATH}); "
                    f"nearest mapped ids: {', '.join(self.nearest[model_id])}"
                    for model_id, reason in self.unmapped.items()]
        problems += [f"model {model_id!r} has only an approximate timm twin for the local backend: {entry['timm']} "
                     f"({entry['kind']}{'; ' + entry['note'] if entry.get('note') else ''}); set {ALLOW_APPROXIMATE} "
                     "to true to run it" for model_id, entry in self.withheld.items()]
        return problems


def translate_jumpstart_ids(model_ids: Iterable[str], project_root: Path, allow_approximate: bool = False) -> Translation:
    """Each JumpStart TF ic id mapped to its timm twin and input size, or named as unmapped with why; an approximate
    twin (any kind but exact) runs only when `allow_approximate`, else it is withheld.

    Ids that are not JumpStart TF ic ids (timm names) are neither mapped nor reported.
    """
    model_ids = [model_id for model_id in model_ids if is_jumpstart_id(model_id)]
    if not model_ids:
        return Translation({}, {}, {}, {})
    document = load_document(project_root)
    mapping = document["models"]
    runs = [model_id for model_id in model_ids if model_id in mapping
            and (allow_approximate or mapping[model_id]["kind"] == EXACT)]
    unmapped = [model_id for model_id in model_ids if model_id not in mapping]
    return Translation(
        timm_names={model_id: mapping[model_id]["timm"] for model_id in runs},
        input_sizes={model_id: int(mapping[model_id]["input_size"]) for model_id in runs},
        unmapped={model_id: unmapped_reason(model_id, document["unmapped"]) for model_id in unmapped},
        nearest={model_id: nearest_mapped(model_id, mapping) for model_id in unmapped},
        kinds={model_id: mapping[model_id]["kind"] for model_id in runs},
        withheld={model_id: mapping[model_id] for model_id in model_ids
                  if model_id in mapping and model_id not in runs},
    )
