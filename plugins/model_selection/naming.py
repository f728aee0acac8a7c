"""Tuning-job names: stable, at most 32 characters, of SageMaker's allowed form, collision-free.

    ms{study}-{model slug}-{model digest}        e.g. ms3f9a1c-resnet18-a1-in1-0c7d2e91

`study` (6 hex) is the same for every model of a data set and configuration, so one
`NameContains` lists a study's jobs; the readable slug tells a person which model it is;
the digest (8 hex of dataset, configuration, model id, JumpStart version and attempt) tells models apart.
The same inputs always give the same name, so a retried or re-run launch finds the job
it already started instead of starting another.
"""

from __future__ import annotations

import hashlib
import re

MAX_TUNING_JOB_NAME = 32
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}$")
STUDY_KEY_LENGTH = 6
DIGEST_LENGTH = 8


def _digest(*parts: str, length: int) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def study_prefix(dataset: str, config_hash: str) -> str:
    return f"ms{_digest(dataset, config_hash, length=STUDY_KEY_LENGTH)}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tuning_job_name(dataset: str, config_hash: str, model_id: str, previous_attempts: int = 0,
                    model_version: str | None = None) -> str:
    """`previous_attempts` counts this model's ended attempts; a JumpStart version, when given, is part of the identity."""
    prefix = study_prefix(dataset, config_hash)
    identity = [dataset, config_hash, model_id, str(previous_attempts)] + ([model_version] if model_version else [])
    digest = _digest(*identity, length=DIGEST_LENGTH)
    room = MAX_TUNING_JOB_NAME - len(prefix) - len(digest) - 2
    readable = slug(model_id)[:room].strip("-") or "model"
    return f"{prefix}-{readable}-{digest}"
