"""Channel folders in the JumpStart layout: one sub-folder per class of .jpg/.jpeg/.png files.

Labels are the sorted class-folder names of the training channel. Bad data is named,
never silently dropped: a missing or empty channel, fewer than two classes, a class
folder without images, and every image that cannot be decoded.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A channel folder cannot be used as it is."""


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Image files and their class indices, in a stable order."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    path: Path
    reason: str


@dataclasses.dataclass(frozen=True)
class Splits:
    classes: tuple[str, ...]
    training: LabelledImages
    validation: LabelledImages
    test: LabelledImages | None
    validation_from_training: bool
    skipped: tuple[SkippedImage, ...]


def class_folders(channel: str, directory: Path) -> dict[str, list[Path]]:
    if not directory.is_dir():
        raise DataError(f"{channel} channel: folder {directory} does not exist")
    folders = sorted(entry for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise DataError(f"{channel} channel: folder {directory} holds no class sub-folders")
    classes: dict[str, list[Path]] = {}
    for folder in folders:
        images = sorted(
            path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise DataError(f"{channel} channel: class folder {folder} holds no .jpg, .jpeg or .png images")
        classes[folder.name] = images
    return classes


def decode_problem(path: Path) -> str | None:
    """Why an image cannot be used, or None when it decodes completely."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _usable_images(
    channel: str, classes: dict[str, list[Path]], warn: Callable[[str], None]
) -> tuple[dict[str, list[Path]], list[SkippedImage]]:
    usable: dict[str, list[Path]] = {}
    skipped: list[SkippedImage] = []
    for name, paths in classes.items():
        kept = []
        for path in paths:
            problem = decode_problem(path)
            if problem is None:
                kept.append(path)
            else:
                skipped.append(SkippedImage(path, problem))
                warn(f"WARNING: skipping unreadable image {path} ({problem})")
        if not kept:
            raise DataError(f"{channel} channel: class {name!r} has no readable image left after skipping {len(paths)}")
        usable[name] = kept
    return usable, skipped


def _labelled(classes: Sequence[str], by_class: dict[str, list[Path]]) -> LabelledImages:
    index = {name: label for label, name in enumerate(classes)}
    pairs = [(path, index[name]) for name in classes for path in by_class.get(name, [])]
    return LabelledImages(tuple(path for path, _ in pairs), tuple(label for _, label in pairs))


def stratified_split(
    by_class: dict[str, list[Path]], ratio: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Seeded per-class split; each class with two or more images gives at least one to each side."""
    rng = random.Random(seed)
    kept: dict[str, list[Path]] = {}
    held_out: dict[str, list[Path]] = {}
    for name, paths in by_class.items():
        shuffled = list(paths)
        rng.shuffle(shuffled)
        count = min(max(round(len(shuffled) * ratio), 1), len(shuffled) - 1) if len(shuffled) >= 2 else 0
        held_out[name] = sorted(shuffled[:count])
        kept[name] = sorted(shuffled[count:])
    return kept, held_out


def load_splits(
    training: Path,
    validation: Path | None,
    test: Path | None,
    validation_split_ratio: float,
    seed: int,
    warn: Callable[[str], None] = lambda message: warnings.warn(message, stacklevel=2),
) -> Splits:
    """Scan and check every channel, decoding each image once, before anything is trained."""
    training_classes, skipped = _usable_images("training", class_folders("training", training), warn)
    classes = tuple(sorted(training_classes))
    if len(classes) < 2:
        raise DataError(f"training channel: {training} has {len(classes)} class folder; at least two are needed")

    def checked(channel: str, directory: Path) -> dict[str, list[Path]]:
        by_class, bad = _usable_images(channel, class_folders(channel, directory), warn)
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(f"{channel} channel: classes {unknown} are not among the training classes {list(classes)}")
        skipped.extend(bad)
        return by_class

    if validation is not None:
        validation_classes = checked("validation", validation)
    else:
        training_classes, validation_classes = stratified_split(training_classes, validation_split_ratio, seed)
        if not any(validation_classes.values()):
            raise DataError(
                f"training channel: too few images in {training} to split off a validation set; "
                "give a validation channel"
            )
    test_classes = checked("test", test) if test is not None else None
    return Splits(
        classes=classes,
        training=_labelled(classes, training_classes),
        validation=_labelled(classes, validation_classes),
        test=_labelled(classes, test_classes) if test_classes is not None else None,
        validation_from_training=validation is None,
        skipped=tuple(skipped),
    )
