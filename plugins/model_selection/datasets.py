"""Data sets in the JumpStart layout: split a folder of class folders, upload it to S3, prepare Caltech-256.

The JumpStart TensorFlow image-classification algorithm reads each channel (`training`,
`validation`, `test`) as a folder (S3 prefix) with one sub-folder per class of .jpg/.jpeg/.png
files; labels are the sorted folder names. So every channel must hold the same class folders,
or label ids would differ between channels: `split` puts every class in every split, and
`upload` refuses channels whose classes differ.

    python -m model_selection.datasets split SOURCE DESTINATION [--fractions 0.7 0.15 0.15] [--seed 0] [--link]
    python -m model_selection.datasets upload LOCAL_ROOT s3://bucket/prefix [--aws-conn-id aws_default] [--name NAME]
    python -m model_selection.datasets caltech256 DESTINATION [--archive 256_ObjectCategories.tar] [--keep-clutter]
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

    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            print(summary(split(args.source, args.destination, args.fractions, args.seed, copy=not args.link)))
        elif args.command == "upload":
            uris = upload(args.local_root, args.s3_uri, args.aws_conn_id)
            print(json.dumps({"name": args.name or Path(args.local_root).resolve().name, **uris}, indent=2))
        else:
            print(summary(caltech256(args.destination, url=args.url, archive=args.archive, fractions=args.fractions,
                                     seed=args.seed, keep_clutter=args.keep_clutter)))
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
