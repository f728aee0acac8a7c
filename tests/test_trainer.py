"""The local trainer: real training of tiny timm models on tiny generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, run_trainer, write_image_folders

from model_selection.local.data import DataError
from model_selection.local.evaluation import Task, predict
from model_selection.local.hyperparameters import HyperparameterError, parse_hyperparameters
from model_selection.local.images import ImageFiles, Preprocessing
from model_selection.local.model import ModelError, build_model, sha256_of
from model_selection.local.train import Channels, train
from model_selection.metrics import BINARY_METRICS, all_metric_definitions, extract_final_metrics

SUMMARY = {
    "num_params",
    "num_trainable_params",
    "num_non_trainable_params",
    "train_duration",
    "train_epoch_duration",
    "test_evaluation_latency",
    "test_latency_per_sample",
    "test_throughput",
}


def channel_arguments(channels: dict[str, Path]) -> list[str]:
    return [argument for name, path in channels.items() for argument in (f"--{name}", str(path))]


def assert_regexes_read_every_metric(stdout: str, metrics: dict[str, float]) -> dict[str, float]:
    extracted = extract_final_metrics(stdout, all_metric_definitions())
    assert set(extracted) == set(metrics)
    for name, value in metrics.items():
        assert extracted[name] == pytest.approx(value, rel=1e-6, abs=1e-8), name
    return extracted


def test_multiclass_metrics_are_read_by_sagemaker_regexes(dataset, tmp_path):
    channels = dataset(classes=6, per_class=6)
    hyperparameters = {**TINY_MODEL, "epochs": "2", "train_only_top_layer": "False"}
    result = run_trainer([*channel_arguments(channels), "--model-dir", str(tmp_path / "model"),
                          "--hyperparameters", json.dumps(hyperparameters)])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    extracted = assert_regexes_read_every_metric(result.stdout, summary["metrics"])
    expected = SUMMARY | {f"{split}_{m}" for split in ("train", "val", "test") for m in ("loss", "accuracy", "top_5_accuracy")}
    assert set(extracted) == expected
    assert extracted["num_params"] == extracted["num_trainable_params"] + extracted["num_non_trainable_params"]
    assert extracted["test_throughput"] == pytest.approx(1.0 / extracted["test_latency_per_sample"], rel=1e-4)
    assert json.loads((tmp_path / "model" / "classes.json").read_text()) == [f"class_{k:02d}" for k in range(6)]
    assert (tmp_path / "model" / "model.safetensors").stat().st_size > 0
    assert summary["test_timing"]["per"] == "example" and summary["test_timing"]["data_loading_included"] is False
    assert summary["environment"]["torch"] == torch.__version__
    assert "batch size 8" in result.stdout and "data loading excluded" in result.stdout


def test_fewer_than_six_classes_have_no_top_5(dataset, tmp_path):
    summary = train(Channels(**dataset(classes=3)), {**TINY_MODEL, "epochs": "1"}, tmp_path / "model")
    assert "test_top_5_accuracy" not in summary["metrics"]
    assert {"test_loss", "test_accuracy"} <= set(summary["metrics"])


def test_binary_problem_reports_binary_metrics(dataset, tmp_path):
    channels = dataset(classes=2, per_class=8)
    hyperparameters = {**TINY_MODEL, "epochs": "2", "binary_mode": "True", "eval_metric": "auc"}
    result = run_trainer([*channel_arguments(channels), "--model-dir", str(tmp_path / "model"),
                          "--hyperparameters", json.dumps(hyperparameters)])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    extracted = assert_regexes_read_every_metric(result.stdout, summary["metrics"])
    for split in ("train", "val", "test"):
        assert {f"{split}_{m}" for m in BINARY_METRICS} <= set(extracted)
    counts = [extracted[f"test_{m}"] for m in ("true_pos", "false_pos", "true_neg", "false_neg")]
    assert sum(counts) == 8  # two classes of four test images
    assert extracted["test_accuracy"] == pytest.approx((counts[0] + counts[2]) / 8)
    assert "maximum val_auc" in result.stdout


def test_early_stopping_restores_the_best_epoch(dataset, tmp_path):
    # A min_delta of 1 makes every epoch after the first "no improvement": epoch 1 is best.
    hyperparameters = {**TINY_MODEL, "epochs": "6", "train_only_top_layer": "False", "learning_rate": "0.01",
                       "early_stopping": "True", "early_stopping_patience": "2", "early_stopping_min_delta": "1.0"}
    channels = dataset(classes=3)
    summary = train(Channels(**channels), hyperparameters, tmp_path / "model")
    assert (summary["best_epoch"], summary["epochs_run"], summary["stopped_early"]) == (1, 3, True)
    # The saved weights are epoch 1's: they reproduce epoch 1's validation loss exactly.
    assert saved_model_validation_loss(tmp_path / "model", channels, hyperparameters) == pytest.approx(
        summary["metrics"]["val_loss"], rel=1e-5
    )


def test_best_epoch_is_restored_without_early_stopping(dataset, tmp_path):
    hyperparameters = {**TINY_MODEL, "epochs": "3", "train_only_top_layer": "False", "learning_rate": "0.01",
                       "early_stopping_min_delta": "1.0"}
    channels = dataset(classes=3)
    summary = train(Channels(**channels), hyperparameters, tmp_path / "model")
    assert (summary["best_epoch"], summary["epochs_run"], summary["stopped_early"]) == (1, 3, False)
    assert saved_model_validation_loss(tmp_path / "model", channels, hyperparameters) == pytest.approx(
        summary["metrics"]["val_loss"], rel=1e-5
    )


def saved_model_validation_loss(model_dir: Path, channels: dict[str, Path], raw: dict[str, str]) -> float:
    """Reload model.safetensors and recompute the validation loss independently of the trainer."""
    from safetensors.torch import load_model

    from model_selection.local.data import load_splits

    hyperparameters, _ = parse_hyperparameters(raw)
    splits = load_splits(channels["training"], channels["validation"], None, 0.2, 0)
    task = Task(len(splits.classes), binary=False, label_smoothing=hyperparameters.label_smoothing)
    built = build_model(hyperparameters, task.num_outputs)
    load_model(built.model, str(model_dir / "model.safetensors"))
    built.model.eval()
    loader = torch.utils.data.DataLoader(
        ImageFiles(splits.validation, Preprocessing.for_model(built.model, hyperparameters).transform()), batch_size=8
    )
    weights = built.classifier.weight
    penalty = hyperparameters.regularizers_l2 * float(weights.detach().pow(2).sum())
    return task.metrics(*predict(built.model, loader, torch.device("cpu")), penalty)["loss"]


def test_feature_cache_matches_training_through_the_frozen_backbone(dataset, tmp_path):
    channels = Channels(**dataset(classes=4, per_class=10))
    hyperparameters = {**TINY_MODEL, "epochs": "4", "learning_rate": "0.05", "dropout_rate": "0.3",
                       "train_only_top_layer": "True", "force_top_layer_on_random_weights": "True"}
    cached = train(channels, hyperparameters, tmp_path / "cached", use_feature_cache=True)
    through = train(channels, hyperparameters, tmp_path / "through", use_feature_cache=False)
    assert cached["feature_cache"] == "computed" and through["feature_cache"] == "off"
    for name in ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert cached["metrics"][name] == pytest.approx(through["metrics"][name], rel=1e-4, abs=1e-5), name
    from safetensors.torch import load_file

    cached_weights = load_file(tmp_path / "cached" / "model.safetensors")
    through_weights = load_file(tmp_path / "through" / "model.safetensors")
    for name in cached_weights:
        torch.testing.assert_close(cached_weights[name], through_weights[name], rtol=1e-4, atol=1e-5)


def test_feature_cache_folder_is_shared_between_runs(dataset, tmp_path):
    channels = Channels(**dataset(classes=3))
    hyperparameters = {**TINY_MODEL, "epochs": "2", "train_only_top_layer": "True",
                       "force_top_layer_on_random_weights": "True"}
    first = train(channels, hyperparameters, tmp_path / "a", feature_cache_dir=tmp_path / "cache")
    second = train(channels, {**hyperparameters, "learning_rate": "0.0002"}, tmp_path / "b", feature_cache_dir=tmp_path / "cache")
    assert (first["feature_cache"], second["feature_cache"]) == ("computed", "loaded")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # training and validation features


def test_validation_is_split_from_training_when_absent(dataset, tmp_path):
    channels = dataset(classes=3, per_class=10, validation=False, test=False)
    result = run_trainer([*channel_arguments(channels), "--model-dir", str(tmp_path / "model"),
                          "--hyperparameters", json.dumps({**TINY_MODEL, "epochs": "1", "validation_split_ratio": "0.3"})])
    assert result.returncode == 0, result.stderr
    assert "training 21, validation 9 (split from training)" in result.stdout
    assert "No test data channel was given: test metrics are not computed." in result.stdout
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert not any(name.startswith("test_") for name in summary["metrics"])


def test_sagemaker_training_toolkit_variables_and_script_mode_arguments(dataset, tmp_path):
    channels = dataset(classes=3)
    env = {
        "SM_CHANNEL_TRAINING": str(channels["training"]),
        "SM_CHANNEL_VALIDATION": str(channels["validation"]),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_HPS": json.dumps({**TINY_MODEL, "epochs": 3, "sagemaker_program": "transfer_learning.py",
                              "_tuning_objective_metric": "val_accuracy"}),
    }
    result = run_trainer(["--epochs", "1"], env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert summary["epochs_run"] == 1
    assert summary["ignored_hyperparameters"] == ["_tuning_objective_metric", "sagemaker_program"]


def test_weights_file_is_loaded_and_recorded(dataset, tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_efficientnet", num_classes=7)
    weights = tmp_path / "pretrained.safetensors"
    save_file(source.state_dict(), str(weights))
    hyperparameters = {**TINY_MODEL, "pretrained": "true", "weights_file": str(weights), "epochs": "1"}
    summary = train(Channels(**dataset(classes=3)), hyperparameters, tmp_path / "model")
    assert summary["weights"] == {"source": "file", "path": str(weights.resolve()), "sha256": sha256_of(weights)}
    assert summary["train_only_top_layer"]["value"] is True  # unset: pretrained weights loaded, so top layer only
    from safetensors.torch import load_file

    trained = load_file(tmp_path / "model" / "model.safetensors")
    frozen_name = "conv_stem.weight"
    torch.testing.assert_close(trained[frozen_name], source.state_dict()[frozen_name])


def test_pretrained_true_without_weights_fails_clearly_offline(dataset, tmp_path):
    with pytest.raises(ModelError, match="could not load pretrained weights for 'test_efficientnet'"):
        train(Channels(**dataset()), {**TINY_MODEL, "pretrained": "true"}, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_pretrained_auto_falls_back_to_random_weights_loudly(dataset, tmp_path, capfd):
    summary = train(Channels(**dataset()), {**TINY_MODEL, "pretrained": "auto", "epochs": "1"}, tmp_path / "model")
    assert summary["weights"] == {"source": "random init"}
    assert "starts from RANDOM weights" in capfd.readouterr().err
    assert summary["train_only_top_layer"]["value"] is False  # unset: random weights, so full fine-tuning


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"learning_rat": "0.1"}, "unknown hyperparameter 'learning_rat'"),
        ({"epochs": "ten"}, "hyperparameter epochs='ten'"),
        ({"learning_rate": "-0.1"}, "hyperparameter learning_rate='-0.1': must be in (0.0, inf)"),
        ({"optimizer": "lamb"}, "hyperparameter optimizer='lamb': must be one of adam"),
        ({"train_only_top_layer": "maybe"}, "expected True or False"),
        ({"eval_metric": "auc"}, "eval_metric='auc' needs binary_mode=True"),
        ({"model_id": "resnet_does_not_exist"}, "unknown model id 'resnet_does_not_exist'"),
        ({"model_id": "resnet18.no_such_tag"}, "timm has no pretrained tag 'no_such_tag'"),
        ({"binary_mode": "True"}, "binary_mode=True needs exactly two classes"),
        ({"weights_file": "/nonexistent.safetensors", "pretrained": "true"}, "is not a file"),
    ],
)
def test_bad_hyperparameters_are_named_before_training(dataset, tmp_path, hyperparameters, message):
    with pytest.raises((HyperparameterError, ModelError)) as error:
        train(Channels(**dataset()), {**TINY_MODEL, **hyperparameters}, tmp_path / "model")
    assert message in str(error.value)
    assert not (tmp_path / "model").exists()


def test_every_problem_is_listed_at_once():
    with pytest.raises(HyperparameterError) as error:
        parse_hyperparameters({"epochs": "0", "batch_size": "x", "colour": "blue"})
    assert all(part in str(error.value) for part in ("epochs='0'", "batch_size='x'", "'colour'"))


def test_command_line_reports_bad_input_with_exit_code_and_failure_file(dataset, tmp_path):
    result = run_trainer([*channel_arguments(dataset()), "--model-dir", str(tmp_path / "model"),
                          "--output-dir", str(tmp_path / "output"),
                          "--hyperparameters", json.dumps({**TINY_MODEL, "epochs": "-1"})])
    assert result.returncode == 2
    assert "hyperparameter epochs='-1': must be at least 1" in result.stderr
    assert "Epoch" not in result.stdout
    assert "epochs='-1'" in (tmp_path / "output" / "failure").read_text()


def test_missing_empty_and_single_class_channels_are_refused(tmp_path):
    hyperparameters = {**TINY_MODEL, "epochs": "1"}
    with pytest.raises(DataError, match="training channel: folder .*missing does not exist"):
        train(Channels(tmp_path / "missing"), hyperparameters, tmp_path / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no class sub-folders"):
        train(Channels(tmp_path / "empty"), hyperparameters, tmp_path / "model")
    write_image_folders(tmp_path / "one", classes=1, per_class=4)
    with pytest.raises(DataError, match="has 1 class folder; at least two are needed"):
        train(Channels(tmp_path / "one"), hyperparameters, tmp_path / "model")
    write_image_folders(tmp_path / "hollow", classes=2, per_class=4)
    (tmp_path / "hollow" / "class_02").mkdir()
    (tmp_path / "hollow" / "class_02" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="class folder .*class_02 holds no .jpg, .jpeg or .png images"):
        train(Channels(tmp_path / "hollow"), hyperparameters, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_unreadable_images_are_named_skipped_and_counted(dataset, tmp_path, capsys):
    channels = dataset(classes=3)
    training = channels["training"]
    good = sorted((training / "class_00").glob("*.png"))[0].read_bytes()
    (training / "class_00" / "truncated.png").write_bytes(good[: len(good) // 2])
    (training / "class_01" / "empty.jpg").write_bytes(b"")
    (training / "class_02" / "text.jpeg").write_text("not an image at all")
    summary = train(Channels(**channels), {**TINY_MODEL, "epochs": "1"}, tmp_path / "model")
    skipped = {Path(item["path"]).name for item in summary["skipped_images"]}
    assert skipped == {"truncated.png", "empty.jpg", "text.jpeg"}
    output = capsys.readouterr().out
    assert "Skipped 3 unreadable image(s)" in output
    assert "WARNING: skipping unreadable image" in output and "truncated.png" in output


def test_a_class_left_empty_by_unreadable_images_is_refused(tmp_path):
    write_image_folders(tmp_path / "training", classes=2, per_class=4)
    for image in (tmp_path / "training" / "class_01").glob("*.png"):
        image.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="class 'class_01' has no readable image left after skipping 4"):
        train(Channels(tmp_path / "training"), {**TINY_MODEL, "epochs": "1"}, tmp_path / "model")


@pytest.mark.parametrize("value", [1.23e-7, 5e-5, 0.1, 12345.678, 3])
def test_numbers_are_printed_as_plain_decimals_the_regexes_read_whole(value):
    from model_selection.metrics import format_number

    text = format_number(value)
    assert "e" not in text.lower()
    assert extract_final_metrics(f"- Test loss: {text}\n", all_metric_definitions()) == {"test_loss": pytest.approx(value)}
