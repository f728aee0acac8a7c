"""The screen job's source: what a training job needs to run the project's screen code.

Pure python, no torch: the Airflow worker that launches the screen builds this archive and
stages it as the job's `sagemaker_submit_directory`. The training toolkit (SageMaker's PyTorch
image, or the local backend's runner, `local/training_job.py`) extracts it into its code folder,
installs `requirements.txt` (SageMaker only: the local python has them already) and runs
`python screen_job.py` there, which imports only the `model_selection` package shipped beside it.

The archive is byte-for-byte reproducible (sorted members, zero times and owners), so the same
candidates and code always stage the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCREEN_PROGRAM = "screen_job.py"
SCORES_FILE = "screen.json"
SOURCE_ARCHIVE = "sourcedir.tar.gz"
CANDIDATES_FILE = "candidates.json"
REQUIREMENTS_FILE = "requirements.txt"

EVERY_IMAGE = "all"  # the `sample_per_class` hyperparameter's value for no sample: every image

PACKAGE_DIR = Path(__file__).resolve().parent
PROGRAM_TEXT = "from model_selection.local.screen import main\n\nmain()\n"
# What SageMaker's PyTorch training image lacks, pinned as in requirements-local.txt (a test holds them
# equal): that file is not in the Airflow image that builds this archive.
SHIPPED_REQUIREMENTS = ("timm==1.0.31", "safetensors")


def sample_hyperparameter(per_class: int | None) -> str:
    """The job's `sample_per_class` hyperparameter (strings only) for a sample size; None: every image."""
    return EVERY_IMAGE if per_class is None else str(int(per_class))


def sample_setting(value: Any) -> int | None:
    """A `sample_per_class` hyperparameter back as a sample size (None: every image, also when not given),
    as the toolkit hands it over: a string, or JSON-decoded in SM_HPS. ValueError names a bad one."""
    if value is None or value == EVERY_IMAGE:
        return None
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"hyperparameter sample_per_class must be a whole number of at least 1 or "
                         f"{EVERY_IMAGE!r}, got {value!r}")
    return int(value)


def package_files() -> Iterator[tuple[str, bytes]]:
    """(archive name, contents) of every .py file of the `model_selection` package, caches left out."""
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield f"model_selection/{path.relative_to(PACKAGE_DIR).as_posix()}", path.read_bytes()


def source_files(candidates: list[dict[str, Any]]) -> dict[str, bytes]:
    """Every member of the archive by its name: program, package, requirements and candidates."""
    return {
        SCREEN_PROGRAM: PROGRAM_TEXT.encode(),
        REQUIREMENTS_FILE: "".join(f"{line}\n" for line in SHIPPED_REQUIREMENTS).encode(),
        CANDIDATES_FILE: (json.dumps(candidates, indent=1, sort_keys=True) + "\n").encode(),
        **dict(package_files()),
    }


def source_archive(candidates: list[dict[str, Any]]) -> bytes:
    """The screen job's `sourcedir.tar.gz` for `candidates` ({"model_id", "static_hyperparameters"}).

    Members sorted by name, times zero, owners root: equal inputs give equal bytes.
    """
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, data in sorted(source_files(candidates).items()):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                member.mode = 0o644
                archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
