"""JumpStart TF image-classification ids -> timm: the mapping data against timm's registry, and the plan."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import write_image_folders
from test_names_cost_recommendation import CATALOGUE_IDS

from model_selection.local.jumpstart_map import MAP_PATH, load_document, load_map, nearest_mapped, unmapped_reason
from model_selection.planning import plan_study
from model_selection.study import StudyError

timm = pytest.importorskip("timm")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAPPING = load_map(PROJECT_ROOT)
CURATED = [line.split("#")[0].strip() for line in
           (PROJECT_ROOT / "include" / "model_lists" / "jumpstart-caltech256-frontier.txt").read_text().splitlines()
           if line.split("#")[0].strip()]
# Curated ids with no timm model of the same architecture, input size and pretrained weights: timm has
# EfficientNetV2 in21k weights only from B3 up, and MobileNet v1/v2 weights only at 224 (widths 0.5/1.0/1.4).
# The named list runs its other models on the local backend and leaves these out, saying why.
CURATED_WITHOUT_EQUIVALENT = {
    "tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-b1", "tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-b0",
    "tensorflow-ic-efficientnet-v2-imagenet21k-b0",
    "tensorflow-ic-imagenet-mobilenet-v2-100-192", "tensorflow-ic-imagenet-mobilenet-v2-100-160",
    "tensorflow-ic-imagenet-mobilenet-v2-075-160", "tensorflow-ic-imagenet-mobilenet-v2-075-128",
    "tensorflow-ic-imagenet-mobilenet-v2-075-96", "tensorflow-ic-imagenet-mobilenet-v2-035-96",
    "tensorflow-ic-imagenet-mobilenet-v1-075-160-classification-4",
    "tensorflow-ic-imagenet-mobilenet-v1-100-128-classification-4",
    "tensorflow-ic-imagenet-mobilenet-v1-075-128-classification-4",
    "tensorflow-ic-imagenet-mobilenet-v1-025-128-classification-4",
}


def id_input_size(model_id: str) -> int | None:
    """The resolution a JumpStart id spells (…-224, …-160-classification-4), if it spells one."""
    sizes = [int(part) for part in re.findall(r"-(\d{2,3})(?=-|$)", model_id) if int(part) >= 96]
    return sizes[-1] if sizes else None


def test_every_mapped_name_is_a_timm_model_with_pretrained_weights_of_that_input_size():
    pretrained = set(timm.list_models(pretrained=True))
    assert set(MAPPING) <= set(CATALOGUE_IDS), "only ids of the JumpStart table are mapped"
    for model_id, entry in MAPPING.items():
        assert set(entry) <= {"timm", "input_size", "note"}, model_id
        assert entry["timm"] in pretrained, f"{model_id}: {entry['timm']} has no pretrained weights in timm"
        cfg = timm.models.get_pretrained_cfg(entry["timm"])
        timm_sizes = {cfg.input_size[1]} | ({cfg.test_input_size[1]} if cfg.test_input_size else set())
        assert entry["input_size"] in timm_sizes, f"{model_id}: {entry['input_size']} vs timm {timm_sizes}"
        spelled = id_input_size(model_id)
        if spelled is not None:
            assert entry["input_size"] == spelled, model_id
        architecture, tag = entry["timm"].split(".", 1)
        # TF ports (tf_ names, tf_ tags) and the authors' own weights (BiT goog, DeiT/CaiT fb, Swin ms) are
        # what JumpStart's TF models carry; any other tag is timm-trained and must say so.
        if not (architecture.startswith("tf_") or tag.startswith(("tf_", "goog_", "fb_", "ms_"))):
            assert "not the TF ones" in entry.get("note", ""), f"{model_id}: weights differ from TF, needs a note"


def test_the_map_file_is_sorted_json_with_its_about_and_unmapped_sections():
    doc = json.loads((PROJECT_ROOT / MAP_PATH).read_text())
    assert set(doc) == {"about", "models", "unmapped"}
    assert list(doc["models"]) == sorted(doc["models"])
    assert len(MAPPING) == 76 and len(CATALOGUE_IDS) == 135


def test_the_curated_frontier_list_is_mapped_except_the_ids_timm_has_no_equivalent_for():
    unmapped = {model_id for model_id in CURATED if model_id not in MAPPING}
    assert unmapped == CURATED_WITHOUT_EQUIVALENT
    assert set(CURATED) - unmapped <= set(MAPPING)


def test_every_unmapped_catalogue_id_has_its_reason_in_the_map_and_no_pattern_is_stale():
    unmapped = load_document(PROJECT_ROOT)["unmapped"]
    missing = [model_id for model_id in CATALOGUE_IDS if model_id not in MAPPING]
    fallback = unmapped_reason("tensorflow-ic-not-a-model", unmapped)
    assert {model_id: unmapped_reason(model_id, unmapped) for model_id in missing if
            unmapped_reason(model_id, unmapped) == fallback} == {}
    used = {pattern for pattern in unmapped for model_id in missing if fnmatch.fnmatchcase(model_id, pattern)}
    assert used == set(unmapped)


def test_timm_really_has_no_weights_for_the_curated_ids_left_out():
    """The reasons hold against timm's registry: no in21k EfficientNetV2 below B3, no MobileNet v1/v2 weights
    at the left-out widths, and the widths it has are trained at 224 only (the left-out ones are 96-192)."""
    assert timm.list_pretrained("tf_efficientnetv2_b[012].in21k*") == []
    assert timm.list_pretrained("mobilenetv2_0[37]5*") == timm.list_pretrained("mobilenetv1_0[257][05]*") == []
    for name in timm.list_pretrained("mobilenetv2_100*") + timm.list_pretrained("mobilenetv1_100*"):
        cfg = timm.models.get_pretrained_cfg(name)
        sizes = {cfg.input_size[1]} | ({cfg.test_input_size[1]} if cfg.test_input_size else set())
        assert sizes.isdisjoint({96, 128, 160, 192}), (name, sizes)


def local_params(tmp_path: Path, model_ids: list[str], image_size: str = "16", **extra) -> dict:
    write_image_folders(tmp_path / "data" / "training", 2, 2, seed=1)
    return {"backend": "local", "model_ids": model_ids, "epochs": 1,
            "local_hyperparameters": {"pretrained": "false", "image_size": image_size}, **extra,
            "dataset": {"name": "tiny", "training": str(tmp_path / "data" / "training")},
            "results_uri": str(tmp_path / "results")}


def test_the_plan_launches_jumpstart_ids_and_the_trainer_loads_their_timm_models(tmp_path):
    ids = ["tensorflow-ic-imagenet-mobilenet-v3-large-100-224", "tensorflow-ic-efficientnet-b0-classification-1",
           "resnet18"]
    plan = plan_study(local_params(tmp_path, ids), PROJECT_ROOT, str(tmp_path / "jobs"))
    launched = {launch["model_id"]: launch["spec"]["static_hyperparameters"]["model_id"] for launch in plan["launches"]}
    assert launched == {ids[0]: "tf_mobilenetv3_large_100.in1k", ids[1]: "tf_efficientnet_b0.in1k",
                        "resnet18": "resnet18"}


def test_an_unmapped_jumpstart_id_is_a_plan_problem_naming_it_and_the_nearest_mapped_ids(tmp_path):
    unknown = "tensorflow-ic-imagenet-mobilenet-v2-075-96"
    with pytest.raises(StudyError) as raised:
        plan_study(local_params(tmp_path, [unknown, "tensorflow-ic-efficientnet-b1-classification-1"]),
                   PROJECT_ROOT, str(tmp_path / "jobs"))
    message = str(raised.value)
    nearest = nearest_mapped(unknown, MAPPING)
    assert len(nearest) == 3 and all(model_id in MAPPING for model_id in nearest)
    assert unknown in message and all(model_id in message for model_id in nearest)
    assert message.count("\n- ") == 0  # one problem: no second "unknown timm model" for the same id
    assert "efficientnet-b1" not in message


def test_the_named_frontier_list_plans_its_mapped_models_and_leaves_out_the_rest_saying_why(tmp_path, caplog):
    params = local_params(tmp_path, ["resnet18"], image_size="auto", model_list="jumpstart-caltech256-frontier")
    plan = plan_study(params, PROJECT_ROOT, str(tmp_path / "jobs"))
    launched = {launch["model_id"]: launch["spec"]["static_hyperparameters"] for launch in plan["launches"]}
    assert list(launched) == [model_id for model_id in CURATED if model_id in MAPPING]
    assert list(plan["study"]["model_ids"]) == list(launched)
    for model_id, static in launched.items():
        assert static["model_id"] == MAPPING[model_id]["timm"]
        assert static["pretrained_image_size"] == str(MAPPING[model_id]["input_size"])
    unmapped = load_document(PROJECT_ROOT)["unmapped"]
    assert plan["left_out"] == {model_id: unmapped_reason(model_id, unmapped) for model_id in CURATED_WITHOUT_EQUIVALENT}
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for model_id, reason in plan["left_out"].items():
        assert f"leaves out {model_id}: no timm equivalent ({reason})" in logged


def test_an_explicit_image_size_is_not_overridden_by_the_maps_size(tmp_path):
    ids = ["tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-m"]
    [launch] = plan_study(local_params(tmp_path, ids, image_size="64"), PROJECT_ROOT, str(tmp_path / "jobs"))["launches"]
    assert "pretrained_image_size" not in launch["spec"]["static_hyperparameters"]


def test_a_named_list_without_any_mapped_model_is_a_plan_problem(tmp_path):
    root = tmp_path / "project"
    (root / MAP_PATH).parent.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / MAP_PATH, root / MAP_PATH)
    lists = root / "include" / "model_lists"
    lists.mkdir()
    (lists / "unmapped-only.txt").write_text("\n".join(sorted(CURATED_WITHOUT_EQUIVALENT)[:2]) + "\n")
    with pytest.raises(StudyError, match="model_list 'unmapped-only': none of its 2 models has a timm equivalent"):
        plan_study(local_params(tmp_path, [], model_list="unmapped-only"), root, str(tmp_path / "jobs"))
