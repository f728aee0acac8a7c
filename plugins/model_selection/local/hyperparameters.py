"""The JumpStart image-classification hyperparameters, parsed as SageMaker passes them.

SageMaker hands every hyperparameter over as a string ("True", "0.001"); the training
toolkit's `SM_HPS` may hold native JSON values. Both are accepted. Every problem is
collected and reported at once, before anything is loaded or trained.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any


class HyperparameterError(ValueError):
    """One or more hyperparameters are unknown, of the wrong type or out of range."""


# Names SageMaker adds to every job's hyperparameters; they are not the algorithm's.
RESERVED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")

OPTIMIZERS = ("adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta")
EVAL_METRICS = ("accuracy", "precision", "recall", "auc", "prc")
FLIP_MODES = ("horizontal_and_vertical", "horizontal", "vertical", "None")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3")
REINITIALIZE_CHOICES = ("Auto", "True", "False")
PRETRAINED_CHOICES = ("auto", "true", "false")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")
AUTO = "auto"
# image_size=auto on a model that starts from random weights: nothing ties it to the size its
# architecture was trained at, and full fine-tuning at 224 px is too slow on a CPU (the demo, CI);
# 32 px keeps such a run small and fast.
RANDOM_INIT_IMAGE_SIZE = 32
MIN_IMAGE_SIZE = 8


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError("expected True or False")


def _integer(low: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("expected an integer")
            value = int(value)
        number = int(str(value).strip())
        if low is not None and number < low:
            raise ValueError(f"must be at least {low}")
        return number

    return parse


def _real(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = float(str(value).strip())
        if number != number:
            raise ValueError("expected a number, got NaN")
        below = number <= low if low_open else number < low
        above = high is not None and (number >= high if high_open else number > high)
        if below or above:
            left = "(" if low_open else "["
            right = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
            raise ValueError(f"must be in {left}{low}, {right}")
        return number

    return parse


def _choice(options: tuple[str, ...], case_sensitive: bool = True) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        for option in options:
            if text == option or (not case_sensitive and text.lower() == option.lower()):
                return option
        raise ValueError(f"must be one of {', '.join(options)}")

    return parse


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        if value is None or str(value).strip() in ("", "None", "none"):
            return None
        return parse(value)

    return parse_optional


def _image_size(value: Any) -> int | str:
    """Pixels, or auto (also when unset): the pretrained weights' own size, else RANDOM_INIT_IMAGE_SIZE."""
    if value is None or str(value).strip().lower() in ("", "none", AUTO):
        return AUTO
    try:
        return _integer(low=MIN_IMAGE_SIZE)(value)
    except ValueError as error:
        raise ValueError(f"expected auto or an integer of at least {MIN_IMAGE_SIZE}") from error


def _device(value: Any) -> str:
    text = str(value).strip().lower()
    if not DEVICE_PATTERN.match(text):
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
    return text


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Defaults are the JumpStart TensorFlow image-classification algorithm's own."""

    model_id: str | None = None
    # None: unset, decided when the model is built (True when pretrained weights loaded, else False).
    train_only_top_layer: bool | None = None
    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    momentum: float = 0.9
    epsilon: float = 1e-07
    rho: float = 0.95
    initial_accumulator_value: float = 0.1
    reinitialize_top_layer: str = "Auto"
    early_stopping: bool = False
    early_stopping_patience: int = 5
    early_stopping_min_delta: float = 0.0
    dropout_rate: float = 0.2
    regularizers_l2: float = 0.0001
    label_smoothing: float = 0.1
    image_resize_interpolation: str = "bilinear"
    augmentation: bool = False
    augmentation_random_flip: str = "horizontal_and_vertical"
    augmentation_random_rotation: float = 0.2
    augmentation_random_zoom: float = 0.1
    binary_mode: bool = False
    eval_metric: str = "accuracy"
    validation_split_ratio: float = 0.2
    random_seed: int = 123
    # Local additions: which timm model, where its weights come from, and how to run it.
    pretrained: str = "auto"
    weights_file: str | None = None
    weights_dir: str | None = None
    # auto: the pretrained weights' input size (pretrained_image_size if given, else timm's pretrained_cfg),
    # RANDOM_INIT_IMAGE_SIZE from random weights; resolved to pixels once the weights are known.
    image_size: int | str = AUTO
    # The input size the pretrained weights were made for, where it is not timm's pretrained_cfg input_size
    # (the plan sets it from the JumpStart map for JumpStart ids); used only when image_size is auto.
    pretrained_image_size: int | None = None
    device: str = "auto"
    num_workers: int = 0
    # train_only_top_layer=True on random weights trains a head on a frozen random backbone, which learns
    # almost nothing: the trainer refuses it unless this is True (for experiments that want exactly that).
    force_top_layer_on_random_weights: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def chosen_image_size(hyperparameters: Hyperparameters, pretrained: bool) -> tuple[int | None, str]:
    """The input size in pixels, and why; None: the pretrained weights' own size, from timm's pretrained_cfg."""
    if hyperparameters.image_size != AUTO:
        return int(hyperparameters.image_size), "set by the user (image_size)"
    if not pretrained:
        return RANDOM_INIT_IMAGE_SIZE, (f"image_size=auto and the model starts from random weights: "
                                        f"{RANDOM_INIT_IMAGE_SIZE} px, the small fast setting")
    if hyperparameters.pretrained_image_size is not None:
        return hyperparameters.pretrained_image_size, ("image_size=auto: the input size the pretrained weights were "
                                                      "made for (pretrained_image_size, from the JumpStart map)")
    return None, "image_size=auto: the pretrained weights' own input size (timm's pretrained_cfg)"


PARSERS: dict[str, Callable[[Any], Any]] = {
    "model_id": _text,
    "train_only_top_layer": _optional(_boolean),
    "epochs": _integer(low=1),
    "batch_size": _integer(low=1),
    "optimizer": _choice(OPTIMIZERS, case_sensitive=False),
    "learning_rate": _real(0.0, low_open=True, high=None),
    "beta_1": _real(0.0, 1.0),
    "beta_2": _real(0.0, 1.0),
    "momentum": _real(0.0, 1.0),
    "epsilon": _real(0.0, low_open=True, high=None),
    "rho": _real(0.0, 1.0),
    "initial_accumulator_value": _real(0.0, high=None),
    "reinitialize_top_layer": _choice(REINITIALIZE_CHOICES, case_sensitive=False),
    "early_stopping": _boolean,
    "early_stopping_patience": _integer(low=0),
    "early_stopping_min_delta": _real(0.0, high=None),
    "dropout_rate": _real(0.0, 1.0),
    "regularizers_l2": _real(0.0, high=None),
    "label_smoothing": _real(0.0, 1.0),
    "image_resize_interpolation": _choice(INTERPOLATIONS),
    "augmentation": _boolean,
    "augmentation_random_flip": _choice(FLIP_MODES),
    "augmentation_random_rotation": _real(0.0, 1.0, high_open=False),
    "augmentation_random_zoom": _real(0.0, 1.0),
    "binary_mode": _boolean,
    "eval_metric": _choice(EVAL_METRICS),
    "validation_split_ratio": _real(0.0, 1.0, low_open=True),
    "random_seed": _integer(low=0),
    "pretrained": _choice(PRETRAINED_CHOICES, case_sensitive=False),
    "weights_file": _optional(_text),
    "weights_dir": _optional(_text),
    "image_size": _image_size,
    "pretrained_image_size": _optional(_integer(low=MIN_IMAGE_SIZE)),
    "device": _device,
    "num_workers": _integer(low=0),
    "force_top_layer_on_random_weights": _boolean,
}


def parse_hyperparameters(raw: Mapping[str, Any]) -> tuple[Hyperparameters, list[str]]:
    """Typed hyperparameters, and the SageMaker-reserved names that were ignored.

    Raises HyperparameterError naming every unknown name and every bad value.
    """
    values: dict[str, Any] = {}
    ignored: list[str] = []
    problems: list[str] = []
    for name, value in raw.items():
        if name.startswith(RESERVED_PREFIXES):
            ignored.append(name)
            continue
        parse = PARSERS.get(name)
        if parse is None:
            problems.append(f"unknown hyperparameter {name!r}")
            continue
        try:
            values[name] = parse(value)
        except ValueError as error:
            problems.append(f"hyperparameter {name}={value!r}: {error}")
    if problems:
        raise HyperparameterError("; ".join(problems))
    hyperparameters = Hyperparameters(**values)
    if hyperparameters.eval_metric != "accuracy" and not hyperparameters.binary_mode:
        raise HyperparameterError(
            f"hyperparameter eval_metric={hyperparameters.eval_metric!r} needs binary_mode=True: "
            "multi-class problems are evaluated by accuracy"
        )
    return hyperparameters, ignored
