"""Cheap scores that rank pretrained models for a data set before any of them is fine-tuned.

One forward pass of each candidate's backbone over the training and validation images
gives features; three scores of those features predict how well the model will transfer:

- `knn`: k-nearest-neighbour accuracy on the validation features (large comparisons of
  transferability scores found this simple probe among the most reliable);
- `linear`: validation accuracy of a multinomial logistic regression on the features
  (the top layer alone, trained without the backbone);
- `logme`: LogME (You et al., ICML 2021), the log marginal evidence of a Bayesian linear
  model from the features to each class's one-hot target, maximised over its two
  hyperparameters, averaged over classes. Needs no validation data, no training loop.

`combined` is the mean of the three scores' ranks across the candidates, so that their
scales do not matter. Such scores can fail, and a static prior (ImageNet top-1 of the
pretrained weights) is a strong baseline, so `ranking_report` measures how well the screen
ranked the models that were fine-tuned, beside that prior.

Pure numpy: importable wherever the DAG is parsed, without torch.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_SCORES = ("knn", "linear", "logme")
SCORE_CHOICES = (*FEATURE_SCORES, "combined")
DEFAULT_SCORE = "combined"

KNN_MAX_NEIGHBOURS = 20
KNN_TEMPERATURE = 0.07
LINEAR_STEPS = 300
LINEAR_L2 = 1e-3
LOGME_MAX_ITERATIONS = 100  # the reference stops at 11: see logme_evidence
LOGME_TOLERANCE = 1e-3
LOGME_EPSILON = 1e-5
MIN_MODELS_FOR_VERDICT = 3

PRIOR_TABLE = Path(__file__).resolve().parents[2] / "include" / "priors" / "timm-imagenet-top1.csv"


# --- the scores --------------------------------------------------------------------------------


def _as_arrays(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64).reshape(-1)


def standardised(train_features: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every set centred and scaled by the training features' own mean and spread, per dimension.

    Backbones differ in feature scale by orders of magnitude; this keeps one large dimension
    from deciding distances or the probe's step size. Constant dimensions are left at zero.
    """
    mean = train_features.mean(axis=0)
    spread = train_features.std(axis=0)
    spread[spread < 1e-12] = 1.0
    return [(features - mean) / spread for features in (train_features, *others)]


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_neighbours(train_labels: np.ndarray) -> int:
    """At most 20 (the usual kNN-probe setting), and never more than the smallest class has
    images, so that a class the features separate perfectly can still win its vote."""
    smallest_class = int(np.bincount(train_labels)[np.bincount(train_labels) > 0].min())
    return max(1, min(KNN_MAX_NEIGHBOURS, smallest_class))


def knn_accuracy(
    train_features: Any, train_labels: Any, eval_features: Any, eval_labels: Any, k: int | None = None
) -> float:
    """Accuracy of a k-nearest-neighbour vote on the evaluation features.

    Cosine similarity of standardised features: what matters in a backbone's features is
    their direction, not their length (which varies with image contrast); neighbours vote
    with weight exp(similarity / 0.07), the weighted kNN probe of Wu et al. 2018 and DINO.
    """
    train, train_y = _as_arrays(train_features, train_labels)
    evaluation, eval_y = _as_arrays(eval_features, eval_labels)
    train, evaluation = (_unit_rows(part) for part in standardised(train, evaluation))
    neighbours = min(k or knn_neighbours(train_y), len(train_y))
    similarity = evaluation @ train.T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / KNN_TEMPERATURE)
    classes = int(max(train_y.max(), eval_y.max())) + 1
    votes = np.zeros((len(eval_y), classes))
    np.add.at(votes, (np.arange(len(eval_y))[:, None], train_y[nearest]), weights)
    return float(np.mean(votes.argmax(axis=1) == eval_y))


def largest_eigenvalue(design: np.ndarray, iterations: int = 50, margin: float = 1.25) -> float:
    """λmax(XᵀX) by power iteration from a fixed start, raised by a safety margin.

    An exact spectral norm is an SVD, which costs more than the whole probe on a few
    thousand 1,000-dimensional features; 50 products cost 50 passes over X.
    """
    vector = np.random.default_rng(0).normal(size=design.shape[1])
    estimate = 0.0
    for _ in range(iterations):
        product = design.T @ (design @ vector)
        estimate = float(np.linalg.norm(product))
        if estimate == 0.0:
            return 0.0
        vector = product / estimate
    return margin * estimate


def fit_softmax_regression(
    features: np.ndarray, labels: np.ndarray, classes: int, steps: int = LINEAR_STEPS, l2: float = LINEAR_L2
) -> np.ndarray:
    """Weights (one row per feature, then the bias row) of a multinomial logistic regression.

    Nesterov-accelerated full-batch gradient descent with step 1/L, L bounding the curvature
    of the mean cross-entropy (Böhning: half the largest eigenvalue of XᵀX/n) plus the L2
    term, which applies to the weights, not the bias. It starts from zeros and its one random
    draw (the power iteration's start) has a fixed seed: the same features give the same probe.
    """
    design = np.hstack([features, np.ones((len(features), 1))])
    targets = np.eye(classes)[labels]
    penalised = np.ones((design.shape[1], 1))
    penalised[-1] = 0.0
    step = 1.0 / (0.5 * largest_eigenvalue(design) / len(design) + l2)
    weights = momentum = np.zeros((design.shape[1], classes))
    for iteration in range(steps):
        logits = design @ momentum
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        gradient = design.T @ (probabilities - targets) / len(design) + l2 * penalised * momentum
        following = momentum - step * gradient
        momentum = following + iteration / (iteration + 3) * (following - weights)
        weights = following
    return weights


def linear_probe_accuracy(
    train_features: Any, train_labels: Any, eval_features: Any, eval_labels: Any,
    steps: int = LINEAR_STEPS, l2: float = LINEAR_L2,
) -> float:
    """Evaluation accuracy of a softmax regression trained on standardised training features."""
    train, train_y = _as_arrays(train_features, train_labels)
    evaluation, eval_y = _as_arrays(eval_features, eval_labels)
    train, evaluation = standardised(train, evaluation)
    classes = int(max(train_y.max(), eval_y.max())) + 1
    weights = fit_softmax_regression(train, train_y, classes, steps, l2)
    logits = np.hstack([evaluation, np.ones((len(evaluation), 1))]) @ weights
    return float(np.mean(logits.argmax(axis=1) == eval_y))


@dataclasses.dataclass(frozen=True)
class Evidence:
    """LogME's result for one target: the maximised log evidence per example, and where it is."""

    value: float
    alpha: float  # precision of the prior on the linear weights
    beta: float  # precision of the noise


def _posterior_terms(ratio: float, sigma: np.ndarray, projected_sq: np.ndarray, residual: float):
    """γ, |m|² and |y − Fm|² at α/β = `ratio`, in the SVD basis (sigma: squared singular values)."""
    gamma = float(np.sum(sigma / (sigma + ratio)))
    weights_sq = float(np.sum(sigma * projected_sq / (ratio + sigma) ** 2))
    misfit_sq = float(np.sum(projected_sq / (1.0 + sigma / ratio) ** 2)) + residual
    return gamma, weights_sq, misfit_sq


def _log_evidence(alpha: float, beta: float, sigma: np.ndarray, weights_sq: float, misfit_sq: float,
                  examples: int) -> float:
    """log p(y | F, α, β) / N, with log|αI + βFᵀF| over all D eigenvalues: the D − k zero ones
    give log α each, which cancels k − D of the D/2 log α term (k: the rank of F)."""
    rank = len(sigma)
    value = (
        (0.5 * rank * np.log(alpha) if rank else 0.0)
        + 0.5 * examples * np.log(beta)
        - 0.5 * float(np.sum(np.log(alpha + beta * sigma)))
        - 0.5 * beta * misfit_sq
        - 0.5 * alpha * weights_sq
        - 0.5 * examples * np.log(2.0 * np.pi)
    )
    return float(value / examples)


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """The features' SVD, F = U S Vᵀ, kept to its rank k: all LogME needs of F, computed once per model."""

    left: np.ndarray  # U, N × k
    sigma: np.ndarray  # the k nonzero squared singular values
    examples: int
    dimensions: int

    @classmethod
    def of(cls, features: Any) -> "Spectrum":
        features = np.asarray(features, dtype=np.float64)
        left, singular, _ = np.linalg.svd(features, full_matrices=False)
        tolerance = singular.max(initial=0.0) * max(features.shape) * np.finfo(np.float64).eps
        rank = int(np.sum(singular > tolerance))
        return cls(left[:, :rank], singular[:rank] ** 2, *features.shape)


def logme_evidence(features: Any | Spectrum, target: Any) -> Evidence:
    """Maximise the evidence of y = Fw + noise, w ~ N(0, α⁻¹I), noise ~ N(0, β⁻¹I), over α, β.

    The fixed-point iteration of the LogME reference code (thuml/LogME, `_fit_fixed_point`):
    from α = β = 1, γ = Σ σᵢ/(σᵢ + α/β), α = γ/|m|², β = (N − γ)/|y − Fm|², until α/β moves
    less than 0.1 %. Two corrections, both to match the paper's evidence exactly: the log
    determinant counts the zero eigenvalues when the features have fewer examples than
    dimensions (the reference drops their log α terms, so it misstates the evidence by
    (D − k)/2N log α there), and the evidence is evaluated at the final α, β (the reference
    uses the previous ratio's m; the two agree at convergence). The reference also stops
    after 11 rounds; this allows 100, which cost microseconds, so that slowly converging
    targets reach their maximum too.
    """
    spectrum = features if isinstance(features, Spectrum) else Spectrum.of(features)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    examples, sigma = spectrum.examples, spectrum.sigma
    projected_sq = (spectrum.left.T @ target) ** 2
    residual = float(max(target @ target - projected_sq.sum(), 0.0))
    if len(sigma) == 0:  # all-zero features explain nothing: the noise-only model, whose best β is N/|y|²
        beta = examples / (residual + LOGME_EPSILON)
        return Evidence(_log_evidence(1.0, beta, sigma, 0.0, residual, examples), float("inf"), beta)
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITERATIONS):
        ratio = alpha / beta
        gamma, weights_sq, misfit_sq = _posterior_terms(ratio, sigma, projected_sq, residual)
        alpha = gamma / (weights_sq + LOGME_EPSILON)
        beta = (examples - gamma) / (misfit_sq + LOGME_EPSILON)
        if abs(alpha / beta - ratio) / ratio <= LOGME_TOLERANCE:
            break
    _, weights_sq, misfit_sq = _posterior_terms(alpha / beta, sigma, projected_sq, residual)
    return Evidence(_log_evidence(alpha, beta, sigma, weights_sq, misfit_sq, examples), alpha, beta)


def logme(features: Any, labels: Any) -> float:
    """LogME of classification features: the mean over classes of each one-hot target's evidence."""
    features, labels = _as_arrays(features, labels)
    spectrum = Spectrum.of(features)
    return float(np.mean([logme_evidence(spectrum, labels == label).value for label in np.unique(labels)]))


def score_features(
    train_features: Any, train_labels: Any, eval_features: Any, eval_labels: Any
) -> dict[str, float]:
    """The three feature scores of one model: kNN and linear-probe validation accuracy, LogME."""
    return {
        "knn": knn_accuracy(train_features, train_labels, eval_features, eval_labels),
        "linear": linear_probe_accuracy(train_features, train_labels, eval_features, eval_labels),
        "logme": logme(train_features, train_labels),
    }


# --- ranking many models ------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 for the lowest value up to n for the highest; tied values share their mean rank."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def combined_scores(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per model, the mean of its ranks under knn, linear and logme among these models.

    Ranks, not values, so that an accuracy and a log evidence can be averaged; higher is better.
    """
    models = sorted(scores)
    ranks = [average_ranks([float(scores[model][name]) for model in models]) for name in FEATURE_SCORES]
    return {model: float(np.mean([column[index] for column in ranks])) for index, model in enumerate(models)}


def select_top(scores: Mapping[str, float], keep_top: int) -> tuple[list[str], list[str]]:
    """The `keep_top` best-scoring model ids and the rest, best first; ties go to the lower model id."""
    if keep_top < 1:
        raise ValueError(f"keep_top must be at least 1, got {keep_top}")
    ordered = sorted(scores, key=lambda model: (-float(scores[model]), model))
    return ordered[:keep_top], ordered[keep_top:]


def training_jobs_saved(candidates: int, keep_top: int, trials_per_model: int) -> int:
    """Training jobs the screen spares: every trial of every model it screens out."""
    return max(candidates - keep_top, 0) * trials_per_model


# --- how trustworthy the ranking was ------------------------------------------------------------


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's τ-b (ties in either list allowed); None for fewer than two pairs or a constant list."""
    if len(xs) != len(ys):
        raise ValueError(f"kendall_tau needs lists of one length, got {len(xs)} and {len(ys)}")
    if len(xs) < 2:
        return None
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    upper = np.triu_indices(len(x), k=1)
    x_order = np.sign(x[:, None] - x[None, :])[upper]
    y_order = np.sign(y[:, None] - y[None, :])[upper]
    untied = float(np.sum(x_order != 0)) * float(np.sum(y_order != 0))
    if untied == 0:
        return None
    return float(np.sum(x_order * y_order) / np.sqrt(untied))


def screen_regret(test_accuracy: Mapping[str, float | None], kept: Iterable[str]) -> float | None:
    """The best known fine-tuned test accuracy of all candidates minus the best among the kept.

    0 when the best known model was kept; None when no kept model has a known accuracy.
    Screened-out models count where an earlier run in the results store fine-tuned them.
    """
    known = {model: value for model, value in test_accuracy.items() if value is not None}
    kept_known = [known[model] for model in kept if model in known]
    if not kept_known:
        return None
    return float(max(known.values()) - max(kept_known))


def ranking_report(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """How well the screen and the ImageNet prior ranked the models whose test accuracy is known.

    Each candidate: {"model_id", "score" (the screen score used to select, or None),
    "kept" (bool), "test_accuracy" (fine-tuned, or None), "imagenet_top1" (or None)}.
    Both τ are over the same models: those with a score, a prior and a test accuracy.
    """
    compared = [
        candidate for candidate in candidates
        if all(candidate.get(key) is not None for key in ("score", "test_accuracy", "imagenet_top1"))
    ]
    accuracies = [candidate["test_accuracy"] for candidate in compared]
    screen_tau = kendall_tau([candidate["score"] for candidate in compared], accuracies)
    prior_tau = kendall_tau([candidate["imagenet_top1"] for candidate in compared], accuracies)
    scored = [c for c in candidates if c.get("score") is not None and c.get("test_accuracy") is not None]
    regret = screen_regret(
        {candidate["model_id"]: candidate.get("test_accuracy") for candidate in candidates},
        [candidate["model_id"] for candidate in candidates if candidate.get("kept")],
    )
    return {
        "compared_models": sorted(candidate["model_id"] for candidate in compared),
        "screen_tau": screen_tau,
        "prior_tau": prior_tau,
        "screen_tau_all_known": kendall_tau([c["score"] for c in scored], [c["test_accuracy"] for c in scored]),
        "models_with_known_accuracy": len(scored),
        "regret": regret,
        "verdict": ranking_verdict(len(compared), screen_tau, prior_tau),
    }


def screen_ranking(record: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`ranking_report` of a study's latest screen against what the results store knows now: each candidate's
    fine-tuned test accuracy (this run's or a later backfill's) and its ImageNet top-1 prior."""
    accuracy = {row.get("model_id"): row.get("test_accuracy") for row in rows if row.get("status") == "Completed"}
    kept = set(record.get("kept", []))
    candidates = []
    for model_id, result in (record.get("candidates") or {}).items():
        scores = result.get("scores") or {}
        candidates.append({
            "model_id": model_id, "score": scores.get(record.get("score")), "kept": model_id in kept,
            "test_accuracy": accuracy.get(model_id),
            "imagenet_top1": imagenet_top1(result.get("trainer_model_id") or model_id),
        })
    return {**ranking_report(candidates), "score": record.get("score"), "keep_top": record.get("keep_top"),
            "candidates": len(candidates), "seconds": record.get("seconds"), "images": record.get("images"),
            "training_jobs_saved": record.get("training_jobs_saved"), "run_id": record.get("run_id")}


def ranking_verdict(models: int, screen_tau: float | None, prior_tau: float | None) -> str:
    """One line: which ranked the fine-tuned models better, or why that cannot be told."""
    if models < MIN_MODELS_FOR_VERDICT:
        return (f"cannot tell: {models} model(s) have a screen score, an ImageNet top-1 and a fine-tuned "
                f"test accuracy; at least {MIN_MODELS_FOR_VERDICT} are needed")
    if screen_tau is None or prior_tau is None:
        return f"cannot tell: over these {models} models the test accuracies, the scores or the priors are all equal"
    figures = f"Kendall τ {screen_tau:.2f} for the screen, {prior_tau:.2f} for ImageNet top-1, over {models} models"
    if abs(screen_tau - prior_tau) < 1e-9:
        return f"the screen and the ImageNet prior ranked equally well ({figures})"
    better = "the screen" if screen_tau > prior_tau else "the ImageNet prior"
    return f"{better} ranked the fine-tuned models better on this data set ({figures})"


# --- the static prior ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _prior_rows(table: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(top-1 by `architecture.tag`, top-1 by bare architecture for timm's default tag)."""
    by_name: dict[str, float] = {}
    by_architecture: dict[str, float] = {}
    with open(table, newline="") as handle:
        for row in csv.DictReader(handle):
            by_name[row["model"]] = float(row["top1"])
            if row["default_tag"] == "1":
                by_architecture[row["model"].split(".", 1)[0]] = float(row["top1"])
    return by_name, by_architecture


def imagenet_top1(model_id: str, table: Path = PRIOR_TABLE) -> float | None:
    """ImageNet-1k top-1 (%) of a timm model's pretrained weights, from timm's published results.

    `resnet18.a1_in1k` matches its own row; a bare `resnet18` matches the row of the tag timm
    loads for it by default (the table's `default_tag` column). None where timm publishes no
    ImageNet-1k result (ImageNet-21k-only weights, say) or for JumpStart ids: pass
    the timm name the trainer loads.
    """
    by_name, by_architecture = _prior_rows(Path(table))
    if model_id in by_name:
        return by_name[model_id]
    return None if "." in model_id else by_architecture.get(model_id)


# --- the `screen` param ---------------------------------------------------------------------------

SCREEN_KEYS = ("keep_top", "score", "sample_per_class", "seed", "instance_type", "unscored")
# At most this many images per class of training and of validation are scored (benchmarks/bench_screen.py).
DEFAULT_SAMPLE_PER_CLASS = 10
DEFAULT_SCREEN_INSTANCE_TYPE = "ml.g4dn.xlarge"
UNSCORED_CHOICES = ("fine_tune", "leave_out")  # candidates the screen cannot score (no exact timm twin)


@dataclasses.dataclass(frozen=True)
class ScreenSettings:
    keep_top: int
    score: str = DEFAULT_SCORE
    sample_per_class: int | None = DEFAULT_SAMPLE_PER_CLASS  # None: every image
    seed: int = 0
    instance_type: str = DEFAULT_SCREEN_INSTANCE_TYPE  # SageMaker: the screen's one training job
    unscored: str = "fine_tune"


def _positive_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def screen_problems(screen: Any, n_candidates: int, backend: str) -> list[str]:
    """Every problem with the `screen` param, at once; None or {} means no screen."""
    if screen is None or screen == {}:
        return []
    if not isinstance(screen, Mapping):
        return [f'screen must be an object such as {{"keep_top": 5, "score": "combined"}}, got {screen!r}']
    problems = []
    unknown = sorted(set(screen) - set(SCREEN_KEYS))
    if unknown:
        problems.append(f"screen: unknown key(s) {unknown}; known: {', '.join(SCREEN_KEYS)}")
    keep_top = screen.get("keep_top")
    if keep_top is None:
        problems.append("screen.keep_top is required: how many of the best-scoring models to fine-tune")
    elif not _positive_integer(keep_top):
        problems.append(f"screen.keep_top must be an integer of at least 1, got {keep_top!r}")
    elif keep_top >= n_candidates:
        problems.append(
            f"screen.keep_top={keep_top} keeps all {n_candidates} candidate model(s), so the screen would "
            "save nothing: lower keep_top or drop screen"
        )
    score = screen.get("score", DEFAULT_SCORE)
    if score not in SCORE_CHOICES:
        problems.append(f"screen.score must be one of {', '.join(SCORE_CHOICES)}, got {score!r}")
    sample = screen.get("sample_per_class", DEFAULT_SAMPLE_PER_CLASS)
    if sample is not None and not _positive_integer(sample):
        problems.append(f"screen.sample_per_class must be an integer of at least 1 (or null: every image), got {sample!r}")
    seed = screen.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"screen.seed must be an integer of at least 0, got {seed!r}")
    instance_type = screen.get("instance_type", DEFAULT_SCREEN_INSTANCE_TYPE)
    if not isinstance(instance_type, str) or not re.fullmatch(r"ml\.[a-z0-9]+\.[a-z0-9]+", instance_type):
        problems.append(f"screen.instance_type {instance_type!r} is not a SageMaker instance type such as ml.g4dn.xlarge")
    unscored = screen.get("unscored", "fine_tune")
    if unscored not in UNSCORED_CHOICES:
        problems.append(f"screen.unscored must be one of {', '.join(UNSCORED_CHOICES)}, got {unscored!r}")
    if backend not in ("local", "sagemaker"):
        problems.append(f"screen runs on the local or the sagemaker backend, not {backend!r}")
    return problems


def screen_settings(screen: Any) -> ScreenSettings | None:
    """The checked param as settings (call `screen_problems` first); None when the screen is off."""
    if not screen:
        return None
    return ScreenSettings(
        keep_top=int(screen["keep_top"]), score=screen.get("score", DEFAULT_SCORE),
        sample_per_class=screen.get("sample_per_class", DEFAULT_SAMPLE_PER_CLASS), seed=int(screen.get("seed", 0)),
        instance_type=screen.get("instance_type", DEFAULT_SCREEN_INSTANCE_TYPE),
        unscored=screen.get("unscored", "fine_tune"),
    )
