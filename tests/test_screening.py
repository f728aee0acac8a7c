"""The screen: cheap scores that rank models before fine-tuning, how its ranking is judged, and a
real local screen of tiny timm models that shares the trainer's feature cache and slots."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folders

from model_selection import screening
from model_selection.screening import (
    combined_scores,
    imagenet_top1,
    kendall_tau,
    knn_accuracy,
    linear_probe_accuracy,
    logme,
    logme_evidence,
    ranking_report,
    screen_problems,
    screen_regret,
    select_top,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def clustered_features(separation: float, seed: int, per_class: int = 30, classes: int = 4, dimensions: int = 24):
    """Training and validation features around one centre per class; `separation` scales the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dimensions)) * separation
    labels = np.repeat(np.arange(classes), per_class)
    eval_labels = np.repeat(np.arange(classes), per_class // 2)
    train = centres[labels] + rng.normal(size=(len(labels), dimensions))
    evaluation = centres[eval_labels] + rng.normal(size=(len(eval_labels), dimensions))
    return train, labels, evaluation, eval_labels


SEPARATIONS = {"separating": 3.0, "weak": 0.6, "noise": 0.0}


@pytest.fixture(scope="module")
def feature_sets():
    return {name: clustered_features(separation, seed=7) for name, separation in SEPARATIONS.items()}


@pytest.mark.parametrize(
    "score",
    [
        knn_accuracy,
        linear_probe_accuracy,
        lambda train, labels, evaluation, eval_labels: logme(train, labels),
    ],
    ids=["knn", "linear", "logme"],
)
def test_features_that_separate_the_classes_score_higher(feature_sets, score):
    values = {name: score(*features) for name, features in feature_sets.items()}
    assert values["separating"] > values["weak"] > values["noise"], values


def test_accuracies_are_near_perfect_on_separating_features_and_near_chance_on_noise(feature_sets):
    for score in (knn_accuracy, linear_probe_accuracy):
        assert score(*feature_sets["separating"]) >= 0.95
        assert score(*feature_sets["noise"]) <= 0.5  # four classes: chance is 0.25


def test_combined_score_is_the_mean_rank_and_orders_the_models(feature_sets):
    scores = {name: screening.score_features(*features) for name, features in feature_sets.items()}
    combined = combined_scores(scores)
    assert combined == {"separating": 3.0, "weak": 2.0, "noise": 1.0}
    # Ranks, not values: a model first under two scores and last under the third averages (3 + 3 + 1) / 3.
    mixed = {"a": {"knn": 0.9, "linear": 0.9, "logme": -5.0}, "b": {"knn": 0.5, "linear": 0.5, "logme": 0.0},
             "c": {"knn": 0.1, "linear": 0.1, "logme": -1.0}}
    assert combined_scores(mixed) == pytest.approx({"a": 7 / 3, "b": 7 / 3, "c": 4 / 3})


def test_scores_do_not_depend_on_the_scale_of_the_features(feature_sets):
    train, labels, evaluation, eval_labels = feature_sets["weak"]
    for score in (knn_accuracy, linear_probe_accuracy):
        assert score(train, labels, evaluation, eval_labels) == score(train * 50, labels, evaluation * 50, eval_labels)


def test_knn_uses_no_more_neighbours_than_the_smallest_class():
    labels = np.array([0] * 30 + [1] * 3)
    assert screening.knn_neighbours(labels) == 3
    assert screening.knn_neighbours(np.repeat([0, 1], 100)) == screening.KNN_MAX_NEIGHBOURS


def log_gaussian_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹I + α⁻¹FFᵀ) / N: the evidence written directly, without any SVD."""
    examples = len(target)
    covariance = np.eye(examples) / beta + features @ features.T / alpha
    _, log_determinant = np.linalg.slogdet(covariance)
    quadratic = target @ np.linalg.solve(covariance, target)
    return float((-0.5 * quadratic - 0.5 * log_determinant - 0.5 * examples * np.log(2 * np.pi)) / examples)


def evidence_by_matrices(features: np.ndarray, target: np.ndarray, iterations: int = 500) -> tuple[float, float, float]:
    """The paper's Algorithm 1 with explicit matrices (A = αI + βFᵀF, m = βA⁻¹Fᵀy), run to convergence."""
    examples, dimensions = features.shape
    gram = features.T @ features
    eigenvalues = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        precision = alpha * np.eye(dimensions) + beta * gram
        mean = beta * np.linalg.solve(precision, features.T @ target)
        gamma = float(np.sum(beta * eigenvalues / (alpha + beta * eigenvalues)))
        alpha = gamma / float(mean @ mean)
        beta = (examples - gamma) / float(np.sum((target - features @ mean) ** 2))
    precision = alpha * np.eye(dimensions) + beta * gram
    mean = beta * np.linalg.solve(precision, features.T @ target)
    _, log_determinant = np.linalg.slogdet(precision)
    value = (dimensions / 2 * np.log(alpha) + examples / 2 * np.log(beta) - beta / 2 * np.sum((target - features @ mean) ** 2)
             - alpha / 2 * mean @ mean - log_determinant / 2 - examples / 2 * np.log(2 * np.pi))
    return float(value / examples), alpha, beta


def linear_target(examples: int, dimensions: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(examples, dimensions))
    return features, features @ rng.normal(size=dimensions) + 0.7 * rng.normal(size=examples)


@pytest.mark.parametrize(("examples", "dimensions"), [(60, 12), (24, 40)], ids=["more-examples", "more-dimensions"])
def test_logme_value_is_the_gaussian_evidence_at_its_alpha_and_beta(examples, dimensions):
    """With fewer examples than dimensions too, where the LogME reference code drops log α terms."""
    features, target = linear_target(examples, dimensions)
    result = logme_evidence(features, target)
    assert result.value == pytest.approx(log_gaussian_evidence(features, target, result.alpha, result.beta), abs=1e-9)


def test_logme_is_the_maximised_evidence_of_the_paper():
    features, target = linear_target(60, 12)
    result = logme_evidence(features, target)
    reference, alpha, beta = evidence_by_matrices(features, target)
    assert result.value == pytest.approx(reference, abs=1e-4)
    assert (result.alpha, result.beta) == pytest.approx((alpha, beta), rel=0.02)
    for alpha_factor, beta_factor in [(1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)]:
        nearby = log_gaussian_evidence(features, target, result.alpha * alpha_factor, result.beta * beta_factor)
        assert nearby <= result.value + 1e-5


def test_logme_averages_the_evidence_of_each_class_one_hot_target(feature_sets):
    train, labels, _, _ = feature_sets["weak"]
    per_class = [logme_evidence(train, labels == label).value for label in range(4)]
    assert logme(train, labels) == pytest.approx(np.mean(per_class))


def test_logme_of_constant_features_is_finite():
    assert np.isfinite(logme(np.zeros((10, 4)), np.repeat([0, 1], 5)))


def test_kendall_tau_is_tau_b_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    for _ in range(5):
        xs = rng.integers(0, 4, size=9).tolist()
        ys = (np.array(xs) + rng.integers(-2, 3, size=9)).tolist()
        assert kendall_tau(xs, ys) == pytest.approx(scipy_stats.kendalltau(xs, ys).statistic)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1], [2]) is None
    assert kendall_tau([1, 2, 3], [5, 5, 5]) is None


def test_regret_is_the_best_known_accuracy_the_kept_models_missed():
    accuracy = {"a": 0.9, "b": 0.8, "c": None, "d": 0.95}  # d: screened out, fine-tuned by an earlier run
    assert screen_regret(accuracy, kept=["a", "b"]) == pytest.approx(0.05)
    assert screen_regret(accuracy, kept=["d", "b"]) == 0.0
    assert screen_regret(accuracy, kept=["c"]) is None


def candidate(model_id: str, score: float, kept: bool, accuracy: float | None, top1: float | None) -> dict:
    return {"model_id": model_id, "score": score, "kept": kept, "test_accuracy": accuracy, "imagenet_top1": top1}


def test_ranking_report_says_which_ranked_the_fine_tuned_models_better():
    candidates = [
        candidate("a", 4.0, True, 0.95, 70.0),
        candidate("b", 3.0, True, 0.90, 80.0),
        candidate("c", 2.0, True, 0.85, 75.0),
        candidate("d", 1.0, False, None, 85.0),
        candidate("e", 0.5, True, 0.60, None),  # no prior: left out of both τ, kept in the regret
    ]
    report = ranking_report(candidates)
    assert report["compared_models"] == ["a", "b", "c"]
    assert report["screen_tau"] == 1.0
    assert report["prior_tau"] == pytest.approx(kendall_tau([70, 80, 75], [0.95, 0.90, 0.85]))
    assert report["screen_tau_all_known"] == 1.0 and report["models_with_known_accuracy"] == 4
    assert report["regret"] == 0.0
    assert report["verdict"].startswith("the screen ranked the fine-tuned models better")

    reversed_scores = [{**c, "score": -c["score"]} for c in candidates]
    assert ranking_report(reversed_scores)["verdict"].startswith("the ImageNet prior ranked")
    assert ranking_report(candidates[:2])["verdict"].startswith("cannot tell: 2 model(s)")
    same = [{**c, "imagenet_top1": c["score"]} for c in candidates[:3]]
    assert ranking_report(same)["verdict"].startswith("the screen and the ImageNet prior ranked equally well")


def test_select_top_keeps_the_best_and_breaks_ties_by_model_id():
    assert select_top({"b": 1.0, "a": 1.0, "c": 2.0, "d": 0.5}, 2) == (["c", "a"], ["b", "d"])
    assert select_top({"b": 1.0, "a": 1.0}, 5) == (["a", "b"], [])
    with pytest.raises(ValueError, match="keep_top"):
        select_top({"a": 1.0}, 0)


@pytest.mark.parametrize(
    ("screen", "backend", "messages"),
    [
        (None, "local", []),
        ({}, "local", []),
        ({"keep_top": 2}, "local", []),
        ({"keep_top": 2, "score": "logme"}, "local", []),
        ("top2", "local", ["screen must be an object"]),
        ({"keep_top": 2, "scores": "knn", "k": 3}, "local", ["unknown key(s) ['k', 'scores']"]),
        ({"score": "knn"}, "local", ["screen.keep_top is required"]),
        ({"keep_top": 0}, "local", ["screen.keep_top must be an integer of at least 1, got 0"]),
        ({"keep_top": "2"}, "local", ["screen.keep_top must be an integer of at least 1, got '2'"]),
        ({"keep_top": True}, "local", ["screen.keep_top must be an integer"]),
        ({"keep_top": 5}, "local", ["keeps all 5 candidate model(s)"]),
        ({"keep_top": 2, "score": "fast"}, "local", ["screen.score must be one of knn, linear, logme, combined"]),
        ({"keep_top": 2}, "sagemaker", []),
        ({"keep_top": 2, "sample_per_class": None, "seed": 3, "instance_type": "ml.p3.2xlarge", "unscored": "leave_out"},
         "sagemaker", []),
        ({"keep_top": 2, "sample_per_class": 0}, "local", ["screen.sample_per_class must be an integer of at least 1"]),
        ({"keep_top": 2, "seed": -1}, "local", ["screen.seed must be an integer of at least 0, got -1"]),
        ({"keep_top": 2, "instance_type": "g4dn"}, "sagemaker", ["screen.instance_type 'g4dn' is not a SageMaker"]),
        ({"keep_top": 2, "unscored": "skip"}, "sagemaker", ["screen.unscored must be one of fine_tune, leave_out"]),
        ({"keep_top": 2}, "emr", ["screen runs on the local or the sagemaker backend, not 'emr'"]),
    ],
)
def test_screen_param_problems_are_named(screen, backend, messages):
    problems = screen_problems(screen, n_candidates=5, backend=backend)
    assert len(problems) == len(messages), problems
    for problem, message in zip(problems, messages):
        assert message in problem


def test_screen_settings_default_to_the_combined_score():
    assert screening.screen_settings({"keep_top": 3}) == screening.ScreenSettings(3, "combined")
    assert screening.screen_settings({"keep_top": 3}).sample_per_class == screening.DEFAULT_SAMPLE_PER_CLASS
    assert screening.screen_settings({"keep_top": 3, "sample_per_class": None}).sample_per_class is None
    assert screening.screen_settings({}) is None


def test_training_jobs_saved_counts_every_trial_of_every_screened_out_model():
    assert screening.training_jobs_saved(candidates=135, keep_top=34, trials_per_model=2) == 202


def test_prior_table_covers_our_model_lists_with_timm_default_tags():
    import timm

    local_models = [
        line.strip()
        for name in ("local-small.txt", "local-tiny.txt")
        for line in (PROJECT_ROOT / "include" / "model_lists" / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for model in local_models:  # timm's test models too: it publishes their 160 px results
        default = f"{model}.{timm.models.get_pretrained_cfg(model).tag}"
        assert imagenet_top1(model) == imagenet_top1(default) is not None
        assert 30.0 < imagenet_top1(model) < 90.0
    mapping = json.loads((PROJECT_ROOT / "include" / "model_maps" / "jumpstart-tf-ic-to-timm.json").read_text())
    in1k = {entry["timm"] for entry in mapping["models"].values() if entry["timm"].endswith("in1k")}
    assert not [name for name in sorted(in1k) if imagenet_top1(name) is None]
    assert imagenet_top1("resnet18.tv_in1k") != imagenet_top1("resnet18")
    assert imagenet_top1("resnet18.no_such_tag") is None and imagenet_top1("tensorflow-ic-x") is None


# --- a real local screen ------------------------------------------------------------------------------

# Random weights, top layer only: the trainer refuses that unless forced; here it is the cache being tested.
TINY = {"pretrained": "false", "image_size": "16", "batch_size": "8", "train_only_top_layer": "True", "epochs": "1",
        "force_top_layer_on_random_weights": "True"}


@pytest.fixture
def channels(tmp_path):
    return {
        "training": write_image_folders(tmp_path / "data" / "training", classes=3, per_class=8, seed=1),
        "validation": write_image_folders(tmp_path / "data" / "validation", classes=3, per_class=4, seed=2),
    }


def test_a_local_screen_scores_tiny_models_shares_the_feature_cache_and_slots(channels, tmp_path, monkeypatch):
    from model_selection.local.jobstore import JobStore
    from model_selection.local.screen import screen_candidates
    from model_selection.local.supervisor import MachineSlots
    from model_selection.local.train import Channels, train

    monkeypatch.setenv("MODEL_SELECTION_MAX_TRAINERS", "1")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not weights")
    candidates = [
        {"model_id": "efficientnet", "static_hyperparameters": {**TINY, "model_id": "test_efficientnet"}},
        {"model_id": "resnet", "static_hyperparameters": {**TINY, "model_id": "test_resnet"}},
        {"model_id": "unloadable", "static_hyperparameters": {
            **TINY, "model_id": "test_resnet", "pretrained": "true", "weights_file": str(broken)}},
    ]
    jobs_root = tmp_path / "jobs"
    first = screen_candidates(candidates, channels["training"], channels["validation"], jobs_root, log=lambda _: None)

    assert set(first) == {"efficientnet", "resnet", "unloadable"}
    assert first["unloadable"]["scores"] is None
    assert "could not load pretrained weights" in first["unloadable"]["error"]
    for model_id in ("efficientnet", "resnet"):
        result = first[model_id]
        assert result["error"] is None
        assert 0.0 <= result["scores"]["knn"] <= 1.0 and 0.0 <= result["scores"]["linear"] <= 1.0
        assert np.isfinite(result["scores"]["logme"])
        assert result["images"] == 3 * 8 + 3 * 4
        assert result["seconds"] > 0 and result["feature_cache"] == "computed"
        assert result["weights"] == "random init" and result["pretrained"] is False and "random init" in result["note"]
    scored = {model_id: first[model_id]["scores"] for model_id in ("efficientnet", "resnet")}
    assert {model_id: scores["combined"] for model_id, scores in scored.items()} == combined_scores(scored)

    # A second screen waits for the machine's only trainer slot, then loads every feature from the cache.
    slots = MachineSlots(jobs_root / "slots", 1)
    slot = slots.try_acquire()
    messages: list[str] = []
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(screen_candidates(
        candidates[:2], channels["training"], channels["validation"], jobs_root, log=messages.append, poll_seconds=0.05)))
    worker.start()
    deadline = time.monotonic() + 300  # an event, not a window: a loaded machine only makes it later
    while not any("waiting for one of the 1 machine-wide trainer slot" in m for m in messages):
        assert worker.is_alive() and time.monotonic() < deadline, messages
        time.sleep(0.05)
    assert worker.is_alive() and not outcome  # still waiting: the slot is held
    os.close(slot[1])
    worker.join(timeout=600)
    for model_id in ("efficientnet", "resnet"):
        assert outcome[model_id]["feature_cache"] == "loaded"
        assert outcome[model_id]["scores"] == first[model_id]["scores"]

    # A trainer with the same hyperparameters and the machine-wide cache loads the screen's features.
    summary = train(
        Channels(channels["training"], channels["validation"]),
        candidates[0]["static_hyperparameters"],
        tmp_path / "model",
        feature_cache_dir=JobStore(jobs_root).feature_cache,
    )
    assert summary["feature_cache"] == "loaded"


BIT_EXACT = "tensorflow-ic-bit-m-r101x1-ilsvrc2012-classification-1"  # exact twin: resnetv2_101x1_bit.goog_in21k_ft_in1k
BIT_APPROXIMATE = "tensorflow-ic-bit-s-r101x1-ilsvrc2012-classification-1"  # only an approximate twin
INCEPTION_UNMAPPED = "tensorflow-ic-imagenet-inception-v1-classification-4"  # no twin at all


def sagemaker_launch(model_id: str, attaching: bool = False) -> dict:
    return {"model_id": model_id, "attaching": attaching, "job_name": f"job-{model_id[-12:]}", "attempt": 1,
            "spec": {"static_hyperparameters": {"epochs": "2"}}}


def test_on_sagemaker_only_exact_twins_are_scored_and_the_others_say_why():
    from model_selection.screen_plan import scorable_candidates

    launches = [sagemaker_launch(BIT_EXACT), sagemaker_launch(BIT_APPROXIMATE), sagemaker_launch(INCEPTION_UNMAPPED),
                sagemaker_launch("tensorflow-ic-bit-m-r101x3-ilsvrc2012-classification-1", attaching=True)]
    scored, unscored = scorable_candidates("sagemaker", launches, PROJECT_ROOT)
    assert scored == [{"model_id": BIT_EXACT, "static_hyperparameters": {
        "model_id": "resnetv2_101x1_bit.goog_in21k_ft_in1k", "pretrained": "true", "image_size": "auto",
        "pretrained_image_size": "224"}}]
    assert sorted(unscored) == [BIT_APPROXIMATE, INCEPTION_UNMAPPED]  # the attaching launch is no candidate
    assert "approximate" in unscored[BIT_APPROXIMATE] and unscored[INCEPTION_UNMAPPED].startswith("no exact timm twin")


def test_the_saving_is_estimated_only_from_what_this_configurations_jobs_billed():
    from model_selection.screen_plan import saving_estimate

    rows = [{"dataset": "pets", "config_hash": "abc", "billable_seconds": 1800, "training_jobs": 2},
            {"dataset": "pets", "config_hash": "abc", "billable_seconds": 600, "training_jobs": 2},
            {"dataset": "pets", "config_hash": "other", "billable_seconds": 99999, "training_jobs": 1}]
    line = saving_estimate(rows, "pets", "abc", "ml.g4dn.xlarge", "ml.g4dn.xlarge", jobs_saved=6)
    # 2,400 s over 4 jobs = 600 s a job; 6 jobs = 1 instance-hour, at the price table's g4dn.xlarge rate
    from model_selection.cost import load_prices

    rate = load_prices().price("ml.g4dn.xlarge")
    assert "about 1.00 instance-hours" in line and "averaged 10.0 min" in line and f"about ${rate:.2f}" in line
    assert "saving is not estimated (no training job of this configuration has billed yet)" in saving_estimate(
        rows, "pets", "new", "ml.g4dn.xlarge", "ml.g4dn.xlarge", jobs_saved=6)


class RecordedXComs:
    """What a task instance's `xcom_pull` returns for the plan's XComs (the screen reads nothing else)."""

    def __init__(self, values: dict):
        self.values = values

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.values.get((task_ids, key))


@pytest.mark.parametrize("policy", ["fine_tune", "leave_out"])
def test_candidates_the_screen_cannot_score_are_fine_tuned_or_left_out_with_a_row_saying_why(tmp_path, policy):
    from model_selection.dag_tasks import screen_task
    from model_selection.results import ResultsStore

    launches = [sagemaker_launch(BIT_APPROXIMATE), sagemaker_launch(INCEPTION_UNMAPPED),
                sagemaker_launch(BIT_EXACT, attaching=True)]
    study = {"screen": {"keep_top": 1, "unscored": policy}, "dataset": {"name": "pets"}, "config_hash": "abc",
             "backend": "sagemaker", "results_uri": str(tmp_path), "aws_conn_id": None, "learning_rate_multipliers": [1, 0.2]}
    unscored = {BIT_APPROXIMATE: "no exact timm twin to score it on (approximate)",
                INCEPTION_UNMAPPED: "no exact timm twin to score it on (unmapped)"}
    ti = RecordedXComs({("plan", "study"): study, ("plan", "screen_job"): {"unscored": unscored}})
    kept = screen_task(ti, launches, None, "run-1")  # no screen job ran: nothing could be scored
    store = ResultsStore(str(tmp_path))
    rows = {row["model_id"]: row for row in store.read_latest(dataset="pets")}
    record = store.latest_record("screen", "pets", "abc")
    assert record["unscored"] == unscored and record["unscored_policy"] == policy
    if policy == "fine_tune":
        assert [launch["model_id"] for launch in kept] == [BIT_EXACT, BIT_APPROXIMATE, INCEPTION_UNMAPPED]
        assert kept[1]["screen"]["screen_note"] == unscored[BIT_APPROXIMATE] and kept[1]["screen"]["screen_rank"] is None
        assert rows == {} and record["training_jobs_saved"] == 0
    else:
        assert [launch["model_id"] for launch in kept] == [BIT_EXACT]  # its job runs already: never screened out
        assert {model: row["status"] for model, row in rows.items()} == {BIT_APPROXIMATE: "Screened out",
                                                                         INCEPTION_UNMAPPED: "Screened out"}
        assert rows[INCEPTION_UNMAPPED]["failure_reason"] == unscored[INCEPTION_UNMAPPED] + "; screen.unscored is leave_out"
        assert record["training_jobs_saved"] == 4
