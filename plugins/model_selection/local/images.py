"""Image files to tensors with the timm model's own preprocessing.

Size, mean and std come from `timm.data.resolve_data_config`; the resize follows the
JumpStart script (straight to the input size, with `image_resize_interpolation`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from model_selection.local.data import LabelledImages
from model_selection.local.hyperparameters import AUTO, Hyperparameters, chosen_image_size

INTERPOLATION_MODES = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "nearest": transforms.InterpolationMode.NEAREST,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "area": transforms.InterpolationMode.BOX,
    "lanczos3": transforms.InterpolationMode.LANCZOS,
}
FLIPS = {
    "horizontal_and_vertical": (True, True),
    "horizontal": (True, False),
    "vertical": (False, True),
    "None": (False, False),
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What turns a file into the model's input; part of the feature-cache key."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @classmethod
    def for_model(cls, model: torch.nn.Module, hyperparameters: Hyperparameters) -> "Preprocessing":
        import timm.data

        overrides: dict[str, Any] = {}
        if hyperparameters.image_size != AUTO:
            overrides["input_size"] = (3, hyperparameters.image_size, hyperparameters.image_size)
        config = timm.data.resolve_data_config(overrides, model=model)
        return cls(
            input_size=tuple(config["input_size"]),
            mean=tuple(float(value) for value in config["mean"]),
            std=tuple(float(value) for value in config["std"]),
            interpolation=hyperparameters.image_resize_interpolation,
        )

    def transform(self, hyperparameters: Hyperparameters | None = None) -> transforms.Compose:
        """Evaluation transform, or the training one when augmentation is asked for."""
        steps: list[Any] = [transforms.Resize(self.input_size[1:], interpolation=INTERPOLATION_MODES[self.interpolation])]
        if hyperparameters is not None and hyperparameters.augmentation:
            horizontal, vertical = FLIPS[hyperparameters.augmentation_random_flip]
            if horizontal:
                steps.append(transforms.RandomHorizontalFlip())
            if vertical:
                steps.append(transforms.RandomVerticalFlip())
            zoom = hyperparameters.augmentation_random_zoom
            steps.append(
                transforms.RandomAffine(
                    degrees=hyperparameters.augmentation_random_rotation * 360.0,
                    scale=(1.0 - zoom, 1.0 + zoom),
                )
            )
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(steps)


def resolve_image_size(
    hyperparameters: Hyperparameters, model: torch.nn.Module, pretrained: bool
) -> tuple[Hyperparameters, str]:
    """`image_size` in pixels (auto resolved now that the weights are known), and why that size."""
    import timm.data

    size, reason = chosen_image_size(hyperparameters, pretrained)
    if size is None:
        size = int(timm.data.resolve_data_config({}, model=model)["input_size"][-1])
    return dataclasses.replace(hyperparameters, image_size=size), reason


class ImageFiles(Dataset):
    """Decodes each image as RGB and applies a transform."""

    def __init__(self, images: LabelledImages, transform: transforms.Compose):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.images.paths[index]) as image:
            tensor = self.transform(image.convert("RGB"))
        return tensor, self.images.labels[index]
