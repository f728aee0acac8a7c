"""The local screen: each candidate's backbone features, made once, then the cheap scores.

For each candidate the model is built, preprocessed and fed exactly as the trainer does it
(`train.backbone_features`), under one of the machine-wide trainer slots, and its features
go to the machine-wide feature cache, `<jobs root>/feature-cache`, the folder the supervisor
gives every trainer: a kept model's top-layer trials load them instead of computing them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from model_selection.local.data import Splits, load_splits
from model_selection.local.evaluation import Task
from model_selection.local.hyperparameters import Hyperparameters, parse_hyperparameters
from model_selection.local.images import Preprocessing, resolve_image_size
from model_selection.local.jobstore import JobStore
from model_selection.local.model import build_model
from model_selection.local.supervisor import POLL_SECONDS, MachineSlots, machine_trainer_cap
from model_selection.local.train import backbone_features, resolve_device
from model_selection.screening import combined_scores, score_features
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


class SplitsCache:
    """Each channel scanned and decoded once per (validation split ratio, seed), for all candidates."""

    def __init__(self, training_dir: Path, validation_dir: Path | None, log: Callable[[str], None]):
        self.training_dir = Path(training_dir)
        self.validation_dir = Path(validation_dir) if validation_dir is not None else None
        self.log = log
        self.splits: dict[tuple[float, int], Splits] = {}

    def __call__(self, hp: Hyperparameters) -> Splits:
        key = (hp.validation_split_ratio, hp.random_seed)
        if key not in self.splits:
            self.splits[key] = load_splits(
                self.training_dir, self.validation_dir, None, hp.validation_split_ratio, hp.random_seed, warn=self.log
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
) -> dict[str, dict[str, Any]]:
    """Score every candidate ({"model_id", "static_hyperparameters"}), one model at a time.

    Returns, by candidate model id: `scores` (knn, linear, logme, and combined over the
    candidates that did not fail), `seconds`, `images`, `feature_cache` (computed, loaded or
    both), `weights`, `pretrained`, `note`, `error` (None, or why this model has no scores).
    """
    jobs_root = Path(jobs_root)
    slots = MachineSlots(jobs_root / "slots", machine_trainer_cap())
    cache_dir = JobStore(jobs_root).feature_cache  # the folder the supervisor passes every trainer
    splits_for = SplitsCache(Path(training_dir), Path(validation_dir) if validation_dir else None, log)
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
