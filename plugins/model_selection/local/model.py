"""A timm model with a classification head sized to the data set, and where its weights came from.

The backbone is everything up to the pre-logits features; the top layer is the
classifier alone, as in the JumpStart script's `train_only_top_layer`.

The top layer is the JumpStart TensorFlow script's: dropout, then a dense layer that
starts as Keras' `Dense` does (Glorot-uniform kernel, zero bias) whenever it is new for
the data set, not as timm's ImageNet classifier initialisation (see `initialise_head`).

Where pretrained weights come from (`pretrained`):

- `weights_file` set: that file, and nothing else (a missing or unloadable file fails).
- otherwise, in this order: the hub (timm's own `pretrained=True` and its cache);
  then a local weights folder (`weights_dir`, else the `MODEL_SELECTION_WEIGHTS_DIR`
  environment variable) holding `<model id>` or `<architecture>` followed by
  `.safetensors`, `.pth` or `.bin` (first match in that order), loaded through timm's
  pretrained-config overlay; then, for `auto` only, random weights with a loud warning.
  `true` fails where `auto` falls back; `false` always starts from random weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model_selection.local.hyperparameters import Hyperparameters, chosen_image_size

RANDOM_INIT = "random-init"
WEIGHTS_DIR_VARIABLE = "MODEL_SELECTION_WEIGHTS_DIR"
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".bin")


class ModelError(ValueError):
    """The model id, its weights or its head cannot be set up as asked."""


@dataclasses.dataclass
class BuiltModel:
    model: torch.nn.Module
    # {"source": "hub", "tag": ...} | {"source": "file", "path": ..., "sha256": ...} | {"source": "random init"}
    weights: dict[str, Any]
    warnings: list[str] = dataclasses.field(default_factory=list)
    # True: the top layer was made for this data set (Glorot-uniform kernel, zero bias);
    # False: it is the pretrained weights' own classifier, kept (reinitialize_top_layer).
    new_head: bool = True

    @property
    def pretrained(self) -> bool:
        return self.weights["source"] != "random init"

    @property
    def weights_identity(self) -> str:
        """One string naming the weights, for the feature cache key."""
        source = self.weights["source"]
        if source == "file":
            return f"file:{self.weights['path']}#sha256={self.weights['sha256']}"
        if source == "hub":
            return f"timm:{self.weights['tag']}"
        return RANDOM_INIT

    @property
    def classifier(self) -> torch.nn.Module:
        return self.model.get_classifier()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-logits features of the frozen backbone (the caller sets eval mode)."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def classify(self, features: torch.Tensor, dropout_rate: float) -> torch.Tensor:
        """The trainable top layer: dropout, then the classifier, as timm's own head does."""
        return self.classifier(F.dropout(features, p=dropout_rate, training=self.classifier.training))


def initialise_head(classifier: torch.nn.Module | tuple, seed: int) -> None:
    """Start the top layer as the JumpStart script's Keras `Dense` starts: Glorot-uniform kernel, zero bias.

    timm initialises a new classifier for ImageNet (EfficientNet: uniform ±1/√classes), which on a
    few classes of 1280 pretrained features gives logits of std 3-4 and a first loss far above
    ln(classes); Glorot-uniform (±√(6/(fan_in+fan_out))) starts near uniform predictions.
    Seeded by `seed`, so the same seed gives the same head whatever ran before.
    """
    generator = torch.Generator().manual_seed(seed)
    heads = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    layers = [
        module for head in heads for module in head.modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    with torch.no_grad():
        for layer in layers:
            torch.nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()


def check_model_id(model_id: str | None) -> None:
    """Fail with the closest known names when timm does not know the model or its tag."""
    import timm
    from timm.models import split_model_name_tag

    if not model_id:
        raise ModelError("hyperparameter model_id is required: a timm model name such as resnet18 or resnet18.a1_in1k")
    architecture, tag = split_model_name_tag(model_id)
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"unknown model id {model_id!r}: timm has no architecture {architecture!r}{hint}")
    if tag and model_id not in timm.list_pretrained(model_id):
        tags = timm.list_pretrained(f"{architecture}.*")
        raise ModelError(f"unknown model id {model_id!r}: timm has no pretrained tag {tag!r}; known: {tags}")


def weights_folder(hyperparameters: Hyperparameters) -> Path | None:
    """The `weights_dir` hyperparameter, else the MODEL_SELECTION_WEIGHTS_DIR environment variable."""
    folder = hyperparameters.weights_dir or os.environ.get(WEIGHTS_DIR_VARIABLE, "").strip() or None
    return Path(folder) if folder else None


def weights_file_in(folder: Path, model_id: str) -> Path | None:
    """`<model id>` then `<architecture>`, each as .safetensors, .pth, .bin: the first that exists."""
    from timm.models import split_model_name_tag

    names = dict.fromkeys([model_id, split_model_name_tag(model_id)[0]])
    for name in names:
        for suffix in WEIGHTS_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate.resolve()
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_unavailable(error: Exception) -> bool:
    """The failures that mean "the hub cannot give these weights": offline, unreachable, no cache, none published."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(error, LocalEntryNotFoundError):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith("No pretrained weights exist")


def build_model(hyperparameters: Hyperparameters, num_outputs: int) -> BuiltModel:
    """Create the model, load its pretrained weights as `pretrained` says, and size the head."""
    import timm

    model_id = hyperparameters.model_id
    check_model_id(model_id)
    mode = hyperparameters.pretrained
    weights_file = hyperparameters.weights_file
    if weights_file is not None:
        if mode == "false":
            raise ModelError("hyperparameter weights_file is set but pretrained=false: set pretrained to true or auto")
        if not Path(weights_file).is_file():
            raise ModelError(f"hyperparameter weights_file: {weights_file} is not a file")
    folder = weights_folder(hyperparameters)
    if hyperparameters.weights_dir is not None and not Path(hyperparameters.weights_dir).is_dir():
        raise ModelError(f"hyperparameter weights_dir: {hyperparameters.weights_dir} is not a folder")

    arguments: dict = {"num_classes": num_outputs, "drop_rate": hyperparameters.dropout_rate}
    # Models with a fixed input size (ViT, Swin, ...) are built for the size they will see.
    fixed_input_size = timm.models.get_pretrained_cfg_value(model_id, "fixed_input_size")

    def sized(pretrained: bool) -> dict:
        size, _ = chosen_image_size(hyperparameters, pretrained)
        return {**arguments, "img_size": size} if fixed_input_size and size is not None else arguments

    def random_model() -> torch.nn.Module:
        torch.manual_seed(hyperparameters.random_seed)
        return timm.create_model(model_id, pretrained=False, **sized(pretrained=False))

    def from_file(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
        torch.manual_seed(hyperparameters.random_seed)
        try:
            model = timm.create_model(
                model_id, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **sized(pretrained=True)
            )
        except Exception as error:  # noqa: BLE001 - a broken or mismatched file is the user's to fix
            raise ModelError(
                f"could not load pretrained weights for {model_id!r} from {path}: {type(error).__name__}: {error}"
            ) from error
        return model, {"source": "file", "path": str(path), "sha256": sha256_of(path)}

    def random_built(warnings: list[str] | None = None) -> BuiltModel:
        built = BuiltModel(random_model(), {"source": "random init"}, list(warnings or []))
        initialise_head(built.classifier, hyperparameters.random_seed)
        return built

    if mode == "false":
        return random_built()

    if weights_file is not None:
        model, weights = from_file(Path(weights_file).resolve())
    else:
        model, weights, hub_error = None, None, None
        torch.manual_seed(hyperparameters.random_seed)
        try:
            model = timm.create_model(model_id, pretrained=True, **sized(pretrained=True))
            config = model.pretrained_cfg
            tag = config.get("hf_hub_id") or config.get("url") or model_id
            weights = {"source": "hub", "tag": tag}
        except Exception as error:  # noqa: BLE001 - only "hub unavailable" falls through; the rest re-raise
            if not _hub_unavailable(error):
                raise
            hub_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if model is None:
            found = weights_file_in(folder, model_id) if folder is not None else None
            if found is not None:
                model, weights = from_file(found)
            else:
                where = (
                    f"no {model_id}{{{','.join(WEIGHTS_SUFFIXES)}}} in weights folder {folder}"
                    if folder is not None
                    else f"no weights folder (hyperparameter weights_dir or {WEIGHTS_DIR_VARIABLE})"
                )
                message = f"could not load pretrained weights for {model_id!r}: hub: {hub_error}; {where}"
                if mode == "true":
                    raise ModelError(message)
                warning = (
                    f"WARNING: {message}\nWARNING: pretrained=auto, so {model_id} starts from RANDOM weights; "
                    "its accuracy will not reflect transfer learning"
                )
                print(warning, file=sys.stderr, flush=True)
                return random_built([warning])

    built = BuiltModel(model, weights)
    _set_up_head(built, hyperparameters, num_outputs, model.pretrained_cfg.get("num_classes"))
    return built


def _set_up_head(built: BuiltModel, hyperparameters: Hyperparameters, num_outputs: int, pretrained_classes: int | None) -> None:
    """A new head (Glorot-uniform, zero bias) unless the pretrained one fits and is kept.

    timm already drops the pretrained classifier when the class count differs; Auto keeps it
    only when it has exactly the data set's number of outputs, True always replaces it.
    """
    reinitialize = hyperparameters.reinitialize_top_layer
    same_size = pretrained_classes == num_outputs
    if reinitialize == "False" and not same_size:
        raise ModelError(
            f"reinitialize_top_layer=False keeps the pretrained head, which has {pretrained_classes} outputs, "
            f"but this data set needs {num_outputs}"
        )
    built.new_head = reinitialize == "True" or not same_size
    if not built.new_head:
        return
    if same_size:
        built.model.reset_classifier(num_outputs)
    initialise_head(built.classifier, hyperparameters.random_seed)
