"""Backbone features computed once per image, for training only the top layer.

With a frozen backbone and no augmentation, every epoch would push the same images
through the same backbone to get the same features. Computing them once makes a
10-epoch run cost about one forward pass. A cache folder lets every trial of a tuning
job share them: the first computes, the others (waiting on a file lock) load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from model_selection.local.data import LabelledImages
from model_selection.local.jobstore import file_lock

FeaturesAndLabels = tuple[torch.Tensor, torch.Tensor]


def feature_key(model_id: str, weights: str, seed: int, preprocessing: object, images: LabelledImages) -> str:
    """Changes whenever the model, its weights, the preprocessing or any image file changes."""
    weights_identity: object = weights
    if weights == "random-init":
        weights_identity = ["random-init", seed]
    elif Path(weights).is_file():
        stat = Path(weights).stat()
        weights_identity = [weights, stat.st_size, stat.st_mtime_ns]
    files = []
    for path in images.paths:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    description = json.dumps(
        [model_id, weights_identity, repr(preprocessing), files, list(images.labels)], sort_keys=True
    )
    return hashlib.sha256(description.encode()).hexdigest()[:32]


def cached(cache_dir: Path | None, key: str, compute: Callable[[], FeaturesAndLabels]) -> tuple[FeaturesAndLabels, bool]:
    """The features for `key`, and whether they came from the cache."""
    if cache_dir is None:
        return compute(), False
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    with file_lock(cache_dir / f"{key}.lock"):
        if path.exists():
            features, labels = torch.load(path, weights_only=True)
            return (features, labels), True
        features, labels = compute()
        handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        os.close(handle)
        torch.save((features, labels), temporary)
        os.replace(temporary, path)
        return (features, labels), False

