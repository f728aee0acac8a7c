"""JumpStart TF image-classification ids -> timm twins: the mapping data against timm's registry, the plan
(exact twins always; approximate ones only with allow_approximate_twins), and the kind on rows and in the report."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_image_folders
from test_names_cost_recommendation import CATALOGUE_IDS

from model_selection.collection import collect_row
from model_selection.local.jumpstart_map import (
    ALLOW_APPROXIMATE,
    EXACT,
    KINDS,
    MAP_PATH,
    OTHER_PRETRAINING_DATA,
    OTHER_RESOLUTION,
    OTHER_WEIGHTS,
    approximate_reason,
    load_document,
    load_map,
    nearest_mapped,
    unmapped_reason,
)
from model_selection.planning import plan_study
from model_selection.report.table import frontier_table, twin_note, write_markdown
from model_selection.study import StudyError

timm = pytest.importorskip("timm")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = load_document(PROJECT_ROOT)
MAPPING = load_map(PROJECT_ROOT)
CURATED = [line.split("#")[0].strip() for line in
           (PROJECT_ROOT / "include" / "model_lists" / "jumpstart-caltech256-frontier.txt").read_text().splitlines()
           if line.split("#")[0].strip()]
# Curated ids with no timm twin of the same architecture: MobileNet v1/v2 at widths timm has no weights for.
CURATED_WITHOUT_TWIN = {
    "tensorflow-ic-imagenet-mobilenet-v2-075-160", "tensorflow-ic-imagenet-mobilenet-v2-075-128",
    "tensorflow-ic-imagenet-mobilenet-v2-075-96", "tensorflow-ic-imagenet-mobilenet-v2-035-96",
    "tensorflow-ic-imagenet-mobilenet-v1-075-160-classification-4",
    "tensorflow-ic-imagenet-mobilenet-v1-075-128-classification-4",
    "tensorflow-ic-imagenet-mobilenet-v1-025-128-classification-4",
}
# Curated ids whose twin is approximate: EfficientNetV2 B0/B1 ImageNet-21k (timm has 21k weights only from B3 up)
# and MobileNet v1/v2 1.0 below 224 px (timm's weights were trained at 224).
CURATED_APPROXIMATE = {
    "tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-b1": OTHER_PRETRAINING_DATA,
    "tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-b0": OTHER_PRETRAINING_DATA,
    "tensorflow-ic-efficientnet-v2-imagenet21k-b0": OTHER_PRETRAINING_DATA,
    "tensorflow-ic-imagenet-mobilenet-v2-100-192": OTHER_RESOLUTION,
    "tensorflow-ic-imagenet-mobilenet-v2-100-160": OTHER_RESOLUTION,
    "tensorflow-ic-imagenet-mobilenet-v1-100-128-classification-4": OTHER_RESOLUTION,
}
# BiT-M fine-tuned on ILSVRC-2012: the released checkpoint, fine-tuned at 448/480 px (timm's size), run at 224
# like the other BiT ids (TF-Hub's BiT takes any size).
BIT_FINE_TUNED_ELSEWHERE = {model_id for model_id in MAPPING if model_id.startswith("tensorflow-ic-bit-m-")
                            and "-ilsvrc2012" in model_id}


def id_input_size(model_id: str) -> int | None:
    """The resolution a JumpStart id spells (…-224, …-160-classification-4), if it spells one."""
    sizes = [int(part) for part in re.findall(r"-(\d{2,3})(?=-|$)", model_id) if int(part) >= 96]
    return sizes[-1] if sizes else None


def timm_sizes(name: str) -> set[int]:
    cfg = timm.models.get_pretrained_cfg(name)
    return {cfg.input_size[1]} | ({cfg.test_input_size[1]} if cfg.test_input_size else set())


# --- the data ------------------------------------------------------------------------------------


def test_every_mapped_name_is_a_timm_model_with_pretrained_weights_and_every_kind_is_one_of_the_four():
    pretrained = set(timm.list_pretrained())
    assert set(MAPPING) <= set(CATALOGUE_IDS), "only ids of the JumpStart table are mapped"
    unknown = {model_id: entry["timm"] for model_id, entry in MAPPING.items() if entry["timm"] not in pretrained}
    assert unknown == {}, f"timm {timm.__version__} has no pretrained weights for {unknown}"
    for model_id, entry in MAPPING.items():
        assert set(entry) <= {"timm", "input_size", "kind", "note"} and {"timm", "input_size", "kind"} <= set(entry)
        assert entry["kind"] in KINDS, f"{model_id}: kind {entry['kind']!r}"
        if entry["kind"] != EXACT:
            assert entry.get("note"), f"{model_id}: an approximate twin says why in its note"


def test_input_sizes_are_the_jumpstart_models_and_other_resolution_means_timm_trained_at_another():
    for model_id, entry in MAPPING.items():
        spelled = id_input_size(model_id)
        if spelled is not None:
            assert entry["input_size"] == spelled, model_id
        sizes = timm_sizes(entry["timm"])
        if entry["kind"] == OTHER_RESOLUTION:
            assert entry["input_size"] not in sizes, f"{model_id}: timm's weights are of that size: not approximate"
        elif model_id in BIT_FINE_TUNED_ELSEWHERE:
            assert sizes <= {448, 480} and entry["input_size"] == 224 and "fine-tuned at" in entry["note"], model_id
        else:
            assert entry["input_size"] in sizes, f"{model_id}: {entry['input_size']} vs timm {sizes}"


def test_exact_twins_carry_the_tf_weights_and_approximate_ones_do_not_claim_to():
    for model_id, entry in MAPPING.items():
        architecture, tag = entry["timm"].split(".", 1)
        tf_weights = architecture.startswith("tf_") or tag.startswith(("tf_", "goog_"))
        # The TF ports of DeiT, CaiT and Swin (TF-Hub) were made from the authors' weights, which timm carries.
        authors_weights = tag.startswith(("fb_", "ms_")) and model_id.startswith(("tensorflow-ic-deit-",
                                                                                  "tensorflow-ic-cait-",
                                                                                  "tensorflow-ic-swin-"))
        if entry["kind"] == EXACT:
            assert tf_weights or authors_weights, f"{model_id}: {entry['timm']} is not the TF model's weights"
        elif entry["kind"] in (OTHER_WEIGHTS, OTHER_RESOLUTION) and not tf_weights:
            assert "not the TF ones" in entry["note"], model_id


def test_the_corrected_tags_efficientnet_autoaugment_swin_base_22k_and_bit_m_ilsvrc():
    for index in range(8):
        assert MAPPING[f"tensorflow-ic-efficientnet-b{index}-classification-1"]["timm"] == f"tf_efficientnet_b{index}.aa_in1k"
    assert timm.list_pretrained("tf_efficientnet_b[67].in1k") == []  # B6/B7 exist only as aa/ap/ns (and B7 ra)
    for name in ("base-patch4-window7-224", "base-patch4-window12-384"):
        assert MAPPING[f"tensorflow-ic-swin-{name}"]["timm"].endswith(".ms_in22k_ft_in1k")
    for model_id in BIT_FINE_TUNED_ELSEWHERE:
        assert MAPPING[model_id]["timm"].endswith(".goog_in21k_ft_in1k") and MAPPING[model_id]["kind"] == EXACT
    assert len(BIT_FINE_TUNED_ELSEWHERE) == 5
    assert MAPPING["tensorflow-ic-resnet-50-classification-1"]["kind"] == OTHER_WEIGHTS
    assert {MAPPING[model_id]["kind"] for model_id in MAPPING if model_id.startswith("tensorflow-ic-bit-s-")} == {
        OTHER_PRETRAINING_DATA}


def test_the_map_file_is_sorted_json_with_its_sections_and_counts_per_kind():
    doc = json.loads((PROJECT_ROOT / MAP_PATH).read_text())
    assert list(doc) == ["about", "kinds", "models", "unmapped"]
    assert tuple(doc["kinds"]) == KINDS
    assert list(doc["models"]) == sorted(doc["models"])
    assert len(CATALOGUE_IDS) == 135 and len(MAPPING) == 103
    assert Counter(entry["kind"] for entry in MAPPING.values()) == {
        EXACT: 76, OTHER_PRETRAINING_DATA: 11, OTHER_RESOLUTION: 10, OTHER_WEIGHTS: 6}


def test_the_curated_frontier_list_has_14_twins_8_of_them_exact():
    assert {model_id for model_id in CURATED if model_id not in MAPPING} == CURATED_WITHOUT_TWIN
    assert {model_id: MAPPING[model_id]["kind"] for model_id in CURATED
            if model_id in MAPPING and MAPPING[model_id]["kind"] != EXACT} == CURATED_APPROXIMATE
    assert len(CURATED) == 21 and len(set(CURATED) & set(MAPPING)) == 14


def test_every_unmapped_catalogue_id_has_its_reason_in_the_map_and_no_pattern_is_stale():
    unmapped = DOCUMENT["unmapped"]
    missing = [model_id for model_id in CATALOGUE_IDS if model_id not in MAPPING]
    assert len(missing) == 32
    fallback = unmapped_reason("tensorflow-ic-not-a-model", unmapped)
    assert [model_id for model_id in missing if unmapped_reason(model_id, unmapped) == fallback] == []
    used = {pattern for pattern in unmapped for model_id in missing if fnmatch.fnmatchcase(model_id, pattern)}
    assert used == set(unmapped)
    assert [model_id for model_id in MAPPING if unmapped_reason(model_id, unmapped) != fallback] == []


def test_timm_really_has_no_weights_for_the_ids_left_out_nor_for_the_exact_version_of_the_approximations():
    """Left out: no MobileNet v1/v2 weights at those widths, no Inception v1/v2, NASNet-Mobile or ResNet v2 152.
    Approximate: no in21k EfficientNetV2 below B3, no BiT-S, MobileNet v1/v2 weights trained at 224 only."""
    assert timm.list_pretrained("mobilenetv2_0[37]5*") == timm.list_pretrained("mobilenetv2_130*") == []
    assert timm.list_pretrained("mobilenetv1_0[257][05]*") == []
    assert timm.list_pretrained("inception_v[12]*") == timm.list_pretrained("nasnet*mobile*") == []
    assert timm.list_pretrained("resnetv2_152.*") == timm.list_pretrained("resnetv2_152d*") == []
    assert timm.list_pretrained("tf_efficientnetv2_b[012].in21k*") == []
    assert [name for name in timm.list_pretrained("resnetv2_*_bit.*") if "goog_in21k" not in name
            and "teacher" not in name] == ["resnetv2_50x1_bit.goog_distilled_in1k"]  # no BiT-S
    for name in timm.list_pretrained("mobilenetv2_*") + timm.list_pretrained("mobilenetv1_*"):
        assert timm_sizes(name).isdisjoint({96, 128, 160, 192}), name


# --- the plan ------------------------------------------------------------------------------------


def local_params(tmp_path: Path, model_ids: list[str], image_size: str = "16", **extra) -> dict:
    write_image_folders(tmp_path / "data" / "training", 2, 2, seed=1)
    return {"backend": "local", "model_ids": model_ids, "epochs": 1,
            "local_hyperparameters": {"pretrained": "false", "image_size": image_size}, **extra,
            "dataset": {"name": "tiny", "training": str(tmp_path / "data" / "training")},
            "results_uri": str(tmp_path / "results")}


def test_the_plan_launches_exact_jumpstart_ids_with_their_twin_and_timm_names_as_they_are(tmp_path):
    ids = ["tensorflow-ic-imagenet-mobilenet-v3-large-100-224", "tensorflow-ic-efficientnet-b0-classification-1",
           "resnet18"]
    plan = plan_study(local_params(tmp_path, ids), PROJECT_ROOT, str(tmp_path / "jobs"))
    launched = {launch["model_id"]: launch["spec"]["static_hyperparameters"]["model_id"] for launch in plan["launches"]}
    assert launched == {ids[0]: "tf_mobilenetv3_large_100.in1k", ids[1]: "tf_efficientnet_b0.aa_in1k",
                        "resnet18": "resnet18"}
    twins = {launch["model_id"]: launch.get("twin") for launch in plan["launches"]}
    assert twins == {ids[0]: {"timm_twin": "tf_mobilenetv3_large_100.in1k", "twin_kind": EXACT},
                     ids[1]: {"timm_twin": "tf_efficientnet_b0.aa_in1k", "twin_kind": EXACT}, "resnet18": None}
    assert plan["study"][ALLOW_APPROXIMATE] is False


def test_an_unmapped_jumpstart_id_is_a_plan_problem_naming_it_and_the_nearest_mapped_ids(tmp_path):
    unknown = "tensorflow-ic-imagenet-mobilenet-v2-075-96"
    with pytest.raises(StudyError) as raised:
        plan_study(local_params(tmp_path, [unknown, "tensorflow-ic-efficientnet-b1-classification-1"],
                                **{ALLOW_APPROXIMATE: True}), PROJECT_ROOT, str(tmp_path / "jobs"))
    message = str(raised.value)
    nearest = nearest_mapped(unknown, MAPPING)
    assert len(nearest) == 3 and all(model_id in MAPPING for model_id in nearest)
    assert unknown in message and all(model_id in message for model_id in nearest)
    assert message.count("\n- ") == 0  # one problem: no second "unknown timm model" for the same id
    assert "efficientnet-b1" not in message


def test_an_approximate_id_given_one_by_one_is_a_plan_problem_naming_its_kind_and_the_param(tmp_path):
    approximate = "tensorflow-ic-imagenet-mobilenet-v2-100-160"
    with pytest.raises(StudyError) as raised:
        plan_study(local_params(tmp_path, [approximate, "tensorflow-ic-efficientnet-b1-classification-1"]),
                   PROJECT_ROOT, str(tmp_path / "jobs"))
    message = str(raised.value)
    assert message.count("- ") == 1 and approximate in message and "efficientnet-b1" not in message
    assert OTHER_RESOLUTION in message and "mobilenetv2_100.ra_in1k" in message and ALLOW_APPROXIMATE in message


def test_allowed_approximate_ids_run_with_their_kind_and_the_plan_log_names_them(tmp_path, caplog):
    ids = ["tensorflow-ic-imagenet-mobilenet-v2-100-160", "tensorflow-ic-efficientnet-v2-imagenet21k-b0",
           "tensorflow-ic-imagenet-mobilenet-v3-large-075-224"]
    caplog.set_level(logging.INFO, logger="model_selection.planning")
    plan = plan_study(local_params(tmp_path, ids, image_size="auto", **{ALLOW_APPROXIMATE: True}), PROJECT_ROOT,
                      str(tmp_path / "jobs"))
    twins = {launch["model_id"]: launch["twin"] for launch in plan["launches"]}
    assert twins == {model_id: {"timm_twin": MAPPING[model_id]["timm"], "twin_kind": MAPPING[model_id]["kind"]}
                     for model_id in ids}
    static = plan["launches"][0]["spec"]["static_hyperparameters"]
    assert (static["model_id"], static["pretrained_image_size"]) == ("mobilenetv2_100.ra_in1k", "160")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for model_id in ids[:2]:
        assert f"runs {model_id} as an approximate twin: {MAPPING[model_id]['timm']} ({MAPPING[model_id]['kind']})" in logged
    assert ids[2] not in logged


def test_allow_approximate_twins_must_be_a_boolean(tmp_path):
    with pytest.raises(StudyError, match="allow_approximate_twins must be true or false, got 'yes'"):
        plan_study(local_params(tmp_path, ["resnet18"], **{ALLOW_APPROXIMATE: "yes"}), PROJECT_ROOT,
                   str(tmp_path / "jobs"))


def frontier_plan(tmp_path: Path, caplog, allow: bool) -> tuple[dict, dict, str]:
    caplog.set_level(logging.INFO, logger="model_selection.planning")
    params = local_params(tmp_path, ["resnet18"], image_size="auto", model_list="jumpstart-caltech256-frontier",
                          **{ALLOW_APPROXIMATE: allow})
    plan = plan_study(params, PROJECT_ROOT, str(tmp_path / "jobs"))
    launched = {launch["model_id"]: launch for launch in plan["launches"]}
    return plan, launched, "\n".join(record.getMessage() for record in caplog.records)


def test_the_named_frontier_list_runs_its_exact_twins_and_leaves_out_the_rest_saying_why(tmp_path, caplog):
    plan, launched, logged = frontier_plan(tmp_path, caplog, allow=False)
    exact = [model_id for model_id in CURATED if model_id in MAPPING and MAPPING[model_id]["kind"] == EXACT]
    assert list(launched) == exact and len(exact) == 8
    assert list(plan["study"]["model_ids"]) == exact
    for model_id, launch in launched.items():
        static = launch["spec"]["static_hyperparameters"]
        assert static["model_id"] == MAPPING[model_id]["timm"] == launch["twin"]["timm_twin"]
        assert static["pretrained_image_size"] == str(MAPPING[model_id]["input_size"])
    unmapped = DOCUMENT["unmapped"]
    assert plan["left_out"] == {model_id: unmapped_reason(model_id, unmapped) if model_id in CURATED_WITHOUT_TWIN
                                else approximate_reason(MAPPING[model_id])
                                for model_id in CURATED if model_id not in exact}
    for model_id, reason in plan["left_out"].items():
        if model_id in CURATED_WITHOUT_TWIN:
            assert f"leaves out {model_id}: no timm equivalent ({reason})" in logged
        else:
            assert f"leaves out {model_id} for being approximate: {reason}" in logged
            assert CURATED_APPROXIMATE[model_id] in reason and ALLOW_APPROXIMATE in reason
    assert "8 of its 21 models run; as approximate twins: none; left out without a timm equivalent: 7 (" in logged
    assert "left out for being approximate: 6 (" in logged


def test_the_named_frontier_list_with_approximations_allowed_runs_14_and_logs_which_are_approximate(tmp_path, caplog):
    plan, launched, logged = frontier_plan(tmp_path, caplog, allow=True)
    assert list(launched) == [model_id for model_id in CURATED if model_id in MAPPING] and len(launched) == 14
    assert {model_id: launch["twin"]["twin_kind"] for model_id, launch in launched.items()
            if launch["twin"]["twin_kind"] != EXACT} == CURATED_APPROXIMATE
    assert set(plan["left_out"]) == CURATED_WITHOUT_TWIN
    for model_id, kind in CURATED_APPROXIMATE.items():
        assert f"model_list jumpstart-caltech256-frontier on the local backend runs {model_id} as an approximate " \
               f"twin: {MAPPING[model_id]['timm']} ({kind})" in logged
    assert "14 of its 21 models run; as approximate twins: 6 (" in logged
    assert "left out for being approximate: none" in logged


def test_an_explicit_image_size_is_not_overridden_by_the_maps_size(tmp_path):
    ids = ["tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-m"]
    [launch] = plan_study(local_params(tmp_path, ids, image_size="64"), PROJECT_ROOT, str(tmp_path / "jobs"))["launches"]
    assert "pretrained_image_size" not in launch["spec"]["static_hyperparameters"]


def test_a_named_list_without_any_model_that_runs_is_a_plan_problem(tmp_path):
    root = tmp_path / "project"
    (root / MAP_PATH).parent.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / MAP_PATH, root / MAP_PATH)
    lists = root / "include" / "model_lists"
    lists.mkdir()
    approximate = sorted(CURATED_APPROXIMATE)[0]
    (lists / "unmapped-only.txt").write_text("\n".join([*sorted(CURATED_WITHOUT_TWIN)[:2], approximate]) + "\n")
    with pytest.raises(StudyError, match="model_list 'unmapped-only': none of its 3 models has a timm equivalent") as raised:
        plan_study(local_params(tmp_path, [], model_list="unmapped-only"), root, str(tmp_path / "jobs"))
    assert f"{approximate} only approximately: set {ALLOW_APPROXIMATE} to true" in str(raised.value)


# --- rows and the report -------------------------------------------------------------------------


class NeverLaunched:
    def describe(self, job_name):
        return None


def test_a_row_says_which_twin_trained_it_and_how_close_it_is():
    launch = {"model_id": "tensorflow-ic-imagenet-mobilenet-v2-100-160", "job_name": "job-1",
              "twin": {"timm_twin": "mobilenetv2_100.ra_in1k", "twin_kind": OTHER_RESOLUTION}}
    settings = {"backend": "local", "dataset": {"name": "tiny"}, "config_hash": "abc", "instance_type": "ml.m5.large"}
    row = collect_row(NeverLaunched(), launch, settings, "run-1")
    assert (row["timm_twin"], row["twin_kind"]) == ("mobilenetv2_100.ra_in1k", OTHER_RESOLUTION)
    plain = collect_row(NeverLaunched(), {"model_id": "resnet18", "job_name": "job-2"}, settings, "run-1")
    assert "timm_twin" not in plain and "twin_kind" not in plain


def test_the_report_shows_each_twin_and_its_kind(tmp_path):
    rows = [{"model_id": "tensorflow-ic-imagenet-mobilenet-v2-100-160", "status": "Completed", "test_accuracy": 0.8,
             "test_throughput": 40.0, "timm_twin": "mobilenetv2_100.ra_in1k", "twin_kind": OTHER_RESOLUTION},
            {"model_id": "tensorflow-ic-efficientnet-b0-classification-1", "status": "Completed", "test_accuracy": 0.9,
             "test_throughput": 20.0, "timm_twin": "tf_efficientnet_b0.aa_in1k", "twin_kind": EXACT},
            {"model_id": "resnet18", "status": "Completed", "test_accuracy": 0.7, "test_throughput": 50.0}]
    table = frontier_table(rows)
    cells = dict(zip((row[0] for row in table.rows), (row[table.headers.index("Local twin (kind)")] for row in table.rows)))
    assert cells == {rows[0]["model_id"]: f"mobilenetv2_100.ra_in1k ({OTHER_RESOLUTION})",
                     rows[1]["model_id"]: f"tf_efficientnet_b0.aa_in1k ({EXACT})", "resnet18": "–"}
    assert "Local twin (kind)" not in frontier_table(rows[2:]).headers
    note = twin_note(rows)
    assert note.startswith("Local twins of JumpStart ids: 1 exact") and rows[0]["model_id"] in note
    assert rows[1]["model_id"] not in note and twin_note(rows[2:]) is None
    markdown = write_markdown(rows, rows, tmp_path / "frontier.md").read_text()
    assert f"approximate: {rows[0]['model_id']} as mobilenetv2_100.ra_in1k ({OTHER_RESOLUTION})." in markdown
