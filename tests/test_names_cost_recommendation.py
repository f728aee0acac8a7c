"""Names and families, cost per model, and the recommendation under objectives and constraints."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from model_selection.cost import PriceTable, load_prices, row_cost_usd, study_total, with_cost
from model_selection.frontier import pareto_mask
from model_selection.names import display_name, model_family
from model_selection.recommendation import Constraint, recommend, wilson_interval

ROOT = Path(__file__).resolve().parents[1]

# The seed article's table (shared/docs/seed-article.txt): Caltech-256 on ml.g4dn.xlarge, JumpStart TF
# image classification. Transcribed as published, without a status column (the "any results file" rule);
# accuracies as fractions, parameters as counts. Test throughput is images/s.
SEED_CSV = """model_id,num_params,test_accuracy,test_top_5_accuracy,test_throughput,train_epoch_duration
swin-large-patch4-window12-384,195.6e6,0.964,0.995,0.3,2278.6
swin-large-patch4-window7-224,195.4e6,0.961,0.995,1.1,698.0
efficientnet-v2-imagenet21k-ft1k-l,118.1e6,0.951,0.992,4.5,1434.7
efficientnet-v2-imagenet21k-ft1k-m,53.5e6,0.948,0.991,8.0,769.1
efficientnet-v2-imagenet21k-m,53.5e6,0.931,0.985,8.0,765.1
efficientnet-b5,29.0e6,0.908,0.981,9.1,668.6
efficientnet-v2-imagenet21k-ft1k-b1,7.3e6,0.897,0.973,14.6,54.3
efficientnet-v2-imagenet21k-ft1k-b0,6.2e6,0.890,0.970,20.5,38.3
efficientnet-v2-imagenet21k-b0,6.2e6,0.870,0.956,21.5,38.2
mobilenet-v3-large-100-224,4.6e6,0.849,0.954,27.4,28.8
mobilenet-v3-large-075-224,3.1e6,0.833,0.952,30.3,26.6
mobilenet-v2-100-192,2.6e6,0.808,0.935,33.5,23.9
mobilenet-v2-100-160,2.6e6,0.802,0.932,40.0,19.6
mobilenet-v2-075-160,1.7e6,0.782,0.928,41.8,19.3
mobilenet-v2-075-128,1.7e6,0.761,0.911,44.3,18.3
mobilenet-v1-075-160,2.0e6,0.757,0.910,44.5,18.2
mobilenet-v1-100-128,3.5e6,0.751,0.907,47.4,17.4
mobilenet-v1-075-128,2.0e6,0.732,0.900,48.9,16.8
mobilenet-v2-075-96,1.7e6,0.719,0.885,49.4,16.6
mobilenet-v2-035-96,0.7e6,0.637,0.831,50.4,16.3
mobilenet-v1-025-128,0.3e6,0.590,0.807,50.8,16.2
"""
# Same throughput (8.0) as efficientnet-v2-imagenet21k-ft1k-m and lower accuracy: the one dominated row.
SEED_DOMINATED = "efficientnet-v2-imagenet21k-m"

# Every TensorFlow image-classification id ("tensorflow-ic-") in the JumpStart model table of the
# SageMaker Python SDK docs, aws/sagemaker-python-sdk doc/doc_utils/pretrainedmodels.rst (stored copy
# read 2026-11-28; the rows list model versions 1.0.2 and 3.0.2), grouped by the family they must get.
CATALOGUE = {
    "BiT": [
        "tensorflow-ic-bit-m-r101x1-ilsvrc2012-classification-1", "tensorflow-ic-bit-m-r101x1-imagenet21k-classification-1",
        "tensorflow-ic-bit-m-r101x3-ilsvrc2012-classification-1", "tensorflow-ic-bit-m-r101x3-imagenet21k-classification-1",
        "tensorflow-ic-bit-m-r152x4-ilsvrc2012", "tensorflow-ic-bit-m-r152x4-imagenet21k",
        "tensorflow-ic-bit-m-r50x1-ilsvrc2012-classification-1", "tensorflow-ic-bit-m-r50x1-imagenet21k-classification-1",
        "tensorflow-ic-bit-m-r50x3-ilsvrc2012-classification-1", "tensorflow-ic-bit-m-r50x3-imagenet21k-classification-1",
        "tensorflow-ic-bit-s-r101x1-ilsvrc2012-classification-1", "tensorflow-ic-bit-s-r101x3-ilsvrc2012-classification-1",
        "tensorflow-ic-bit-s-r152x4-ilsvrc2012", "tensorflow-ic-bit-s-r50x1-ilsvrc2012-classification-1",
        "tensorflow-ic-bit-s-r50x3-ilsvrc2012-classification-1",
    ],
    "CaiT": [f"tensorflow-ic-cait-{v}" for v in (
        "m36-384", "m48-448", "s24-224", "s24-384", "s36-384", "xs24-384", "xxs24-224", "xxs24-384", "xxs36-224",
        "xxs36-384")],
    "DeiT": [f"tensorflow-ic-deit-{v}" for v in (
        "base-distilled-patch16-224", "base-distilled-patch16-384", "base-patch16-224", "base-patch16-384",
        "small-distilled-patch16-224", "small-patch16-224", "tiny-distilled-patch16-224", "tiny-patch16-224")],
    "EfficientNet": [f"tensorflow-ic-efficientnet-b{i}-classification-1" for i in range(8)],
    "EfficientNet-Lite": [f"tensorflow-ic-efficientnet-lite{i}-classification-2" for i in range(5)],
    "EfficientNet-V2": [f"tensorflow-ic-efficientnet-v2-{v}" for v in (
        "imagenet1k-b0", "imagenet1k-b1", "imagenet1k-b2", "imagenet1k-b3", "imagenet1k-l", "imagenet1k-m",
        "imagenet1k-s", "imagenet21k-b0", "imagenet21k-b1", "imagenet21k-b2", "imagenet21k-b3",
        "imagenet21k-ft1k-b0", "imagenet21k-ft1k-b1", "imagenet21k-ft1k-b2", "imagenet21k-ft1k-b3",
        "imagenet21k-ft1k-l", "imagenet21k-ft1k-m", "imagenet21k-ft1k-s", "imagenet21k-ft1k-xl",
        "imagenet21k-l", "imagenet21k-m", "imagenet21k-s", "imagenet21k-xl")],
    "Inception-ResNet": ["tensorflow-ic-imagenet-inception-resnet-v2-classification-4"],
    "Inception": [f"tensorflow-ic-imagenet-inception-v{i}-classification-4" for i in (1, 2, 3)]
    + ["tensorflow-ic-tf2-preview-inception-v3-classification-4"],
    "MobileNet v1": [f"tensorflow-ic-imagenet-mobilenet-v1-{w}-{r}-classification-4"
                     for w in ("025", "050", "075", "100") for r in (128, 160, 192, 224)],
    "MobileNet v2": [f"tensorflow-ic-imagenet-mobilenet-v2-{v}" for v in (
        "035-128", "035-160", "035-192", "035-224-classification-4", "035-96", "050-128", "050-160", "050-192",
        "050-224-classification-4", "050-96", "075-128", "075-160", "075-192", "075-224-classification-4", "075-96",
        "100-160", "100-192", "100-224-classification-4", "100-96", "130-224-classification-4",
        "140-224-classification-4")] + ["tensorflow-ic-tf2-preview-mobilenet-v2-classification-4"],
    "MobileNet v3": [f"tensorflow-ic-imagenet-mobilenet-v3-{v}" for v in (
        "large-075-224", "large-100-224", "small-075-224", "small-100-224")],
    "NASNet": ["tensorflow-ic-imagenet-nasnet-large", "tensorflow-ic-imagenet-nasnet-mobile"],
    "PNASNet": ["tensorflow-ic-imagenet-pnasnet-large"],
    "ResNet": [f"tensorflow-ic-imagenet-resnet-v1-{d}-classification-4" for d in (101, 152, 50)]
    + ["tensorflow-ic-resnet-50-classification-1"],
    "ResNet v2": [f"tensorflow-ic-imagenet-resnet-v2-{d}-classification-4" for d in (101, 152, 50)],
    "Swin": [f"tensorflow-ic-swin-{v}" for v in (
        "base-patch4-window12-384", "base-patch4-window7-224", "large-patch4-window12-384",
        "large-patch4-window7-224", "s3-base-224", "s3-small-224", "s3-tiny-224", "small-patch4-window7-224",
        "tiny-patch4-window7-224")],
}
CATALOGUE_IDS = [model_id for ids in CATALOGUE.values() for model_id in ids]

TIMM_SAMPLE = {
    "resnet18": "ResNet", "resnet10t": "ResNet", "resnet50d": "ResNet", "wide_resnet50_2": "Wide ResNet",
    "resnetv2_50": "ResNet v2", "resnetv2_50x1_bit.goog_in21k": "BiT", "resnext50_32x4d": "ResNeXt",
    "regnetx_002": "RegNet", "regnety_040": "RegNet", "lcnet_050": "LCNet",
    "mobilenetv1_100": "MobileNet v1", "mobilenetv2_100": "MobileNet v2", "mobilenetv3_small_100": "MobileNet v3",
    "tf_mobilenetv3_large_075": "MobileNet v3", "mobilenetv4_conv_small": "MobileNet v4",
    "efficientnet_b0": "EfficientNet", "tf_efficientnet_b5": "EfficientNet",
    "tf_efficientnet_lite0": "EfficientNet-Lite", "efficientnetv2_rw_s": "EfficientNet-V2",
    "tf_efficientnetv2_s.in21k_ft_in1k": "EfficientNet-V2", "swin_base_patch4_window7_224": "Swin",
    "swinv2_tiny_window8_256": "Swin V2", "inception_v3": "Inception", "inception_v4": "Inception",
    "inception_resnet_v2": "Inception-ResNet", "nasnetalarge": "NASNet", "pnasnet5large": "PNASNet",
    "convnext_tiny": "ConvNeXt", "convnextv2_atto": "ConvNeXt V2", "vit_base_patch16_224.augreg_in21k": "ViT",
    "deit_small_patch16_224": "DeiT", "cait_s24_224": "CaiT", "densenet121": "DenseNet", "vgg16": "VGG",
    "test_efficientnet": "EfficientNet", "test_resnet": "ResNet", "test_byobnet": "BYOBNet",
}


def seed_rows() -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(SEED_CSV)))
    assert len(rows) == 21 and "status" not in rows[0]
    return rows


def curated_ids() -> list[str]:
    ids = []
    for path in sorted((ROOT / "include" / "model_lists").glob("*.txt")):
        ids += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(ids) >= 29
    return ids


# --- names -----------------------------------------------------------------------------------------

def test_display_names_match_the_seed_table():
    seed_names = [row["model_id"] for row in seed_rows()]
    jumpstart_ids = [line for line in curated_ids() if line.startswith("tensorflow-ic-")]
    assert [display_name(model_id) for model_id in jumpstart_ids] == seed_names
    assert display_name("tensorflow-ic-bit-m-r50x1-ilsvrc2012-classification-1") == "bit-m-r50x1-ilsvrc2012"
    assert display_name("resnet18") == "resnet18"


@pytest.mark.parametrize("family", sorted(CATALOGUE))
def test_every_catalogue_id_gets_its_family(family):
    assert {model_id: model_family(model_id) for model_id in CATALOGUE[family]} == dict.fromkeys(CATALOGUE[family], family)


def test_catalogue_list_is_whole_and_display_names_are_clean():
    assert len(CATALOGUE_IDS) == len(set(CATALOGUE_IDS)) == 135  # the seed article: 135 TF image-classification models
    for model_id in CATALOGUE_IDS:
        name = display_name(model_id)
        assert not name.startswith(("tensorflow-ic-", "imagenet-")) and "-classification-" not in name


def test_curated_lists_get_readable_families():
    expected = {
        "tensorflow-ic-swin-large-patch4-window12-384": "Swin",
        "tensorflow-ic-efficientnet-v2-imagenet21k-ft1k-l": "EfficientNet-V2",
        "tensorflow-ic-efficientnet-b5-classification-1": "EfficientNet",
        "tensorflow-ic-imagenet-mobilenet-v3-large-100-224": "MobileNet v3",
        "tensorflow-ic-imagenet-mobilenet-v2-075-96": "MobileNet v2",
        "tensorflow-ic-imagenet-mobilenet-v1-025-128-classification-4": "MobileNet v1",
        "resnet10t": "ResNet", "regnetx_002": "RegNet", "lcnet_050": "LCNet",
        "mobilenetv3_small_100": "MobileNet v3", "resnet18": "ResNet",
        "test_efficientnet": "EfficientNet", "test_resnet": "ResNet", "test_byobnet": "BYOBNet",
    }
    ids = curated_ids()
    assert set(expected) <= set(ids)
    for model_id in ids:
        assert model_family(model_id) == expected.get(model_id, model_family(model_id)) != "other", model_id
    assert {model_family(model_id) for model_id in ids} == set(expected.values())


def test_timm_names_get_readable_families():
    assert {name: model_family(name) for name in TIMM_SAMPLE} == TIMM_SAMPLE
    timm = pytest.importorskip("timm")
    names = timm.list_models()
    assert not [name for name in names if model_family(name) == "other"]
    assert model_family("") == "other"


# --- frontier and recommendation -------------------------------------------------------------------

def test_the_seed_frontier_leaves_out_its_one_dominated_model():
    rows = seed_rows()
    mask = pareto_mask([[float(r["test_accuracy"]), float(r["test_throughput"])] for r in rows], [True, True])
    assert [r["model_id"] for r, keep in zip(rows, mask) if not keep] == [SEED_DOMINATED]
    result = recommend(rows, ["test_accuracy:max", "test_throughput:max"])
    assert SEED_DOMINATED not in result.frontier and len(result.frontier) == 20
    assert result.reasons[SEED_DOMINATED] == (
        "dominated by efficientnet-v2-imagenet21k-ft1k-m (accuracy 0.948 vs 0.931, throughput 8 vs 8)")


def test_no_constraint_recommends_the_most_accurate_and_explains_every_other_model():
    rows = seed_rows()
    result = recommend(rows, ["test_accuracy:max", "test_throughput:max"])
    assert result.chosen["model_id"] == "swin-large-patch4-window12-384"
    assert [r["model_id"] for r in result.runners_up] == [
        "swin-large-patch4-window7-224", "efficientnet-v2-imagenet21k-ft1k-l", "efficientnet-v2-imagenet21k-ft1k-m"]
    assert set(result.reasons) == {r["model_id"] for r in rows} - {"swin-large-patch4-window12-384"}
    assert result.reasons["swin-large-patch4-window7-224"].startswith("runner-up #1: accuracy 0.964 vs 0.961")
    assert result.reasons["mobilenet-v1-025-128"].startswith("on the frontier but ranked 21 on test_accuracy")
    assert result.closest is None and "Recommended: swin-large-patch4-window12-384" in result.summary()


def test_constraints_select_and_exclude_with_reasons():
    rows = seed_rows()
    result = recommend(rows, ["test_accuracy:max", "test_throughput:max"], ["test_throughput>=20", "num_params<=10e6"])
    assert result.chosen["model_id"] == "efficientnet-v2-imagenet21k-ft1k-b0"
    assert result.reasons["swin-large-patch4-window12-384"] == (
        "breaks test_throughput>=20 (it has 0.3); breaks num_params<=1e+07 (it has 1.956e+08)")
    assert result.reasons["efficientnet-v2-imagenet21k-ft1k-b1"] == "breaks test_throughput>=20 (it has 14.6)"
    assert [r["model_id"] for r in result.runners_up] == [
        "efficientnet-v2-imagenet21k-b0", "mobilenet-v3-large-100-224", "mobilenet-v3-large-075-224"]
    assert len(result.reasons) == 20


def test_constraints_that_nothing_meets_name_the_closest_model():
    rows = seed_rows()
    result = recommend(rows, ["test_accuracy:max", "test_throughput:max"], ["test_throughput>=100", "test_accuracy>=0.9"])
    assert result.chosen is None and result.runners_up == []
    # Sum of shortfalls relative to the limits: (100 - 47.4) / 100 + (0.9 - 0.751) / 0.9 = 0.692 is the least;
    # the fastest (mobilenet-v1-025-128) misses by 0.492 + 0.344 and the most accurate by 0.997 + 0.
    assert result.closest["model_id"] == "mobilenet-v1-100-128"
    assert result.reasons["mobilenet-v1-100-128"] == (
        "breaks test_throughput>=100 (it has 47.4); breaks test_accuracy>=0.9 (it has 0.751)")
    assert result.reasons["efficientnet-b5"] == "breaks test_throughput>=100 (it has 9.1)"
    assert "No model meets every constraint" in result.summary() and "mobilenet-v1-100-128" in result.summary()


def test_status_rows_missing_values_and_cost_as_a_constraint():
    rows = [
        {"model_id": "a", "status": "Completed", "test_accuracy": 0.9, "test_throughput": 10.0, "cost_usd": 6.0},
        {"model_id": "b", "status": "Completed", "test_accuracy": 0.8, "test_throughput": 20.0, "cost_usd": 1.0},
        {"model_id": "c", "status": "Failed", "failure_reason": "out of memory"},
        {"model_id": "d", "status": "Completed", "test_accuracy": 0.95},
        {"model_id": "e", "status": "Completed", "test_accuracy": 0.99, "test_throughput": 30.0, "cost_usd": None},
    ]
    result = recommend(rows, ["test_accuracy:max", "test_throughput:max"], ["cost_usd<=5"])
    assert result.chosen["model_id"] == "b"
    assert result.reasons["a"] == "breaks cost_usd<=5 (it has 6)"
    assert result.reasons["e"] == "breaks cost_usd<=5 (it has no cost_usd)"  # unknown cost never passes
    assert result.reasons["c"] == "not compared: it did not complete (status Failed) (out of memory)"
    assert result.reasons["d"] == "not compared: it has no test_throughput"
    assert recommend(rows, ["cost_usd:min"]).chosen["model_id"] == "b"


def test_constraint_parsing():
    assert Constraint.parse("num_params<=10e6") == Constraint("num_params", "<=", 10e6)
    assert Constraint.parse(" test_throughput >= 100 ") == Constraint("test_throughput", ">=", 100.0)
    assert str(Constraint.parse("cost_usd<5")) == "cost_usd<5"
    for text in ("num_params=<10", "throughput", ">=5", "cost_usd<=cheap", "x<=nan"):
        with pytest.raises(ValueError, match=repr(text).strip("'")[:5]):
            Constraint.parse(text)
    assert Constraint.parse("test_accuracy>0.9").met_by({"test_accuracy": 0.9}) is False


# --- Wilson intervals ------------------------------------------------------------------------------

def test_wilson_interval_known_values():
    low, high = wilson_interval(0.9, 100)
    assert (round(low, 3), round(high, 3)) == (0.826, 0.945)
    low, high = wilson_interval(0.5, 10)
    assert (round(low, 3), round(high, 3)) == (0.237, 0.763)
    assert wilson_interval(1.0, 50)[1] == 1.0 and wilson_interval(0.0, 50)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_runner_up_indistinguishable_when_intervals_overlap():
    rows = seed_rows()
    # The seed does not state its test split's size; with 10,000 images 96.4 % (96.02-96.75) and
    # 96.1 % (95.70-96.46) overlap, 95.1 % (94.66-95.51) does not.
    result = recommend(rows, ["test_accuracy:max", "test_throughput:max"], test_examples=10000)
    assert result.indistinguishable == ["swin-large-patch4-window7-224"]
    assert "indistinguishable" in result.reasons["swin-large-patch4-window7-224"]
    assert "indistinguishable" not in result.reasons["efficientnet-v2-imagenet21k-ft1k-l"]
    # A row's own test_examples wins over the default; without any size nothing is claimed.
    for row in rows:
        row["test_examples"] = "100000"
    assert recommend(rows, ["test_accuracy:max", "test_throughput:max"], test_examples=10).indistinguishable == []
    unknown = recommend(seed_rows(), ["test_accuracy:max", "test_throughput:max"])
    assert unknown.indistinguishable == [] and any("test_examples" in note for note in unknown.notes)


# --- cost ------------------------------------------------------------------------------------------

PRICES = PriceTable("2026-11-28", "us-east-1", "test", {"ml.g4dn.xlarge": 0.736})


def test_bundled_price_table_is_dated_and_sourced():
    table = load_prices()
    raw = json.loads((ROOT / "include" / "prices" / "sagemaker-training-on-demand.json").read_text())
    assert table.as_of == raw["as_of"] and table.region == "us-east-1" and "TO BE CHECKED" in table.source
    assert table.price("ml.g4dn.xlarge") == pytest.approx(0.736)
    assert table.price("ml.unknown.xlarge") is None
    assert all(key.startswith("ml.") and value > 0 for key, value in table.usd_per_hour.items())
    assert table.with_overrides({"ml.g5.2xlarge": 1.5}).price("ml.g5.2xlarge") == 1.5


def test_cost_of_sagemaker_local_and_unknown_rows():
    sagemaker = {"model_id": "s", "backend": "sagemaker", "instance_type": "ml.g4dn.xlarge", "billable_seconds": 1800}
    local = {"model_id": "l", "backend": "local", "tuning_duration": 7200.0, "train_duration": 60.0}
    local_train_only = {"model_id": "t", "backend": "local", "train_duration": "360"}
    assert row_cost_usd(sagemaker, PRICES, None) == pytest.approx(0.368)
    assert row_cost_usd(local, PRICES, 0.5) == pytest.approx(1.0)
    assert row_cost_usd(local_train_only, PRICES, 0.5) == pytest.approx(0.05)
    assert row_cost_usd(local, PRICES, None) is None  # no local rate: unknown, not free
    assert row_cost_usd({**sagemaker, "instance_type": "ml.p5.48xlarge"}, PRICES, 0.5) is None
    assert row_cost_usd({**sagemaker, "billable_seconds": None}, PRICES, 0.5) is None
    assert row_cost_usd({"model_id": "x"}, PRICES, 0.5) is None
    rows = with_cost([sagemaker, local, {**sagemaker, "model_id": "u", "billable_seconds": None}], PRICES, 0.5)
    assert "cost_usd" not in sagemaker and [r["cost_usd"] is None for r in rows] == [False, False, True]
    total = study_total(rows)
    assert total.usd == pytest.approx(1.368) and total.priced == 2 and total.unpriced == ("u",)
    assert "$1.37 for 2 models" in str(total) and math.isfinite(total.usd)


def test_a_model_dominated_only_within_the_accuracy_intervals_is_on_the_frontier_within_noise():
    rows = [
        {"model_id": "fast-and-good", "status": "Completed", "test_accuracy": 0.90, "test_throughput": 200.0, "test_examples": 100},
        {"model_id": "close-behind", "status": "Completed", "test_accuracy": 0.88, "test_throughput": 150.0, "test_examples": 100},
        {"model_id": "far-behind", "status": "Completed", "test_accuracy": 0.50, "test_throughput": 100.0, "test_examples": 100},
    ]
    result = recommend(rows)
    assert result.frontier == ["fast-and-good"]
    assert result.within_noise == ["close-behind"]  # 0.88 of 100 overlaps 0.90 of 100; 0.50 does not
    assert "on the frontier within noise" in result.reasons["close-behind"]
    assert "within noise" not in result.reasons["far-behind"]
    precise = recommend([{**row, "test_examples": 100_000} for row in rows])
    assert precise.within_noise == []  # with a large test set the difference is real

    # with a large test set, a measurement pass whose throughput ranges overlap still leaves it within noise
    timed = [{**row, "test_examples": 100_000, "test_throughput_low": row["test_throughput"] * 0.7,
              "test_throughput_high": row["test_throughput"] * 1.1} for row in rows]
    assert recommend(timed).within_noise == ["close-behind"]  # 150 (105-165) overlaps 200 (140-220); 100 (70-110) not
    assert "throughput's range overlaps" in recommend(timed).reasons["close-behind"]
