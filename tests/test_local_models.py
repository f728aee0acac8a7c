"""image_size auto on the real trainer (weights folder vs random init), and the report's mixed-weights warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import result_row

from model_selection.local.hyperparameters import RANDOM_INIT_IMAGE_SIZE, HyperparameterError, parse_hyperparameters
from model_selection.local.model import WEIGHTS_DIR_VARIABLE
from model_selection.local.train import Channels, train
from model_selection.report import write_report

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

# A model with a fixed input size: the size must also reach its construction (position embeddings).
MODEL_ID = "test_vit"
AUTO_RUN = {"model_id": MODEL_ID, "pretrained": "auto", "image_size": "auto", "batch_size": "8", "epochs": "1"}


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    """A weights folder holding `<model id>.safetensors`, as an air-gapped user would copy it in."""
    from safetensors.torch import save_model

    folder = tmp_path / "weights"
    folder.mkdir()
    save_model(timm.create_model(MODEL_ID, pretrained=False), str(folder / f"{MODEL_ID}.safetensors"))
    return folder


def run(dataset, tmp_path: Path, name: str, **hyperparameters: str) -> dict:
    return train(Channels(**dataset(classes=2, per_class=4)), {**AUTO_RUN, **hyperparameters}, tmp_path / name)


def test_image_size_auto_is_the_weights_own_size_and_32_from_random_weights(dataset, tmp_path, weights_dir, monkeypatch,
                                                                           capsys):
    timm_size = timm.models.get_pretrained_cfg(MODEL_ID).input_size[-1]
    monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(weights_dir))
    with_weights = run(dataset, tmp_path, "weights")
    assert with_weights["weights"]["source"] == "file"
    assert with_weights["image_size"]["value"] == with_weights["hyperparameters"]["image_size"] == timm_size
    assert "timm's pretrained_cfg" in with_weights["image_size"]["reason"]
    assert f"image_size={timm_size}: image_size=auto" in capsys.readouterr().out

    # A JumpStart id's size from the map (the plan passes it) wins over timm's, with weights only.
    mapped = run(dataset, tmp_path, "mapped", pretrained_image_size="48")
    assert mapped["image_size"]["value"] == 48 and "JumpStart map" in mapped["image_size"]["reason"]

    monkeypatch.delenv(WEIGHTS_DIR_VARIABLE)
    random_init = run(dataset, tmp_path, "random", pretrained_image_size="48")
    assert random_init["weights"] == {"source": "random init"}
    assert random_init["image_size"]["value"] == RANDOM_INIT_IMAGE_SIZE == 32
    assert "random weights" in random_init["image_size"]["reason"]

    monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(weights_dir))
    explicit = run(dataset, tmp_path, "explicit", image_size="64")
    assert explicit["image_size"] == {"value": 64, "reason": "set by the user (image_size)"}


def test_image_size_accepts_auto_or_pixels_only():
    assert parse_hyperparameters({})[0].image_size == "auto"
    assert parse_hyperparameters({"image_size": "AUTO"})[0].image_size == "auto"
    assert parse_hyperparameters({"image_size": "64"})[0].image_size == 64
    with pytest.raises(HyperparameterError, match="image_size='big': expected auto or an integer of at least 8"):
        parse_hyperparameters({"image_size": "big"})


def weighted_rows(sources: list[str | None]) -> list[dict]:
    names = ["resnet-50", "resnet-152", "mobilenet-v2"]
    return [result_row(name, "resnet", num_params=1e6 * (index + 1), test_accuracy=0.9 - 0.1 * index,
                       test_throughput=100.0 * (index + 1), train_epoch_duration=1.0, weights_source=source)
            for index, (name, source) in enumerate(zip(names, sources))]


def report_texts(rows: list[dict], out: Path) -> tuple[str, str]:
    paths = write_report(rows, out)
    return paths["html"].read_text(encoding="utf-8"), paths["md"].read_text(encoding="utf-8")


def test_the_report_warns_when_pretrained_and_random_init_models_are_mixed(tmp_path):
    page, markdown = report_texts(weighted_rows(["hub", "random init", "file"]), tmp_path / "mixed")
    warning = "Mixed starting weights: resnet-152 started from random weights"
    assert markdown.startswith(f"**Warning:** {warning}")
    frontier = page.split("<h2>Frontier</h2>")[1].split("</table>")[0]
    assert f'<p class="warning weights-warning">{warning}' in frontier
    assert "<td>resnet-152 (random init)</td>" in frontier and "<td>resnet-50</td>" in frontier
    assert "| resnet-152 (random init) |" in markdown and "| resnet-50 |" in markdown


@pytest.mark.parametrize("sources", [["hub", "file", "hub"], [None, None, None]])
def test_no_weights_warning_without_random_init_models(tmp_path, sources):
    page, markdown = report_texts(weighted_rows(sources), tmp_path / "same")
    assert "weights-warning" not in page and "random init" not in page
    assert "Warning" not in markdown and "random init" not in markdown


def test_all_random_init_models_get_their_own_warning(tmp_path):
    page, markdown = report_texts(weighted_rows(["random init"] * 3), tmp_path / "random")
    assert "Every model here started from random weights" in page and "Mixed" not in page
    assert markdown.startswith("**Warning:** Every model here started from random weights")
