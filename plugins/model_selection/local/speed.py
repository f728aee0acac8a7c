"""The measurement pass: every trained model's speed, timed after training under identical conditions.

A training job's own test throughput is taken at whatever moment the machine is busy with,
over a small test set after one warm-up batch, so it moves a lot between runs and the
frontier moves with it. This pass times the saved weights of every completed local model in
one process, with all the machine's trainer slots held (no local trainer runs meanwhile),
the same threads, device and batch size, in interleaved rounds (round r times every model
once, in an order shuffled with a fixed seed), as timm's benchmark script does: model.eval(),
torch.inference_mode, warm-up first, CUDA synchronised around what is timed. It reports:

- latency at batch size 1: median and 90th percentile of every timed forward pass (seconds);
- throughput at the study's batch size: forward passes only, on real preprocessed test images
  held in memory; the median of the rounds, and their minimum and maximum as the spread;
- end-to-end throughput at the same batch size: decoding and preprocessing the test images
  (the trainer's own ImageFiles and Preprocessing, in this process) plus the forward pass;
  median, minimum and maximum of the rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model_selection.frontier import COMPLETED
from model_selection.local.data import LabelledImages, class_folders, decode_problem
from model_selection.local.evaluation import Task, synchronize
from model_selection.local.hyperparameters import Hyperparameters, parse_hyperparameters
from model_selection.local.images import ImageFiles, Preprocessing
from model_selection.local.jobstore import JobStore, now
from model_selection.local.model import build_model
from model_selection.local.supervisor import MachineSlots, local_path, machine_trainer_cap, trainer_threads
from model_selection.local.train import environment, resolve_device

LOG = logging.getLogger(__name__)

DEFAULT_ROUNDS = 7
DEFAULT_ROUND_SECONDS = 0.5  # per regime, per model, per round
DEFAULT_WARM_UP_PASSES = 3
DEFAULT_SLOT_WAIT_SECONDS = 3600.0
SLOT_POLL_SECONDS = 1.0
SLOT_LOG_SECONDS = 30.0
BATCHES_OF_TEST_IMAGES = 4  # the end-to-end regime cycles through at most this many batches of test images


class MachineBusy(TimeoutError):
    """The trainer slots stayed taken for longer than the pass may wait."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every model of one pass is timed with."""

    batch_size: int
    rounds: int
    round_seconds: float
    warm_up_passes: int
    device: torch.device
    threads: int
    seed: int


def load_trained_model(
    model_dir: Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, Preprocessing, Hyperparameters]:
    """The model a local trainer saved (model.safetensors, classes.json, metrics.json), in eval mode on `device`.

    The architecture is rebuilt by the trainer's own `build_model` from random weights (so no
    hub or weights folder is needed), then the saved weights are loaded strictly.
    """
    from safetensors.torch import load_model

    model_dir = Path(model_dir)
    summary = json.loads((model_dir / "metrics.json").read_text())
    classes = json.loads((model_dir / "classes.json").read_text())
    trained, _ = parse_hyperparameters(summary["hyperparameters"])
    rebuild = dataclasses.replace(trained, pretrained="false", weights_file=None, weights_dir=None)
    task = Task(num_classes=len(classes), binary=trained.binary_mode, label_smoothing=trained.label_smoothing)
    model = build_model(rebuild, task.num_outputs).model
    load_model(model, str(model_dir / "model.safetensors"), device="cpu")
    model.to(device).eval()
    return model, Preprocessing.for_model(model, trained), trained


def sample_test_images(test_dir: Path, count: int) -> LabelledImages:
    """Up to `count` readable test images, taken at even steps through the folder's sorted classes."""
    by_class = class_folders("test", Path(test_dir))
    pairs = [(path, label) for label, paths in enumerate(by_class.values()) for path in paths]
    step = max(1, len(pairs) // count)
    chosen = [(path, label) for path, label in pairs[::step] if decode_problem(path) is None][:count]
    if not chosen:
        raise ValueError(f"test folder {test_dir} holds no readable image to time the models with")
    return LabelledImages(tuple(path for path, _ in chosen), tuple(label for _, label in chosen))


@dataclasses.dataclass
class TimedModel:
    """One model under measurement: its inputs, how many passes make a round, and the figures so far."""

    model: torch.nn.Module
    batch: torch.Tensor  # batch_size real preprocessed test images, on the device
    loaded_batches: Iterator[tuple[torch.Tensor, Any]]  # decoded and preprocessed as they are drawn
    input_size: tuple[int, ...]
    repeats: dict[str, int] = dataclasses.field(default_factory=dict)
    latencies: list[float] = dataclasses.field(default_factory=list)
    throughputs: list[float] = dataclasses.field(default_factory=list)
    end_to_end: list[float] = dataclasses.field(default_factory=list)


def _forever(loader: DataLoader) -> Iterator[tuple[torch.Tensor, Any]]:
    """Batches of the loader, starting over at its end, each one decoded afresh."""
    while True:
        yield from loader


def _held_batch(images: ImageFiles, batch_size: int, device: torch.device) -> torch.Tensor:
    """`batch_size` preprocessed images (the sample repeated when it is smaller), held in memory."""
    return torch.stack([images[index % len(images)][0] for index in range(batch_size)]).to(device)


def _latency_round(timed: TimedModel, repeats: int, device: torch.device) -> list[float]:
    """Seconds of each single-image forward pass, each synchronised on its own."""
    seconds = []
    for index in range(repeats):
        image = timed.batch[index % len(timed.batch)].unsqueeze(0)
        synchronize(device)
        started = time.perf_counter()
        timed.model(image)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def _throughput_round(timed: TimedModel, repeats: int, device: torch.device) -> float:
    """Images per second of `repeats` forward passes of the held batch."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        timed.model(timed.batch)
    synchronize(device)
    return repeats * len(timed.batch) / (time.perf_counter() - started)


def _end_to_end_round(timed: TimedModel, repeats: int, device: torch.device) -> float:
    """Images per second of `repeats` batches, each decoded, preprocessed, moved and passed forward."""
    images = 0
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        inputs, _ = next(timed.loaded_batches)
        timed.model(inputs.to(device, non_blocking=True))
        images += len(inputs)
    synchronize(device)
    return images / (time.perf_counter() - started)


REGIMES: dict[str, Callable[[TimedModel, int, torch.device], Any]] = {
    "latency": _latency_round,
    "throughput": _throughput_round,
    "end_to_end": _end_to_end_round,
}


def _warm_up(timed: TimedModel, settings: Settings) -> None:
    """Warm-up passes of each regime, the last one timed to choose how many passes fill a round."""
    for regime, run_round in REGIMES.items():
        for _ in range(settings.warm_up_passes - 1):
            run_round(timed, 1, settings.device)
        synchronize(settings.device)
        started = time.perf_counter()
        run_round(timed, 1, settings.device)
        synchronize(settings.device)
        one_pass = max(time.perf_counter() - started, 1e-6)
        timed.repeats[regime] = max(1, math.ceil(settings.round_seconds / one_pass))


def _prepare(model_dir: Path, sample: LabelledImages, settings: Settings) -> TimedModel:
    model, preprocessing, _ = load_trained_model(model_dir, settings.device)
    images = ImageFiles(sample, preprocessing.transform())
    timed = TimedModel(
        model=model,
        batch=_held_batch(images, settings.batch_size, settings.device),
        loaded_batches=_forever(DataLoader(images, batch_size=settings.batch_size, num_workers=0)),
        input_size=tuple(preprocessing.input_size),
    )
    with torch.inference_mode():
        _warm_up(timed, settings)
    return timed


@torch.inference_mode()
def _one_round(timed: TimedModel, device: torch.device) -> None:
    timed.latencies.extend(_latency_round(timed, timed.repeats["latency"], device))
    timed.throughputs.append(_throughput_round(timed, timed.repeats["throughput"], device))
    timed.end_to_end.append(_end_to_end_round(timed, timed.repeats["end_to_end"], device))


def method_text(settings: Settings) -> str:
    """How the figures were measured, in one paragraph a report can show."""
    return (
        f"measurement pass after training: the saved weights of every completed model timed in one process, "
        f"{settings.rounds} interleaved rounds (model order shuffled each round, seed {settings.seed}), "
        f"{settings.threads} threads on {settings.device}; model.eval(), "
        f"torch.inference_mode, {settings.warm_up_passes} warm-up passes per regime; "
        f"throughput: forward passes only at batch size {settings.batch_size} on real preprocessed test images "
        f"held in memory, median of the rounds (spread: minimum and maximum of the rounds); "
        f"latency: batch size 1, median and 90th percentile of every timed pass; "
        f"end to end: decoding and preprocessing the test images plus the forward pass at batch size "
        f"{settings.batch_size}, median of the rounds"
    )


def _figures(timed: TimedModel, common: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "throughput": float(np.median(timed.throughputs)),
        "throughput_low": min(timed.throughputs),
        "throughput_high": max(timed.throughputs),
        "latency_bs1_median": float(np.median(timed.latencies)),
        "latency_bs1_p90": float(np.percentile(timed.latencies, 90)),
        "end_to_end_throughput": float(np.median(timed.end_to_end)),
        "end_to_end_throughput_low": min(timed.end_to_end),
        "end_to_end_throughput_high": max(timed.end_to_end),
        "latency_passes": len(timed.latencies),
        "passes_per_round": dict(timed.repeats),
        "input_size": list(timed.input_size),
        **common,
    }


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set for the pass, and restored after it (the caller may be a long-lived worker)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_speed(
    model_dirs: Mapping[str, Path],
    test_dir: Path,
    batch_size: int,
    *,
    rounds: int = DEFAULT_ROUNDS,
    device: str = "auto",
    seed: int = 0,
    threads: int | None = None,
    round_seconds: float = DEFAULT_ROUND_SECONDS,
    warm_up_passes: int = DEFAULT_WARM_UP_PASSES,
) -> dict[str, dict[str, Any]]:
    """Figures per model id (see the module docstring); a model that cannot be loaded or run gets an `error` entry.

    `threads` None means every core this process may use, at most `OMP_NUM_THREADS`. The caller holds the
    machine (see `speed_pass_for_rows`).
    """
    if rounds < 1 or batch_size < 1 or warm_up_passes < 1:
        raise ValueError(
            f"rounds ({rounds}), batch_size ({batch_size}) and warm_up_passes ({warm_up_passes}) must be at least 1"
        )
    settings = Settings(batch_size, rounds, round_seconds, warm_up_passes, resolve_device(device),
                        threads or trainer_threads(1), seed)
    sample = sample_test_images(Path(test_dir), BATCHES_OF_TEST_IMAGES * batch_size)
    results: dict[str, dict[str, Any]] = {}
    timed: dict[str, TimedModel] = {}
    with _threads(settings.threads):
        for model_id, model_dir in model_dirs.items():
            try:
                timed[model_id] = _prepare(Path(model_dir), sample, settings)
            except Exception as error:  # noqa: BLE001 - one unloadable model must not cost the others their figures
                results[model_id] = _error(model_dir, "could not be loaded", error)
        results.update(_interleaved_rounds(timed, model_dirs, settings))
        common = {
            **{key: value for key, value in environment(settings.device).items()
               if key in ("device", "device_name", "threads")},
            "rounds": rounds,
            "batch_size": batch_size,
            "test_images": len(sample),
            "measured_at": now(),
            "method": method_text(settings),
        }
    for model_id, model_timing in timed.items():
        results[model_id] = {**_figures(model_timing, common), "model_dir": str(model_dirs[model_id])}
    return {model_id: results[model_id] for model_id in model_dirs}


def _interleaved_rounds(
    timed: dict[str, TimedModel], model_dirs: Mapping[str, Path], settings: Settings
) -> dict[str, dict[str, Any]]:
    """Every round times every model once, in an order shuffled with the seed; a model that fails is dropped
    (and removed from `timed`) with an error entry, which is returned."""
    errors: dict[str, dict[str, Any]] = {}
    order = list(timed)
    shuffle = random.Random(settings.seed)
    for round_number in range(1, settings.rounds + 1):
        shuffle.shuffle(order)
        LOG.info("speed round %d/%d: %s", round_number, settings.rounds, ", ".join(order))
        for model_id in list(order):
            try:
                _one_round(timed[model_id], settings.device)
            except Exception as error:  # noqa: BLE001 - e.g. out of memory at this batch size
                errors[model_id] = _error(model_dirs[model_id], f"failed in round {round_number}", error)
                order.remove(model_id)
                del timed[model_id]
    return errors


def _error(model_dir: Path, what: str, error: Exception) -> dict[str, Any]:
    LOG.warning("speed pass: %s %s: %s: %s", model_dir, what, type(error).__name__, error)
    return {"error": f"{model_dir} {what}: {type(error).__name__}: {error}", "model_dir": str(model_dir)}


@contextlib.contextmanager
def holding_all_trainer_slots(jobs_root: Path | str | None, wait_seconds: float) -> Iterator[int]:
    """Take every machine-wide trainer slot (waiting at most `wait_seconds`), so no local trainer starts meanwhile.

    Yields the number of slots held; raises MachineBusy if they stay taken. Supervisors that find
    no free slot simply wait, as they do for each other's trainers.
    """
    slots = MachineSlots(JobStore(jobs_root).root / "slots", machine_trainer_cap())
    held: list[int] = []
    deadline = time.monotonic() + wait_seconds
    next_log = time.monotonic()
    try:
        while len(held) < slots.count:
            slot = slots.try_acquire()
            if slot is not None:
                held.append(slot[1])
                continue
            if time.monotonic() >= deadline:
                raise MachineBusy(
                    f"the speed pass waited {wait_seconds:.0f} s for the machine's {slots.count} trainer slots in "
                    f"{slots.folder}, but local trainers still hold {slots.count - len(held)} of them"
                )
            if time.monotonic() >= next_log:
                LOG.info("speed pass: waiting for %d of %d trainer slots in %s (local trainers are running; "
                         "at most %.0f s more)",
                         slots.count - len(held), slots.count, slots.folder, deadline - time.monotonic())
                next_log = time.monotonic() + SLOT_LOG_SECONDS
            time.sleep(SLOT_POLL_SECONDS)
        yield slots.count
    finally:
        for descriptor in held:
            os.close(descriptor)


def local_model_dir(row: Mapping[str, Any]) -> Path | None:
    """The model folder of a completed local row, when it still exists on this machine."""
    artifacts = row.get("model_artifacts")
    if row.get("status") != COMPLETED or not isinstance(artifacts, str) or not artifacts.startswith("file://"):
        return None
    folder = Path(local_path(artifacts))
    return folder if folder.is_dir() else None


def speed_pass_for_rows(
    rows: Sequence[Mapping[str, Any]],
    test_dir: Path | str,
    batch_size: int,
    *,
    jobs_root: Path | str | None = None,
    slot_wait_seconds: float = DEFAULT_SLOT_WAIT_SECONDS,
    **measure: Any,
) -> dict[str, Any]:
    """One measurement pass over the study's rows; JSON-able, for the results store and `with_speed`.

    Measures every completed row whose `model_artifacts` is a `file://` folder that exists here,
    with all trainer slots of `jobs_root` (default: the local backend's) held. `measure` goes to
    `measure_speed` (rounds, device, seed, threads, round_seconds, warm_up_passes).
    Returns {"models": {model_id: figures}, "model_artifacts": {model_id: uri}, "not_measured": {model_id: why},
    "test_dir": ..., "batch_size": ...}.
    """
    folders = {row["model_id"]: folder for row in rows if (folder := local_model_dir(row)) is not None}
    not_measured = {
        row["model_id"]: "not a completed local model whose folder exists on this machine"
        for row in rows if row["model_id"] not in folders
    }
    test_dir = Path(local_path(str(test_dir)))
    models: dict[str, dict[str, Any]] = {}
    if folders:
        with holding_all_trainer_slots(jobs_root, slot_wait_seconds) as slots:
            LOG.info("speed pass: %d model(s), %d trainer slot(s) held, batch size %d", len(folders), slots, batch_size)
            models = measure_speed(folders, test_dir, batch_size, **measure)
        for figures in models.values():
            if "error" not in figures:
                figures["trainer_slots_held"] = slots
                figures["method"] += f"; all {slots} local trainer slot(s) held, so no local trainer ran meanwhile"
    return {
        "models": models,
        "model_artifacts": {row["model_id"]: row["model_artifacts"] for row in rows if row["model_id"] in folders},
        "not_measured": not_measured,
        "test_dir": str(test_dir),
        "batch_size": batch_size,
    }
