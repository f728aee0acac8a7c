"""Transfer learning, proved offline: weights learned on one data set make the top layer alone learn another.

The "pretrained" weights are made here: a tiny model is trained fully on data set A, and the
trainer's own model.safetensors is copied into a weights folder as `<model id>.safetensors`.
Data set B has other classes built from the same visual vocabulary (horizontal white stripes
at fixed rows, on a random colour per image, so colour tells nothing): A's classes are single
stripes, B's are pairs of A's stripes. A backbone that learned to see A's stripes gives
features in which B's pairs are separable; a random backbone does not. Both B runs train the
top layer only, with the same seed, data and hyperparameters; only the weights differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, run_trainer
from PIL import Image

from model_selection.local.hyperparameters import parse_hyperparameters
from model_selection.local.model import WEIGHTS_DIR_VARIABLE, sha256_of, weights_folder
from model_selection.local.train import Channels, train

SIZE = 16
A_CLASSES = [(0,), (3,), (6,), (9,), (12,), (14,)]
B_CLASSES = [(0, 6), (3, 9), (6, 12), (9, 14), (0, 12), (3, 14)]


# Noisy, low-contrast stripes: a random backbone's features blur them; one trained on A's stripes does not.
NOISE = 60.0
STRIPE = 80.0


def write_stripes(root: Path, classes: list[tuple[int, ...]], per_class: int, seed: int) -> Path:
    """Class k: bright two-pixel stripes at rows classes[k], on noise around a random colour per image."""
    rng = np.random.default_rng(seed)
    for label, rows in enumerate(classes):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            colour = rng.integers(0, 200, size=3)
            pixels = colour + rng.normal(0, NOISE, size=(SIZE, SIZE, 3))
            for row in rows:
                pixels[row : row + 2, :, :] += STRIPE
            pixels = np.clip(pixels, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"image_{index:03d}.png")
    return root


def channels(root: Path, classes: list[tuple[int, ...]], per_class: int, seed: int, test: int = 16) -> dict[str, Path]:
    return {
        "training": write_stripes(root / "training", classes, per_class, seed),
        "validation": write_stripes(root / "validation", classes, max(per_class // 2, 4), seed + 1),
        "test": write_stripes(root / "test", classes, test, seed + 2),
    }


def arguments(data: dict[str, Path], model_dir: Path, hyperparameters: dict[str, str]) -> list[str]:
    listed = [argument for name, path in data.items() for argument in (f"--{name}", str(path))]
    return [*listed, "--model-dir", str(model_dir), "--hyperparameters", json.dumps(hyperparameters)]


def test_loaded_weights_make_the_top_layer_learn_a_new_task(tmp_path):
    model_id = TINY_MODEL["model_id"]
    # 1. "Pretrain": the whole model on data set A, with the trainer itself.
    data_a = channels(tmp_path / "a", A_CLASSES, per_class=24, seed=10)
    source = train(Channels(**data_a), {**TINY_MODEL, "epochs": "10", "learning_rate": "0.01",
                                        "train_only_top_layer": "False"}, tmp_path / "model_a")
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    weights = weights_dir / f"{model_id}.safetensors"
    shutil.copyfile(tmp_path / "model_a" / "model.safetensors", weights)

    # 2. Data set B, top layer only: loaded from the weights folder (as a user runs it), and from random weights.
    data_b = channels(tmp_path / "b", B_CLASSES, per_class=8, seed=20)
    common = {**TINY_MODEL, "epochs": "20", "learning_rate": "0.01", "train_only_top_layer": "True"}
    result = run_trainer(arguments(data_b, tmp_path / "pretrained", {**common, "pretrained": "auto"}),
                         env={WEIGHTS_DIR_VARIABLE: str(weights_dir)})
    assert result.returncode == 0, result.stderr
    pretrained = json.loads((tmp_path / "pretrained" / "metrics.json").read_text())
    random = train(Channels(**data_b), {**common, "pretrained": "false", "force_top_layer_on_random_weights": "True"},
                   tmp_path / "random")

    assert pretrained["weights"] == {"source": "file", "path": str(weights.resolve()), "sha256": sha256_of(weights)}
    assert random["weights"] == {"source": "random init"}
    pretrained_accuracy = pretrained["metrics"]["test_accuracy"]
    random_accuracy = random["metrics"]["test_accuracy"]
    print(f"A test accuracy {source['metrics']['test_accuracy']:.3f}; B top layer only: "
          f"pretrained {pretrained_accuracy:.3f}, random {random_accuracy:.3f}")
    assert pretrained_accuracy >= random_accuracy + 0.25, (pretrained_accuracy, random_accuracy)


def test_weights_folder_order_and_precedence(tmp_path, monkeypatch):
    from model_selection.local.model import weights_file_in

    hyperparameters, _ = parse_hyperparameters({**TINY_MODEL, "weights_dir": str(tmp_path / "from_hp")})
    monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(tmp_path / "from_env"))
    assert weights_folder(hyperparameters) == tmp_path / "from_hp"
    assert weights_folder(parse_hyperparameters(TINY_MODEL)[0]) == tmp_path / "from_env"
    monkeypatch.delenv(WEIGHTS_DIR_VARIABLE)
    assert weights_folder(parse_hyperparameters(TINY_MODEL)[0]) is None
    folder = tmp_path / "weights"
    folder.mkdir()
    assert weights_file_in(folder, "resnet18.a1_in1k") is None
    for name in ("resnet18.bin", "resnet18.pth", "resnet18.a1_in1k.pth"):
        (folder / name).write_bytes(b"")
    assert weights_file_in(folder, "resnet18.a1_in1k") == (folder / "resnet18.a1_in1k.pth").resolve()
    assert weights_file_in(folder, "resnet18") == (folder / "resnet18.pth").resolve()


def test_unset_train_only_top_layer_is_told_apart_from_false():
    assert parse_hyperparameters({})[0].train_only_top_layer is None
    assert parse_hyperparameters({"train_only_top_layer": "False"})[0].train_only_top_layer is False
    assert parse_hyperparameters({"train_only_top_layer": "True"})[0].train_only_top_layer is True


def test_auto_without_hub_or_file_trains_everything_from_random_weights_loudly(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_VARIABLE, raising=False)
    data = channels(tmp_path / "b", B_CLASSES, per_class=4, seed=1, test=2)
    (tmp_path / "empty").mkdir()
    result = run_trainer(arguments(data, tmp_path / "model", {**TINY_MODEL, "pretrained": "auto", "epochs": "1",
                                                              "weights_dir": str(tmp_path / "empty")}))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert summary["weights"] == {"source": "random init"}
    assert "starts from RANDOM weights" in result.stdout and "LocalEntryNotFoundError" in result.stdout
    assert any("RANDOM weights" in warning for warning in summary["weights_warnings"])
    assert summary["train_only_top_layer"]["value"] is False
    assert "train_only_top_layer=False: unset; the model starts from random weights" in result.stdout


def test_pretrained_true_with_an_empty_weights_folder_fails(tmp_path):
    from model_selection.local.model import ModelError, build_model

    (tmp_path / "empty").mkdir()
    hyperparameters, _ = parse_hyperparameters({**TINY_MODEL, "pretrained": "true", "weights_dir": str(tmp_path / "empty")})
    with pytest.raises(ModelError, match="no test_efficientnet.* in weights folder"):
        build_model(hyperparameters, 3)
