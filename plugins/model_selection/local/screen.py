"""The local screen: each candidate's backbone features, made once, then the cheap scores.

For each candidate the model is built, preprocessed and fed exactly as the trainer does it
(`train.backbone_features`), under one of the machine-wide trainer slots, and its features
go to the machine-wide feature cache, `<jobs root>/feature-cache`, the folder the supervisor
gives every trainer: a kept model's top-layer trials load them instead of computing them.

The screen may score a sample: at most `sample_per_class` images of each class of training and
of validation (`sample_images`), so its cost is bounded whatever the data set's size.

`main()` is the screen as a training job (`screen_source.SCREEN_PROGRAM` runs it): it reads
SageMaker's training-toolkit contract (hyperparameters, `SM_CHANNEL_*`, `SM_MODEL_DIR`) and
`candidates.json` from its code folder, and writes `screen_source.SCORES_FILE` to the model folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from model_selection.local.data import LabelledImages, Splits, load_splits
from model_selection.local.evaluation import Task
from model_selection.local.hyperparameters import Hyperparameters, parse_hyperparameters
from model_selection.local.images import Preprocessing, resolve_image_size
from model_selection.local.jobstore import JOBS_ROOT_VARIABLE, JobStore
from model_selection.local.model import build_model
from model_selection.local.supervisor import POLL_SECONDS, MachineSlots, machine_trainer_cap
from model_selection.local.train import backbone_features, environment, resolve_device
from model_selection.screen_source import CANDIDATES_FILE, SCORES_FILE, sample_setting
from model_selection.screening import DEFAULT_SCORE, SCORE_CHOICES, combined_scores, score_features
from model_selection.weights import describe_weights

RANDOM_INIT_NOTE = "random init: no pretrained weights were loaded, so this score says little about transfer"


@contextlib.contextmanager
def held_slot(slots: MachineSlots, log: Callable[[str], None], poll_seconds: float = POLL_SECONDS) -> Iterator[int]:
    """Wait for a free machine-wide trainer slot and hold it for the block; yields its index."""
    slot = slots.try_acquire()
    if slot is None:
        log(f"waiting for one of the {slots.count} machine-wide trainer slot(s)")
    while slot is None:
        time.sleep(poll_seconds)
        slot = slots.try_acquire()
    index, descriptor = slot
    try:
        yield index
    finally:
        os.close(descriptor)  # releases the slot's lock


def slot_device(device: torch.device, slot: int) -> torch.device:
    """On a machine with several GPUs, the slot's own GPU, as the supervisor gives its trainers."""
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return torch.device("cuda", slot % torch.cuda.device_count())
    return device


def sample_images(images: LabelledImages, per_class: int | None, seed: int) -> LabelledImages:
    """At most `per_class` (>= 1) images of each class, drawn with `seed`, kept in their order; None keeps all.

    Each class is shuffled by a generator of its own (seed and label), so a class's sample does not
    depend on the other classes, and with one seed a smaller sample is part of a larger one.
    """
    if per_class is None:
        return images
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(images.labels):
        by_class.setdefault(label, []).append(index)
    kept: list[int] = []
    for label, indices in by_class.items():
        random.Random(f"{seed}/{label}").shuffle(indices)
        kept.extend(indices[:per_class])
    kept.sort()
    return LabelledImages(tuple(images.paths[i] for i in kept), tuple(images.labels[i] for i in kept))


class SplitsCache:
    """Each channel scanned and decoded once per (validation split ratio, seed), for all candidates,
    then sampled (`sample_images`) the same way for every candidate."""

    def __init__(self, training_dir: Path, validation_dir: Path | None, log: Callable[[str], None],
                 per_class: int | None = None, seed: int = 0):
        if per_class is not None and per_class < 1:
            raise ValueError(f"sample_per_class must be at least 1, got {per_class}")
        self.training_dir = Path(training_dir)
        self.validation_dir = Path(validation_dir) if validation_dir is not None else None
        self.log = log
        self.per_class = per_class
        self.seed = seed
        self.splits: dict[tuple[float, int], Splits] = {}

    def __call__(self, hp: Hyperparameters) -> Splits:
        key = (hp.validation_split_ratio, hp.random_seed)
        if key not in self.splits:
            splits = load_splits(
                self.training_dir, self.validation_dir, None, hp.validation_split_ratio, hp.random_seed, warn=self.log
            )
            self.splits[key] = dataclasses.replace(
                splits,
                training=sample_images(splits.training, self.per_class, self.seed),
                validation=sample_images(splits.validation, self.per_class, self.seed),
            )
        return self.splits[key]


def screen_model(
    static_hyperparameters: Mapping[str, Any], splits_for: SplitsCache, cache_dir: Path, slot: int
) -> dict[str, Any]:
    """Build the model as the trainer does, take its features (cached or not), and score them."""
    hp, _ = parse_hyperparameters(static_hyperparameters)
    splits = splits_for(hp)
    device = slot_device(resolve_device(hp.device), slot)
    task = Task(num_classes=len(splits.classes), binary=hp.binary_mode, label_smoothing=hp.label_smoothing)
    built = build_model(hp, task.num_outputs)
    built.model.to(device)
    hp, _ = resolve_image_size(hp, built.model, built.pretrained)  # the size its trainer will use
    preprocessing = Preprocessing.for_model(built.model, hp)
    train_features, train_labels, train_loaded = backbone_features(
        built, splits.training, hp, preprocessing, device, cache_dir
    )
    eval_features, eval_labels, eval_loaded = backbone_features(
        built, splits.validation, hp, preprocessing, device, cache_dir
    )
    scores = score_features(train_features.numpy(), train_labels.numpy(), eval_features.numpy(), eval_labels.numpy())
    sources = {"loaded" if loaded else "computed" for loaded in (train_loaded, eval_loaded)}
    return {
        "trainer_model_id": hp.model_id,
        "scores": scores,
        "weights": describe_weights(built.weights),
        "pretrained": built.pretrained,
        "note": None if built.pretrained else RANDOM_INIT_NOTE,
        "images": len(train_labels) + len(eval_labels),
        "feature_dimensions": int(train_features.shape[1]),
        "feature_cache": "+".join(sorted(sources)),
        "device": str(device),
    }


def summary(result: Mapping[str, Any]) -> str:
    scores = ", ".join(f"{name} {value:.4g}" for name, value in result["scores"].items())
    return (f"{scores}; {result['seconds']:.2f} s, {result['images']} images, features {result['feature_cache']}, "
            f"weights {result['weights']}")


def screen_candidates(
    candidates: list[dict[str, Any]],
    training_dir: Path | str,
    validation_dir: Path | str | None,
    jobs_root: Path | str,
    log: Callable[[str], None] = print,
    poll_seconds: float = POLL_SECONDS,
    sample_per_class: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score every candidate ({"model_id", "static_hyperparameters"}), one model at a time, on at
    most `sample_per_class` images per class of each channel (drawn with `seed`; None: all).

    Returns, by candidate model id: `scores` (knn, linear, logme, and combined over the
    candidates that did not fail), `seconds`, `images`, `feature_cache` (computed, loaded or
    both), `weights`, `pretrained`, `note`, `error` (None, or why this model has no scores).
    """
    jobs_root = Path(jobs_root)
    slots = MachineSlots(jobs_root / "slots", machine_trainer_cap())
    cache_dir = JobStore(jobs_root).feature_cache  # the folder the supervisor passes every trainer
    splits_for = SplitsCache(Path(training_dir), Path(validation_dir) if validation_dir else None, log,
                             sample_per_class, seed)
    results: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        model_id = candidate["model_id"]
        with held_slot(slots, log, poll_seconds) as slot:
            started = time.perf_counter()
            try:
                result = {**screen_model(candidate["static_hyperparameters"], splits_for, cache_dir, slot), "error": None}
            except Exception as error:  # noqa: BLE001 - one model that cannot be screened must not stop the others
                result = {"scores": None, "error": f"{type(error).__name__}: {error}"}
            result["seconds"] = time.perf_counter() - started
        results[model_id] = result
        log(f"screened {model_id}: {result['error'] or summary(result)}")
    scored = {model_id: result["scores"] for model_id, result in results.items() if result["error"] is None}
    for model_id, combined in combined_scores(scored).items():
        results[model_id]["scores"]["combined"] = combined
    return results


# SageMaker's training-toolkit contract: where a training job finds its inputs and leaves its model.
HYPERPARAMETERS_FILE = Path("/opt/ml/input/config/hyperparameters.json")
DATA_ROOT = Path("/opt/ml/input/data")
MODEL_DIR = Path("/opt/ml/model")


def job_hyperparameters() -> dict[str, Any]:
    """`$SM_HPS` (the toolkit's JSON of the job's hyperparameters), else SageMaker's hyperparameters file."""
    if os.environ.get("SM_HPS"):
        return json.loads(os.environ["SM_HPS"])
    if HYPERPARAMETERS_FILE.exists():
        return json.loads(HYPERPARAMETERS_FILE.read_text())
    return {}


def channel_dir(name: str) -> Path:
    """`$SM_CHANNEL_<NAME>`, else SageMaker's folder for that channel."""
    return Path(os.environ.get(f"SM_CHANNEL_{name.upper()}") or DATA_ROOT / name)


def main() -> None:
    """The screen as a training job: scores `candidates.json` (current folder) on the job's channels
    and writes `$SM_MODEL_DIR/screen.json`. Exits non-zero only when it cannot screen at all; a model
    that cannot be scored is a row with its `error`, as in `screen_candidates`."""
    hyperparameters = job_hyperparameters()
    try:
        per_class = sample_setting(hyperparameters.get("sample_per_class"))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    seed = int(hyperparameters.get("seed", 0))
    score = str(hyperparameters.get("score", DEFAULT_SCORE))
    training, validation = channel_dir("training"), channel_dir("validation")
    if not training.is_dir():
        raise SystemExit(f"the screen needs its training channel: {training} is not a folder")
    if score not in SCORE_CHOICES:
        raise SystemExit(f"hyperparameter score must be one of {', '.join(SCORE_CHOICES)}, got {score!r}")
    candidates = json.loads(Path(CANDIDATES_FILE).read_text())
    model_dir = Path(os.environ.get("SM_MODEL_DIR") or MODEL_DIR)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # The local backend's jobs root: its trainer slots and feature cache. A SageMaker instance has only this job.
        jobs_root = os.environ.get(JOBS_ROOT_VARIABLE) or stack.enter_context(tempfile.TemporaryDirectory())
        results = screen_candidates(candidates, training, validation if validation.is_dir() else None, jobs_root,
                                    log=functools.partial(print, flush=True), sample_per_class=per_class, seed=seed)
    scored = [result["images"] for result in results.values() if result["error"] is None]
    setting = environment(resolve_device("auto"))
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / SCORES_FILE).write_text(json.dumps({
        "candidates": results,
        "sample_per_class": per_class,
        "seed": seed,
        "score": score,
        "images": max(scored, default=0),
        "seconds": time.perf_counter() - started,
        "device": setting["device"],
        "environment": setting,
    }, indent=1))
    print(f"screened {len(scored)} of {len(results)} candidates; scores in {model_dir / SCORES_FILE}", flush=True)
