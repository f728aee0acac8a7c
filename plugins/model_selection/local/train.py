"""Fine-tune one timm model on one data set: the local twin of one JumpStart training job.

    python -m model_selection.local.train --training DIR [--validation DIR] [--test DIR]
        --model-dir DIR --hyperparameters '{"model_id": "resnet18", "epochs": "10"}'

It prints its figures in the exact lines of the JumpStart TensorFlow image-classification
script, so SageMaker's metric regexes read them, and writes the weights, the class names
and `metrics.json` to the model folder. The SageMaker training-toolkit variables
(`SM_CHANNEL_*`, `SM_MODEL_DIR`, `SM_OUTPUT_DIR`, `SM_HPS`) are the defaults, and extra
`--name value` pairs are hyperparameters, so it also runs as a script-mode entry point.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from model_selection.local import features as feature_cache
from model_selection.local.data import DataError, LabelledImages, Splits, load_splits
from model_selection.local.evaluation import Task, TestTiming, predict, timed_predict
from model_selection.local.hyperparameters import HyperparameterError, Hyperparameters, parse_hyperparameters
from model_selection.local.images import ImageFiles, Preprocessing, resolve_image_size
from model_selection.local.model import BuiltModel, ModelError, build_model, check_model_id
from model_selection.metrics import format_number
from model_selection.weights import describe_weights

INPUT_ERRORS = (HyperparameterError, DataError, ModelError)
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def log(message: str = "") -> None:
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class Channels:
    training: Path
    validation: Path | None = None
    test: Path | None = None


@dataclasses.dataclass
class FitPlan:
    """What one epoch iterates and calls: the same loop serves all three ways of training."""

    train_batches: DataLoader
    validation_batches: DataLoader
    forward: Callable[[torch.Tensor], torch.Tensor]
    trainable: torch.nn.Module
    head: torch.nn.Module  # the top layer, whose weights the L2 regularizer penalises
    feature_cache: str


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    total_seconds: float


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HyperparameterError(f"hyperparameter device={requested!r}: no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HyperparameterError(f"hyperparameter device={requested!r}: MPS is not available")
    return device


def environment(device: torch.device) -> dict[str, Any]:
    """What makes two measurements comparable."""
    import timm

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def make_optimizer(hp: Hyperparameters, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    lr = hp.learning_rate
    if hp.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(hp.beta_1, hp.beta_2), eps=hp.epsilon)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=hp.momentum)
    if hp.optimizer == "nesterov":
        if hp.momentum <= 0:
            raise HyperparameterError("optimizer=nesterov needs momentum > 0")
        return torch.optim.SGD(parameters, lr=lr, momentum=hp.momentum, nesterov=True)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, alpha=hp.rho, eps=hp.epsilon, momentum=hp.momentum)
    if hp.optimizer == "adagrad":
        return torch.optim.Adagrad(
            parameters, lr=lr, initial_accumulator_value=hp.initial_accumulator_value, eps=hp.epsilon
        )
    return torch.optim.Adadelta(parameters, lr=lr, rho=hp.rho, eps=hp.epsilon)


def l2_penalty(module: torch.nn.Module, factor: float) -> Callable[[], torch.Tensor | float]:
    """Keras' kernel regularizer on the top layer: factor × the sum of squared weights."""
    weights = [parameter for name, parameter in module.named_parameters() if name.endswith("weight")]
    if factor == 0 or not weights:
        return lambda: 0.0
    return lambda: factor * sum(weight.pow(2).sum() for weight in weights)


def penalty_value(penalty: Callable[[], torch.Tensor | float]) -> float:
    with torch.no_grad():
        return float(penalty())


def train_one_epoch(
    plan: FitPlan,
    task: Task,
    optimizer: torch.optim.Optimizer,
    penalty: Callable[[], torch.Tensor | float],
    device: torch.device,
) -> dict[str, float]:
    """One pass over the training batches; metrics over the epoch's own outputs, as Keras reports them."""
    plan.trainable.train()
    outputs, labels = [], []
    for inputs, targets in plan.train_batches:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        result = plan.forward(inputs)
        loss = task.loss(result, targets) + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        outputs.append(result.detach())
        labels.append(targets)
    plan.trainable.eval()
    return task.metrics(torch.cat(outputs).cpu(), torch.cat(labels).cpu(), penalty_value(penalty))


def metric_line(prefix: str, metrics: Mapping[str, float]) -> str:
    return " ".join(f"- {prefix}{name}: {format_number(value)}" for name, value in metrics.items())


def fit(
    plan: FitPlan, task: Task, hp: Hyperparameters, optimizer: torch.optim.Optimizer, device: torch.device
) -> FitResult:
    """Train with early stopping on the validation metric, then restore the best epoch's weights."""
    monitor = hp.eval_metric
    penalty = l2_penalty(plan.head, hp.regularizers_l2)
    best_score, best_epoch, best_state = None, 0, None
    best_train: dict[str, float] = {}
    best_validation: dict[str, float] = {}
    epochs_without_improvement = 0
    stopped_early = False
    epoch = 0
    started = time.perf_counter()
    for epoch in range(1, hp.epochs + 1):
        epoch_started = time.perf_counter()
        train_metrics = train_one_epoch(plan, task, optimizer, penalty, device)
        validation_metrics = task.metrics(*predict(plan.forward, plan.validation_batches, device), penalty_value(penalty))
        log(
            f"Epoch {epoch}/{hp.epochs} - {time.perf_counter() - epoch_started:.2f}s "
            f"{metric_line('', train_metrics)} {metric_line('val_', validation_metrics)}"
        )
        score = validation_metrics[monitor]
        if best_score is None or score - hp.early_stopping_min_delta > best_score:
            best_score, best_epoch = score, epoch
            best_train, best_validation = train_metrics, validation_metrics
            best_state = {name: value.detach().to("cpu", copy=True) for name, value in plan.trainable.state_dict().items()}
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if hp.early_stopping and epochs_without_improvement >= hp.early_stopping_patience:
                stopped_early = True
                log(f"Early stopping after epoch {epoch}: val_{monitor} did not improve for {epochs_without_improvement} epochs")
                break
    total_seconds = time.perf_counter() - started
    plan.trainable.load_state_dict(best_state)
    log(f"Setting weights to model with maximum val_{monitor} at epoch {best_epoch}/{hp.epochs}:")
    for name, value in best_train.items():
        log(f"- {name}: {format_number(value)}")
    for name, value in best_validation.items():
        log(f"- val_{name}: {format_number(value)}")
    return FitResult(best_epoch, epoch, stopped_early, best_train, best_validation, total_seconds)


def _loader(dataset, hp: Hyperparameters, device: torch.device, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(hp.random_seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=hp.batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=hp.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=hp.num_workers > 0,
    )


def backbone_features(
    built: BuiltModel,
    images: LabelledImages,
    hp: Hyperparameters,
    preprocessing: Preprocessing,
    device: torch.device,
    cache_dir: Path | None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The frozen backbone's features of `images`, their labels, and whether they came from `cache_dir`.

    The one way features are made: top-layer training and the screen (local/screen.py) both
    call it, so a model the screen kept finds its features in the cache under the same key.
    """
    built.model.eval()
    key = feature_cache.feature_key(hp.model_id, built.weights_identity, hp.random_seed, preprocessing, images)
    loader = _loader(ImageFiles(images, preprocessing.transform()), hp, device, shuffle=False)
    (features, labels), loaded = feature_cache.cached(cache_dir, key, lambda: predict(built.embed, loader, device))
    return features, labels, loaded


def plan_fit(
    built: BuiltModel,
    splits: Splits,
    hp: Hyperparameters,
    preprocessing: Preprocessing,
    device: torch.device,
    use_feature_cache: bool,
    feature_cache_dir: Path | None,
) -> FitPlan:
    """Full fine-tuning, the top layer through the frozen backbone, or the top layer on cached features."""
    model = built.model
    if not hp.train_only_top_layer:
        train_images = ImageFiles(splits.training, preprocessing.transform(hp))
        validation_images = ImageFiles(splits.validation, preprocessing.transform())
        return FitPlan(
            _loader(train_images, hp, device, shuffle=True),
            _loader(validation_images, hp, device, shuffle=False),
            model,
            model,
            built.classifier,
            "off",
        )

    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in built.classifier.parameters():
        parameter.requires_grad_(True)

    def classify(features: torch.Tensor) -> torch.Tensor:
        return built.classify(features, hp.dropout_rate)

    if not use_feature_cache:

        def through_backbone(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = built.embed(images)
            return classify(features)

        return FitPlan(
            _loader(ImageFiles(splits.training, preprocessing.transform(hp)), hp, device, shuffle=True),
            _loader(ImageFiles(splits.validation, preprocessing.transform()), hp, device, shuffle=False),
            through_backbone,
            built.classifier,
            built.classifier,
            "off",
        )

    sources = []

    def features_of(images: LabelledImages) -> TensorDataset:
        features, labels, loaded = backbone_features(built, images, hp, preprocessing, device, feature_cache_dir)
        sources.append("loaded" if loaded else "computed")
        return TensorDataset(features, labels)

    train_features = features_of(splits.training)
    validation_features = features_of(splits.validation)
    return FitPlan(
        _loader(train_features, hp, device, shuffle=True),
        _loader(validation_features, dataclasses.replace(hp, num_workers=0), device, shuffle=False),
        classify,
        built.classifier,
        built.classifier,
        "+".join(sorted(set(sources))),
    )


def resolve_train_only_top_layer(hp: Hyperparameters, built: BuiltModel) -> tuple[Hyperparameters, str]:
    """The user's choice if set; else JumpStart's default (top layer only) on pretrained weights,
    and full fine-tuning from random weights, where a random frozen backbone would learn nothing."""
    if hp.train_only_top_layer is not None:
        return hp, "set by the user"
    if built.pretrained:
        return dataclasses.replace(hp, train_only_top_layer=True), "unset; pretrained weights loaded, so only the top layer trains (JumpStart's default)"
    return dataclasses.replace(hp, train_only_top_layer=False), "unset; the model starts from random weights, so the whole model trains"


def refuse_top_layer_on_random_weights(hp: Hyperparameters, pretrained: bool) -> None:
    """train_only_top_layer=True on random weights freezes a random backbone: its features are noise
    for the task and the head learns next to nothing. Refused before anything trains, unless forced."""
    if not hp.train_only_top_layer or pretrained:
        return
    if hp.force_top_layer_on_random_weights:
        log(f"WARNING: train_only_top_layer=True on the random weights of {hp.model_id}, as forced by "
            "force_top_layer_on_random_weights=True: the head trains on a frozen random backbone")
        return
    if hp.pretrained == "false":
        raise HyperparameterError(
            f"train_only_top_layer=True with pretrained=false: only the top layer would train, on the frozen "
            f"features of a randomly initialised {hp.model_id}, which learns almost nothing. Use pretrained "
            "weights (pretrained=auto or true), or set train_only_top_layer=False to train the whole model "
            "(or force_top_layer_on_random_weights=True to run it anyway)"
        )
    raise ModelError(
        f"train_only_top_layer=True, but no pretrained weights could be loaded for {hp.model_id} "
        f"(pretrained={hp.pretrained} fell back to random weights): only the top layer would train, on the frozen "
        "features of a random backbone, which learns almost nothing. Provide the weights (weights_file, weights_dir "
        "or MODEL_SELECTION_WEIGHTS_DIR, or the hub cache), or set train_only_top_layer=False to train the whole "
        "model (or force_top_layer_on_random_weights=True to run it anyway)"
    )


def top_layer_description(built: BuiltModel, hp: Hyperparameters) -> str:
    head = ("new: Glorot-uniform kernel, zero bias (Keras Dense)" if built.new_head
            else "the pretrained weights' own classifier, kept")
    return (f"dropout {format_number(hp.dropout_rate)}, then the classifier ({head}); L2 "
            f"{format_number(hp.regularizers_l2)} on its kernel; label smoothing {format_number(hp.label_smoothing)}")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return total, trainable


def train(
    channels: Channels,
    raw_hyperparameters: Mapping[str, Any],
    model_dir: Path,
    feature_cache_dir: Path | None = None,
    use_feature_cache: bool | None = None,
) -> dict[str, Any]:
    """Check every input, train, restore the best epoch, test, and write the model folder.

    Returns what `metrics.json` holds. `use_feature_cache` None means: whenever only
    the top layer trains and there is no augmentation.
    """
    hp, ignored = parse_hyperparameters(raw_hyperparameters)
    check_model_id(hp.model_id)
    if hp.pretrained == "false" and not hp.force_top_layer_on_random_weights:  # before any data is read
        refuse_top_layer_on_random_weights(hp, pretrained=False)
    device = resolve_device(hp.device)
    splits = load_splits(
        channels.training, channels.validation, channels.test, hp.validation_split_ratio, hp.random_seed, warn=log
    )
    task = Task(num_classes=len(splits.classes), binary=hp.binary_mode, label_smoothing=hp.label_smoothing)
    if task.binary and task.num_classes != 2:
        raise HyperparameterError(f"binary_mode=True needs exactly two classes, the training channel has {task.num_classes}")
    if ignored:
        log(f"Ignoring SageMaker-reserved hyperparameters: {', '.join(sorted(ignored))}")
    if splits.skipped:
        log(f"Skipped {len(splits.skipped)} unreadable image(s); they are listed above and in metrics.json")
    log(
        f"Classes: {len(splits.classes)}; images: training {len(splits.training)}, validation {len(splits.validation)}"
        f"{' (split from training)' if splits.validation_from_training else ''}, "
        f"test {len(splits.test) if splits.test is not None else 0}"
    )

    built = build_model(hp, task.num_outputs)
    built.model.to(device)
    log(f"Model {hp.model_id}; weights: {describe_weights(built.weights)}; device: {device}")
    for warning in built.warnings:
        log(warning)
    refuse_top_layer_on_random_weights(hp, built.pretrained)
    hp, top_layer_reason = resolve_train_only_top_layer(hp, built)
    log(f"train_only_top_layer={hp.train_only_top_layer}: {top_layer_reason}")
    log(f"Top layer: {top_layer_description(built, hp)}")
    hp, image_size_reason = resolve_image_size(hp, built.model, built.pretrained)
    log(f"image_size={hp.image_size}: {image_size_reason}")
    preprocessing = Preprocessing.for_model(built.model, hp)
    if use_feature_cache is None:
        use_feature_cache = hp.train_only_top_layer and not hp.augmentation
    plan = plan_fit(built, splits, hp, preprocessing, device, use_feature_cache, feature_cache_dir)
    total, trainable = count_parameters(built.model)
    log(f"- Number of trainable parameters: {trainable}")
    log(f"- Number of non-trainable parameters: {total - trainable}")
    log(f"- Number of parameters: {total}")

    optimizer = make_optimizer(hp, [p for p in plan.trainable.parameters() if p.requires_grad])
    torch.manual_seed(hp.random_seed)
    result = fit(plan, task, hp, optimizer, device)
    log(f"- Total training duration: {format_number(result.total_seconds)} seconds")
    log(f"- Average training duration per epoch: {format_number(result.total_seconds / result.epochs_run)} seconds")

    metrics: dict[str, float] = {"num_params": total, "num_trainable_params": trainable, "num_non_trainable_params": total - trainable}
    metrics.update({f"train_{name}": value for name, value in result.train_metrics.items()})
    metrics.update({f"val_{name}": value for name, value in result.validation_metrics.items()})
    metrics["train_duration"] = result.total_seconds
    metrics["train_epoch_duration"] = result.total_seconds / result.epochs_run
    timing = None
    if splits.test is None:
        log("No test data channel was given: test metrics are not computed.")
    else:
        test_metrics, timing = evaluate_test(built.model, splits.test, task, hp, preprocessing, device)
        metrics.update({f"test_{name}": value for name, value in test_metrics.items()})
        metrics.update(
            test_evaluation_latency=timing.evaluation_latency,
            test_latency_per_sample=timing.latency_per_sample,
            test_throughput=timing.throughput,
        )

    summary = {
        "model_id": hp.model_id,
        "weights": built.weights,
        "weights_warnings": list(built.warnings),
        "train_only_top_layer": {"value": hp.train_only_top_layer, "reason": top_layer_reason},
        "top_layer": {"new": built.new_head, "description": top_layer_description(built, hp)},
        "image_size": {"value": hp.image_size, "reason": image_size_reason},
        "classes": list(splits.classes),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "metrics": metrics,
        "hyperparameters": hp.as_dict(),
        "ignored_hyperparameters": sorted(ignored),
        "feature_cache": plan.feature_cache,
        "skipped_images": [{"path": str(item.path), "reason": item.reason} for item in splits.skipped],
        "test_timing": None if timing is None else timing_description(timing, device),
        "environment": environment(device),
    }
    save_model_dir(model_dir, built.model, splits.classes, summary)
    return summary


def timing_description(timing: TestTiming, device: torch.device) -> dict[str, Any]:
    return {
        "per": "example",
        "batch_size": timing.batch_size,
        "device": str(device),
        "data_loading_included": False,
        "warm_up_batches": 1,
        "mode": "torch.inference_mode, model.eval()",
        "timed_examples": timing.examples,
    }


def evaluate_test(
    model: torch.nn.Module,
    images: LabelledImages,
    task: Task,
    hp: Hyperparameters,
    preprocessing: Preprocessing,
    device: torch.device,
) -> tuple[dict[str, float], TestTiming]:
    """The whole restored model on the test images, timed per example."""
    loader = _loader(ImageFiles(images, preprocessing.transform()), hp, device, shuffle=False)
    outputs, labels, timing = timed_predict(model, loader, device, hp.batch_size)
    penalty = penalty_value(l2_penalty(model.get_classifier(), hp.regularizers_l2))
    test_metrics = task.metrics(outputs, labels, penalty)
    for name, value in test_metrics.items():
        log(f"- Test {name}: {format_number(value)}")
    log(f"- Test evaluation latency: {format_number(timing.evaluation_latency)} seconds")
    log(f"- Average test latency per sample: {format_number(timing.latency_per_sample)} seconds")
    log(f"- Average test throughput: {format_number(timing.throughput)} examples per second")
    log(
        f"Test timing is per example: batch size {hp.batch_size}, device {device}, {torch.get_num_threads()} threads, "
        "model forward only (data loading excluded), after one warm-up batch, in inference mode"
    )
    return test_metrics, timing


def save_model_dir(model_dir: Path, model: torch.nn.Module, classes: Sequence[str], summary: dict[str, Any]) -> None:
    from safetensors.torch import save_model

    model_dir.mkdir(parents=True, exist_ok=True)
    save_model(copy.deepcopy(model).cpu(), str(model_dir / "model.safetensors"))
    (model_dir / "classes.json").write_text(json.dumps(list(classes), indent=1))
    (model_dir / "metrics.json").write_text(json.dumps(summary, indent=1))


def _load_hyperparameters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    candidate = Path(text)
    source = candidate.read_text() if not text.lstrip().startswith("{") and candidate.is_file() else text
    try:
        value = json.loads(source)
    except json.JSONDecodeError as error:
        raise HyperparameterError(f"--hyperparameters is neither a JSON object nor a JSON file: {error}") from error
    if not isinstance(value, dict):
        raise HyperparameterError("--hyperparameters must be a JSON object of name: value")
    return value


def _extra_pairs(extra: Sequence[str]) -> dict[str, str]:
    """Script mode passes hyperparameters as `--name value` pairs."""
    if len(extra) % 2 or not all(name.startswith("--") for name in extra[::2]):
        raise HyperparameterError(f"cannot read arguments {list(extra)} as --name value hyperparameter pairs")
    return {name[2:]: value for name, value in zip(extra[::2], extra[1::2])}


def parse_arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m model_selection.local.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--training", default=env.get("SM_CHANNEL_TRAINING"), help="training channel folder")
    parser.add_argument("--validation", default=env.get("SM_CHANNEL_VALIDATION"), help="validation channel folder")
    parser.add_argument("--test", default=env.get("SM_CHANNEL_TEST"), help="test channel folder")
    parser.add_argument("--model-dir", default=env.get("SM_MODEL_DIR"), help="where the trained model goes")
    parser.add_argument("--output-dir", default=env.get("SM_OUTPUT_DIR"), help="where a `failure` file goes")
    parser.add_argument("--hyperparameters", default=env.get("SM_HPS"), help="JSON object or JSON file")
    parser.add_argument("--feature-cache-dir", help="backbone features shared between trials")
    parser.add_argument("--no-feature-cache", action="store_true", help="push images through the frozen backbone every epoch")
    arguments, extra = parser.parse_known_args(argv)
    if not arguments.training:
        parser.error("--training (or SM_CHANNEL_TRAINING) is required")
    if not arguments.model_dir:
        parser.error("--model-dir (or SM_MODEL_DIR) is required")
    hyperparameters = {**_load_hyperparameters(arguments.hyperparameters), **_extra_pairs(extra)}
    return arguments, hyperparameters


def _write_failure(output_dir: str | None, message: str) -> None:
    """SageMaker shows the `failure` file as the job's FailureReason."""
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "failure").write_text(message)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = None
    try:
        arguments, hyperparameters = parse_arguments(argv)
        channels = Channels(
            Path(arguments.training),
            Path(arguments.validation) if arguments.validation else None,
            Path(arguments.test) if arguments.test else None,
        )
        train(
            channels,
            hyperparameters,
            Path(arguments.model_dir),
            feature_cache_dir=Path(arguments.feature_cache_dir) if arguments.feature_cache_dir else None,
            use_feature_cache=False if arguments.no_feature_cache else None,
        )
    except INPUT_ERRORS as error:
        message = f"{type(error).__name__}: {error}"
        print(f"ERROR: {message}", file=sys.stderr, flush=True)
        _write_failure(arguments.output_dir if arguments else None, message)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - any crash must reach the job's FailureReason
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}"
        _write_failure(arguments.output_dir if arguments else None, message)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
