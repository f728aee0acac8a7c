"""Trainer speed as ratios measured side by side in one run (the machines are shared and noisy).

    python benchmarks/bench_trainer.py [--model resnet50] [--image-size 64] [--only abcd]

(a) a top-layer-only training run of 10 epochs / one backbone forward pass over all its images  (goal <= 1.5)
(b) full fine-tuning images per second / a plain PyTorch loop's                                  (goal >= 0.9)
(c) the measurement pass's median throughput (model_selection.local.speed) / torch.utils.benchmark.Timer
    in a fresh process, same saved model, batch size and threads                                   (goal 0.85-1.15)
(d) a local top-layer-only tuning job, 2 learning rates x 10 epochs, create to Completed
    / one backbone forward pass over all its images                                              (goal <= 1.5)
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from make_digits_dataset import write_digits  # noqa: E402

from model_selection.local.data import LabelledImages, load_splits  # noqa: E402
from model_selection.local.evaluation import Task  # noqa: E402
from model_selection.local.hyperparameters import parse_hyperparameters  # noqa: E402
from model_selection.local.images import ImageFiles, Preprocessing  # noqa: E402
from model_selection.local.model import build_model  # noqa: E402
from model_selection.local.speed import load_trained_model, measure_speed  # noqa: E402
from model_selection.local.train import Channels, FitPlan, l2_penalty, make_optimizer, train, train_one_epoch  # noqa: E402


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def all_images(splits) -> LabelledImages:
    parts = [splits.training, splits.validation, splits.test]
    return LabelledImages(
        tuple(path for part in parts for path in part.paths), tuple(label for part in parts for label in part.labels)
    )


def forward_pass_seconds(channels: Channels, hyperparameters: dict) -> float:
    """One backbone forward pass over every image of the run (training, validation and test)."""
    hp, _ = parse_hyperparameters(hyperparameters)
    splits = load_splits(channels.training, channels.validation, channels.test, 0.2, 0)
    built = build_model(hp, len(splits.classes))
    model = built.model.eval()
    loader = torch.utils.data.DataLoader(
        ImageFiles(all_images(splits), Preprocessing.for_model(model, hp).transform()), batch_size=hp.batch_size
    )

    @torch.inference_mode()
    def forward_all() -> None:
        for images, _ in loader:
            model(images)

    return seconds(forward_all)


def top_layer_ratio(channels: Channels, base: dict, out: Path) -> tuple[float, float, float]:
    """(a): the whole trainer run, scanning, saving and test evaluation included."""
    hyperparameters = {**base, "train_only_top_layer": "True", "epochs": "10"}
    run_seconds = seconds(lambda: train(channels, hyperparameters, out / "top-layer"))
    forward_seconds = forward_pass_seconds(channels, hyperparameters)
    return run_seconds / forward_seconds, run_seconds, forward_seconds


def tuning_job_ratio(channels: Channels, base: dict, out: Path) -> tuple[float, float, float]:
    """(d): a whole local tuning job (supervisor, two trainer processes, shared feature cache)."""
    from model_selection.backends.local import LocalSageMakerClient
    from model_selection.metrics import metric_definitions
    from model_selection.tuning_request import LOCAL_ROLE_ARN, build_tuning_request, learning_rate_values

    static = {**base, "train_only_top_layer": "True", "epochs": "10"}
    client = LocalSageMakerClient(out / "jobs")
    request = build_tuning_request(
        "bench-top-layer", static_hyperparameters=static, learning_rates=learning_rate_values(0.001, [1.0, 0.2]),
        channels={"training": channels.training.as_uri(), "validation": channels.validation.as_uri(),
                  "test": channels.test.as_uri()},
        role_arn=LOCAL_ROLE_ARN, output_path=(out / "jobs").as_uri(),
        metric_definitions=metric_definitions(len(list(channels.training.iterdir())), binary=False),
    )

    def run_job() -> None:
        client.create_hyper_parameter_tuning_job(**request)
        while client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="bench-top-layer")[
            "HyperParameterTuningJobStatus"
        ] in ("InProgress", "Stopping"):
            time.sleep(0.2)

    job_seconds = seconds(run_job)
    status = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="bench-top-layer")
    assert status["HyperParameterTuningJobStatus"] == "Completed", status.get("FailureReason")
    forward_seconds = forward_pass_seconds(channels, static)
    return job_seconds / forward_seconds, job_seconds, forward_seconds


def full_fine_tuning_ratio(channels: Channels, base: dict, epochs: int = 6) -> tuple[float, float, float]:
    """(b): the trainer's epoch function against a plain loop, same model, batch size and data, interleaved."""
    hp, _ = parse_hyperparameters({**base, "train_only_top_layer": "False", "label_smoothing": "0.1"})
    splits = load_splits(channels.training, channels.validation, None, 0.2, 0)
    task = Task(len(splits.classes), binary=False, label_smoothing=hp.label_smoothing)
    device = torch.device("cpu")

    def fresh():
        built = build_model(hp, task.num_outputs)
        loader = torch.utils.data.DataLoader(
            ImageFiles(splits.training, Preprocessing.for_model(built.model, hp).transform()),
            batch_size=hp.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
        )
        return built, loader

    built, loader = fresh()
    plan = FitPlan(loader, loader, built.model, built.model, built.classifier, "off")
    optimizer = make_optimizer(hp, list(built.model.parameters()))
    penalty = l2_penalty(built.classifier, hp.regularizers_l2)
    plain_model, plain_loader = fresh()
    plain_model = plain_model.model
    plain_optimizer = make_optimizer(hp, list(plain_model.parameters()))

    def plain_epoch() -> None:
        plain_model.train()
        for images, labels in plain_loader:
            loss = F.cross_entropy(plain_model(images), labels, label_smoothing=hp.label_smoothing)
            plain_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            plain_optimizer.step()

    def trainer_epoch() -> None:
        train_one_epoch(plan, task, optimizer, penalty, device)

    trainer_epoch(), plain_epoch()  # warm-up
    trainer_seconds = plain_seconds = 0.0
    for epoch in range(epochs):  # alternate which goes first, so drift hits both alike
        if epoch % 2:
            plain_seconds += seconds(plain_epoch)
            trainer_seconds += seconds(trainer_epoch)
        else:
            trainer_seconds += seconds(trainer_epoch)
            plain_seconds += seconds(plain_epoch)
    images = epochs * len(splits.training)
    trainer_rate, plain_rate = images / trainer_seconds, images / plain_seconds
    return trainer_rate / plain_rate, trainer_rate, plain_rate


def throughput_ratio(channels: Channels, base: dict, out: Path) -> tuple[float, dict, tuple[float, float]]:
    """(c): the measurement pass's median throughput against torch.utils.benchmark.Timer in a fresh process,
    on the same saved model folder, batch size, threads and device. The Timer runs before and after the
    pass and their geometric mean is the reference, so a machine whose load drifts meanwhile skews neither."""
    hyperparameters = {**base, "train_only_top_layer": "True", "epochs": "1"}
    model_dir = out / "throughput"
    train(channels, hyperparameters, model_dir)
    batch_size = parse_hyperparameters(hyperparameters)[0].batch_size
    threads, device = os.cpu_count() or 1, "cuda" if torch.cuda.is_available() else "cpu"
    before = fresh_process(timer_throughput, model_dir, batch_size, threads, device)
    figures = measure_speed({"model": model_dir}, channels.test, batch_size, device=device, threads=threads)["model"]
    after = fresh_process(timer_throughput, model_dir, batch_size, threads, device)
    return figures["throughput"] / math.sqrt(before * after), figures, (before, after)


def fresh_process(function, *arguments):
    """`function(*arguments)` in a newly started Python process: no state shared with this one."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        return fresh.submit(function, *arguments).result()


def timer_throughput(model_dir: Path, batch_size: int, threads: int, device: str) -> float:
    """Images per second by torch.utils.benchmark.Timer's blocked_autorange, on random inputs of the model's size."""
    from torch.utils import benchmark

    model, preprocessing, _ = load_trained_model(model_dir, device)
    inputs = torch.randn(batch_size, *preprocessing.input_size, device=device)
    timer = benchmark.Timer("model(inputs)", globals={"model": model, "inputs": inputs}, num_threads=threads)
    with torch.inference_mode():
        measurement = timer.blocked_autorange(min_run_time=5.0)
    return batch_size / measurement.median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="model for (a) and (c)")
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--fine-tune-model", default="resnet10t", help="model for (b)")
    parser.add_argument("--tuning-image-size", default="128", help="image size for (d)")
    parser.add_argument("--only", default="abcd", help="which ratios to measure, e.g. --only c (default: abcd)")
    arguments = parser.parse_args()
    if not arguments.only or set(arguments.only) - set("abcd"):
        parser.error(f"--only takes letters among a, b, c, d; got {arguments.only!r}")
    with tempfile.TemporaryDirectory() as work:
        data = write_digits(Path(work) / "digits")
        channels = Channels(data / "training", data / "validation", data / "test")
        # Random weights cost the same compute as real ones, and these are timings: the top layer on a
        # random backbone is forced, since the trainer refuses it otherwise (it learns nothing useful).
        base = {"model_id": arguments.model, "pretrained": "false", "image_size": arguments.image_size,
                "force_top_layer_on_random_weights": "True"}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits data set (1,797 images)")
        if "a" in arguments.only:
            ratio, run, forward = top_layer_ratio(channels, base, Path(work))
            print(f"(a) top-layer run of 10 epochs / one forward pass, {arguments.model}@{arguments.image_size}: "
                  f"{ratio:.2f} ({run:.1f}s / {forward:.1f}s; goal <= 1.5)")
        if "b" in arguments.only:
            fine_tune = {**base, "model_id": arguments.fine_tune_model, "image_size": "32"}
            ratio, trainer_rate, plain_rate = full_fine_tuning_ratio(channels, fine_tune)
            print(f"(b) full fine-tuning images/s, trainer / plain loop, {arguments.fine_tune_model}@32: "
                  f"{ratio:.2f} ({trainer_rate:.0f} / {plain_rate:.0f}; goal >= 0.9)")
        if "c" in arguments.only:
            ratio, figures, (before, after) = throughput_ratio(channels, base, Path(work))
            print(f"(c) measurement pass median throughput / torch.utils.benchmark.Timer in a fresh process before and "
                  f"after it, {arguments.model}@{arguments.image_size}: {ratio:.2f} ({figures['throughput']:.0f} "
                  f"[rounds {figures['throughput_low']:.0f}-{figures['throughput_high']:.0f}] / {before:.0f}, {after:.0f} "
                  "images/s; goal 0.85-1.15)")
        if "d" in arguments.only:
            ratio, job, forward = tuning_job_ratio(channels, {**base, "image_size": arguments.tuning_image_size}, Path(work))
            print(f"(d) local tuning job, 2 learning rates x 10 epochs, top layer only / one forward pass, "
                  f"{arguments.model}@{arguments.tuning_image_size}: {ratio:.2f} ({job:.1f}s / {forward:.1f}s; goal <= 1.5)")


if __name__ == "__main__":
    main()
