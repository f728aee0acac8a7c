"""Data sets in the JumpStart layout: split a folder of class folders, upload it to S3, prepare Caltech-256.

The JumpStart TensorFlow image-classification algorithm reads each channel (`training`,
`validation`, `test`) as a folder (S3 prefix) with one sub-folder per class of .jpg/.jpeg/.png
files; labels are the sorted folder names. So every channel must hold the same class folders,
or label ids would differ between channels: `split` puts every class in every split, and
`upload` refuses channels whose classes differ.

    python -m model_selection.datasets split SOURCE DESTINATION [--fractions 0.7 0.15 0.15] [--seed 0] [--link]
    python -m model_selection.datasets upload LOCAL_ROOT s3://bucket/prefix [--aws-conn-id aws_default] [--name NAME]
    python -m model_selection.datasets caltech256 DESTINATION [--archive 256_ObjectCategories.tar] [--keep-clutter]
    python -m model_selection.datasets photos DESTINATION [--per-class 48] [--validation-per-class 16]
        [--test-per-class 16] [--size 128] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

SPLITS = ("training", "validation", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar?download=1"
CALTECH256_ROOT = "256_ObjectCategories"
CALTECH256_CLUTTER = "257.clutter"


class DatasetError(ValueError):
    """Bad input, reported before anything is written."""


# -- reading a folder of class folders ------------------------------------------------------------
def _images(folder: Path) -> list[str]:
    """The image file names directly in `folder` (not in sub-folders; hidden files skipped), sorted."""
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(source: str | Path, exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """{class name: sorted image file names} for a folder of class folders; DatasetError when unusable."""
    root = Path(source)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    excluded = set(exclude)
    classes = {entry.name: _images(entry) for entry in sorted(root.iterdir())
               if entry.is_dir() and not entry.name.startswith(".") and entry.name not in excluded}
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected one sub-folder of images per class)")
    empty = [name for name, images in classes.items() if not images]
    if empty:
        raise DatasetError(f"{root}: class folders without .jpg/.jpeg/.png images: {', '.join(empty)}")
    return classes


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(value) for value in fractions)
    if len(values) != 3:
        raise DatasetError(f"fractions {list(fractions)}: need three (training, validation, test)")
    if any(not math.isfinite(value) or value < 0 for value in values):
        raise DatasetError(f"fractions {list(values)}: each must be a number >= 0")
    if values[0] <= 0:
        raise DatasetError(f"fractions {list(values)}: the training fraction must be > 0")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DatasetError(f"fractions {list(values)} sum to {sum(values):g}, not 1")
    return values  # type: ignore[return-value]


def allocate(count: int, fractions: Sequence[float]) -> list[int]:
    """Images per split for one class: largest remainders, then at least one in every split with a fraction > 0."""
    shares = [count * fraction for fraction in fractions]
    sizes = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - sizes[i]), i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    for i, fraction in enumerate(fractions):
        if fraction > 0 and sizes[i] == 0:
            donor = max(range(len(sizes)), key=lambda j: (sizes[j], -j))
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes


# -- split ----------------------------------------------------------------------------------------
def split(source: str | Path, destination: str | Path, fractions: Sequence[float] = (0.7, 0.15, 0.15),
          seed: int = 0, copy: bool = True, exclude: Iterable[str] = ()) -> dict[str, Path]:
    """Stratified, seeded training/validation/test splits of a folder of class folders.

    Every class is in every split whose fraction is > 0; a class with fewer images than that
    (fewer than 3 with the default fractions) is refused, since a channel without one of the
    classes would give the others different labels. The shuffle of a class depends only on the
    seed, the class name and its file names. `copy=False` hard-links the images (copying where
    the file system cannot link). The destination must not exist; the splits are written to a
    temporary sibling folder and renamed into place at the end, so a failure leaves nothing.
    Returns {split: folder} for the splits written.
    """
    fractions = check_fractions(fractions)
    source, destination = Path(source), Path(destination)
    if destination.exists():
        raise DatasetError(f"{destination}: already exists; choose a new destination (nothing is overwritten)")
    classes = class_folders(source, exclude)
    needed = sum(1 for fraction in fractions if fraction > 0)
    small = [f"{name} ({len(images)})" for name, images in classes.items() if len(images) < needed]
    if small:
        raise DatasetError(f"{source}: every split needs every class, so each class needs at least {needed} images; "
                           f"too few in: {', '.join(small)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        for name, images in classes.items():
            order = list(images)
            random.Random(f"{seed}/{name}").shuffle(order)
            start = 0
            for split_name, size in zip(SPLITS, allocate(len(order), fractions)):
                if size == 0:
                    continue
                folder = staging / split_name / name
                folder.mkdir(parents=True)
                for file_name in sorted(order[start:start + size]):
                    _place(source / name / file_name, folder / file_name, copy)
                start += size
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: destination / name for name, fraction in zip(SPLITS, fractions) if fraction > 0}


def _place(source: Path, target: Path, copy: bool) -> None:
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    shutil.copy2(source, target)


# -- upload ---------------------------------------------------------------------------------------
def channels(local_root: str | Path) -> dict[str, dict[str, list[str]]]:
    """{split: {class: images}} of a split data set; DatasetError unless its channels hold the same classes."""
    root = Path(local_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    found = {name: class_folders(root / name) for name in SPLITS if (root / name).is_dir()}
    if "training" not in found:
        raise DatasetError(f"{root}: no training folder (expected {', '.join(SPLITS)} folders of class folders)")
    labels = sorted(found["training"])
    for name, classes in found.items():
        if sorted(classes) != labels:
            missing = sorted(set(labels) - set(classes))
            extra = sorted(set(classes) - set(labels))
            raise DatasetError(f"{root / name}: classes differ from training (missing {missing}, extra {extra}); "
                               "labels are the sorted folder names, so every channel needs the same classes")
    return found


def parse_s3_uri(s3_uri: str) -> tuple[str, str]:
    if not s3_uri.startswith("s3://"):
        raise DatasetError(f"{s3_uri!r}: not an s3:// URI")
    bucket, _, prefix = s3_uri[len("s3://"):].partition("/")
    if not bucket:
        raise DatasetError(f"{s3_uri!r}: no bucket")
    return bucket, prefix.strip("/")


def upload(local_root: str | Path, s3_uri: str, aws_conn_id: str | None = "aws_default") -> dict[str, str]:
    """Uploads a split data set to `<prefix>/<split>/<class>/<file>` with the Amazon provider's S3Hook.

    Refuses a prefix that already holds objects. Returns {split: "s3://bucket/prefix/split/"},
    the channel URIs for the DAG's `dataset` Param.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    found = channels(local_root)
    bucket, prefix = parse_s3_uri(s3_uri)
    base = f"{prefix}/" if prefix else ""
    hook = S3Hook(aws_conn_id=aws_conn_id)
    existing = hook.list_keys(bucket_name=bucket, prefix=base, max_items=1)
    if existing:
        raise DatasetError(f"s3://{bucket}/{base}: already holds objects (e.g. {existing[0]}); choose a new prefix")
    root = Path(local_root)
    for split_name, classes in found.items():
        for name, images in classes.items():
            for file_name in images:
                hook.load_file(filename=str(root / split_name / name / file_name),
                               key=f"{base}{split_name}/{name}/{file_name}", bucket_name=bucket, replace=False)
    return {split_name: f"s3://{bucket}/{base}{split_name}/" for split_name in found}


# -- Caltech-256 ----------------------------------------------------------------------------------
def check_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's members, or DatasetError naming the first that is not a plain file or folder inside it."""
    members = archive.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
            raise DatasetError(f"archive member {member.name!r} would be written outside the destination; refused")
        if not (member.isfile() or member.isdir()):
            raise DatasetError(f"archive member {member.name!r} is not a plain file or folder (link or device); refused")
    return members


def extract(archive_path: str | Path, into: str | Path) -> None:
    """Extracts a tar archive after checking every member (no absolute paths, '..', links or devices)."""
    with tarfile.open(archive_path) as archive:
        members = check_members(archive)
        if hasattr(tarfile, "data_filter"):
            archive.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - Python before 3.11.4; the members were checked above
            archive.extractall(into, members=members)


def download(url: str, target: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def caltech256(destination: str | Path, url: str = CALTECH256_URL, archive: str | Path | None = None,
               fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
               keep_clutter: bool = False) -> dict[str, Path]:
    """Caltech-256 in the JumpStart layout: downloads `256_ObjectCategories.tar` (unless `archive` is given),
    extracts it safely and splits it. `257.clutter` (background images, not an object class) is left out
    unless `keep_clutter`, which leaves the 256 object classes `001.ak47` ... `256.toad`.
    """
    fractions = check_fractions(fractions)
    destination = Path(destination)
    if destination.exists():
        raise DatasetError(f"{destination}: already exists; choose a new destination (nothing is overwritten)")
    if archive is not None and not Path(archive).is_file():
        raise DatasetError(f"{archive}: no such archive")
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.caltech-", dir=destination.parent))
    try:
        if archive is None:
            archive = work / "256_ObjectCategories.tar"
            print(f"downloading {url} (about 1.2 GB)", file=sys.stderr)
            download(url, archive)
        extracted = work / "extracted"
        extract(archive, extracted)
        source = extracted / CALTECH256_ROOT if (extracted / CALTECH256_ROOT).is_dir() else extracted
        exclude = () if keep_clutter else (CALTECH256_CLUTTER,)
        # Hard links into the extracted copy: it is deleted below, the links stay.
        return split(source, destination, fractions=fractions, seed=seed, copy=False, exclude=exclude)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- photos that ship in packages -----------------------------------------------------------------
# Colour photos bundled with scikit-image (`skimage.data`, no download) and scikit-learn
# (`load_sample_image`): {class: (package, name)}. Left out: skimage's `cat` (the same photo as
# `chelsea`), grey images, and the ones skimage fetches with pooch over the network.
PHOTO_SOURCES = {
    "astronaut": ("skimage", "astronaut"),
    "chelsea": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "rocket": ("skimage", "rocket"),
    "motorcycle": ("skimage", "stereo_motorcycle"),
    "retina": ("skimage", "retina"),
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
}
# Each image is a square crop of this fraction of the photo's shorter side: small enough that a crop
# shows a part of the photo (a cat's ear, a patch of sky), not the whole scene, so classes share colours.
PHOTO_CROP = (0.15, 0.40)
# With `vary_light`, each crop's brightness, contrast and colour saturation are scaled by factors drawn
# from these ranges, as if each were a photo of the subject taken in other light: a model trained from
# scratch on a few images can then no longer tell the classes apart by their exact colours alone.
PHOTO_LIGHT = {"Brightness": (0.6, 1.4), "Contrast": (0.6, 1.4), "Color": (0.3, 1.7)}


def _photo(package: str, name: str):
    """One bundled photo as an RGB uint8 array (skimage and sklearn are imported only here)."""
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)


def photos(destination: str | Path, per_class: int = 48, validation_per_class: int = 16, test_per_class: int = 16,
           size: int = 128, seed: int = 0, vary_light: bool = False) -> dict[str, Path]:
    """A small real-photo data set that needs no network: one class per bundled photo (`PHOTO_SOURCES`).

    Each image is a random square crop (`PHOTO_CROP` of the shorter side, anywhere in the photo,
    mirrored half the time, with `vary_light` in other light: `PHOTO_LIGHT`) resized to `size` px and saved
    as PNG, in the JumpStart layout
    `DESTINATION/{training,validation,test}/<class>/<class>_NNNN.png`. The task is which photo a
    crop comes from: learnable, but not by colour alone. Crops depend only on the seed, the split and
    the class, so a seed always gives the same files. A split with 0 images per class is not written.
    The destination must not exist; the splits are written to a hidden sibling folder and renamed
    into place. Returns {split: folder} for the splits written.
    """
    import numpy as np
    from PIL import Image, ImageEnhance

    counts = dict(zip(SPLITS, (per_class, validation_per_class, test_per_class)))
    if per_class < 1 or min(counts.values()) < 0:
        raise DatasetError(f"images per class {list(counts.values())}: training needs at least 1, the others 0 or more")
    if size < 8:
        raise DatasetError(f"size {size}: at least 8 px")
    destination = Path(destination)
    if destination.exists():
        raise DatasetError(f"{destination}: already exists; choose a new destination (nothing is overwritten)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    mask = os.umask(0)
    os.umask(mask)
    staging.chmod(0o777 & ~mask)  # mkdtemp makes it private; the data set is for whoever runs the study
    try:
        for class_index, (name, (package, source)) in enumerate(PHOTO_SOURCES.items()):
            photo = Image.fromarray(_photo(package, source)).convert("RGB")
            shorter = min(photo.size)
            for split_index, split_name in enumerate(SPLITS):
                if counts[split_name] == 0:
                    continue
                rng = np.random.default_rng([seed, split_index, class_index])
                light = np.random.default_rng([seed, split_index, class_index, 1])  # the crops stay the same
                folder = staging / split_name / name
                folder.mkdir(parents=True)
                for number in range(counts[split_name]):
                    side = max(8, round(shorter * rng.uniform(*PHOTO_CROP)))
                    left = int(rng.integers(0, photo.size[0] - side + 1))
                    top = int(rng.integers(0, photo.size[1] - side + 1))
                    crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
                    if rng.random() < 0.5:
                        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                    if vary_light:
                        for enhancement, (low, high) in PHOTO_LIGHT.items():
                            crop = getattr(ImageEnhance, enhancement)(crop).enhance(light.uniform(low, high))
                    crop.save(folder / f"{name}_{number:04d}.png", optimize=False)
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: destination / name for name in SPLITS if counts[name] > 0}


# -- command line ---------------------------------------------------------------------------------
def summary(splits: dict[str, Path]) -> str:
    lines = []
    for name, folder in splits.items():
        classes = class_folders(folder)
        lines.append(f"{name}: {folder} ({len(classes)} classes, {sum(map(len, classes.values()))} images)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_selection.datasets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def split_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15),
                             metavar=("TRAINING", "VALIDATION", "TEST"))
        command.add_argument("--seed", type=int, default=0)

    to_split = commands.add_parser("split", help="a folder of class folders -> training/validation/test")
    to_split.add_argument("source")
    to_split.add_argument("destination")
    split_options(to_split)
    to_split.add_argument("--link", action="store_true", help="hard-link the images instead of copying them")

    to_upload = commands.add_parser("upload", help="a split data set -> s3://bucket/prefix/<split>/<class>/<file>")
    to_upload.add_argument("local_root")
    to_upload.add_argument("s3_uri")
    to_upload.add_argument("--aws-conn-id", default="aws_default")
    to_upload.add_argument("--name", help="data set name for the printed `dataset` Param (default: folder name)")

    to_caltech = commands.add_parser("caltech256", help="download and split Caltech-256")
    to_caltech.add_argument("destination")
    to_caltech.add_argument("--archive", help="a local 256_ObjectCategories.tar instead of downloading it")
    to_caltech.add_argument("--url", default=CALTECH256_URL)
    to_caltech.add_argument("--keep-clutter", action="store_true", help=f"keep {CALTECH256_CLUTTER} as a class")
    split_options(to_caltech)

    to_photos = commands.add_parser("photos", help="a small data set of crops of photos bundled with "
                                                   "scikit-image and scikit-learn (no network)")
    to_photos.add_argument("destination")
    to_photos.add_argument("--per-class", type=int, default=48, help="training images per class")
    to_photos.add_argument("--validation-per-class", type=int, default=16)
    to_photos.add_argument("--test-per-class", type=int, default=16)
    to_photos.add_argument("--size", type=int, default=128, help="side of each square image in pixels")
    to_photos.add_argument("--seed", type=int, default=0)
    to_photos.add_argument("--vary-light", action="store_true",
                           help="scale each crop's brightness, contrast and saturation at random (PHOTO_LIGHT)")

    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            print(summary(split(args.source, args.destination, args.fractions, args.seed, copy=not args.link)))
        elif args.command == "upload":
            uris = upload(args.local_root, args.s3_uri, args.aws_conn_id)
            print(json.dumps({"name": args.name or Path(args.local_root).resolve().name, **uris}, indent=2))
        elif args.command == "photos":
            print(summary(photos(args.destination, args.per_class, args.validation_per_class, args.test_per_class,
                                 args.size, args.seed, args.vary_light)))
        else:
            print(summary(caltech256(args.destination, url=args.url, archive=args.archive, fractions=args.fractions,
                                     seed=args.seed, keep_clutter=args.keep_clutter)))
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
