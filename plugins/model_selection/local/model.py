"""A timm model with a classification head sized to the data set, and where its weights came from.

The backbone is everything up to the pre-logits features; the top layer is the
classifier alone, as in the JumpStart script's `train_only_top_layer`.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from model_selection.local.hyperparameters import Hyperparameters

RANDOM_INIT = "random-init"


class ModelError(ValueError):
    """The model id, its weights or its head cannot be set up as asked."""


@dataclasses.dataclass
class BuiltModel:
    model: torch.nn.Module
    weights: str

    @property
    def classifier(self) -> torch.nn.Module:
        return self.model.get_classifier()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-logits features of the frozen backbone (the caller sets eval mode)."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def classify(self, features: torch.Tensor, dropout_rate: float) -> torch.Tensor:
        """The trainable top layer: dropout, then the classifier, as timm's own head does."""
        return self.classifier(F.dropout(features, p=dropout_rate, training=self.classifier.training))


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

    arguments: dict = {"num_classes": num_outputs, "drop_rate": hyperparameters.dropout_rate}
    if hyperparameters.image_size is not None and timm.models.get_pretrained_cfg_value(model_id, "fixed_input_size"):
        arguments["img_size"] = hyperparameters.image_size
    torch.manual_seed(hyperparameters.random_seed)

    if mode == "false":
        return BuiltModel(timm.create_model(model_id, pretrained=False, **arguments), RANDOM_INIT)
    overlay = {"file": str(Path(weights_file).resolve())} if weights_file else None
    try:
        model = timm.create_model(model_id, pretrained=True, pretrained_cfg_overlay=overlay, **arguments)
    except Exception as error:  # noqa: BLE001 - hub, file and format errors all mean "no pretrained weights"
        message = f"could not load pretrained weights for {model_id!r}: {type(error).__name__}: {error}"
        if mode == "true":
            raise ModelError(message) from error
        print(
            f"WARNING: {message}\nWARNING: pretrained=auto, so {model_id} starts from RANDOM weights; "
            "its accuracy will not reflect transfer learning",
            file=sys.stderr,
            flush=True,
        )
        torch.manual_seed(hyperparameters.random_seed)
        return BuiltModel(timm.create_model(model_id, pretrained=False, **arguments), RANDOM_INIT)

    config = model.pretrained_cfg
    source = overlay["file"] if overlay else f"timm:{config.get('hf_hub_id') or config.get('url') or model_id}"
    built = BuiltModel(model, source)
    _set_up_head(built, hyperparameters.reinitialize_top_layer, num_outputs, config.get("num_classes"))
    return built


def _set_up_head(built: BuiltModel, reinitialize: str, num_outputs: int, pretrained_classes: int | None) -> None:
    """timm gives a fresh head when the class count differs; keep or reset it otherwise."""
    same_size = pretrained_classes == num_outputs
    if reinitialize == "False" and not same_size:
        raise ModelError(
            f"reinitialize_top_layer=False keeps the pretrained head, which has {pretrained_classes} outputs, "
            f"but this data set needs {num_outputs}"
        )
    if reinitialize == "True" and same_size:
        built.model.reset_classifier(num_outputs)
