"""The measurement pass: saved weights of really trained tiny models, timed after training, interleaved."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time

import pytest
import torch
from conftest import write_image_folders

from model_selection.frontier import frontier
from model_selection.local.data import load_splits
from model_selection.local.evaluation import Task, predict
from model_selection.local.images import ImageFiles
from model_selection.local.speed import (
    MachineBusy,
    holding_all_trainer_slots,
    load_trained_model,
    measure_speed,
    speed_pass_for_rows,
)
from model_selection.local.supervisor import MAX_TRAINERS_VARIABLE, MachineSlots, machine_trainer_cap
from model_selection.local.train import Channels, l2_penalty, penalty_value, train
from model_selection.report.inputs import with_speed

TINY, LARGE = "test_efficientnet", "resnet50"  # same image size, several-fold different cost
BATCH_SIZE = 8
# One thread: on a shared machine, a multi-threaded forward pass slows by whole multiples whenever another
# process takes a core, which would swamp the differences these tests check.
QUICK = {"rounds": 3, "round_seconds": 0.05, "threads": 1}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two models really trained on generated images, and the rows collect_metrics would give for them."""
    root = tmp_path_factory.mktemp("speed")
    # test images larger than the models' input, so decoding and resizing them clearly costs time
    channels = Channels(*(write_image_folders(root / name, 3, count, size, seed)
                          for name, count, size, seed in (("training", 8, 16, 1), ("validation", 4, 16, 2),
                                                          ("test", 4, 160, 3))))
    rows = []
    for model_id in (TINY, LARGE):
        hyperparameters = {"model_id": model_id, "pretrained": "false", "image_size": "32",
                           "batch_size": str(BATCH_SIZE), "epochs": "1"}
        summary = train(channels, hyperparameters, root / "models" / model_id)
        rows.append({"model_id": model_id, "backend": "local", "status": "Completed",
                     "model_artifacts": (root / "models" / model_id).as_uri(),
                     "test_accuracy": summary["metrics"]["test_accuracy"],
                     "test_throughput": summary["metrics"]["test_throughput"],
                     "throughput_measure": "per example (local trainer)"})
    rows.append({"model_id": "tf-ic-on-sagemaker", "backend": "sagemaker", "status": "Completed",
                 "model_artifacts": "s3://bucket/output/model.tar.gz", "test_accuracy": 0.5, "test_throughput": 50.0})
    rows.append({"model_id": "failed-local", "backend": "local", "status": "Failed", "model_artifacts": None})
    first_pass = speed_pass_for_rows(rows, channels.test, BATCH_SIZE, jobs_root=root / "jobs", **QUICK)
    return {"root": root, "channels": channels, "rows": rows, "pass": first_pass}


def test_pass_times_every_completed_local_model(study):
    speed_pass = study["pass"]
    assert json.loads(json.dumps(speed_pass)) == speed_pass  # the DAG stores it as JSON
    assert set(speed_pass["models"]) == {TINY, LARGE}
    assert set(speed_pass["not_measured"]) == {"tf-ic-on-sagemaker", "failed-local"}
    for model_id, figures in speed_pass["models"].items():
        assert figures["throughput_low"] <= figures["throughput"] <= figures["throughput_high"], model_id
        assert figures["throughput_low"] > 0
        assert 0 < figures["latency_bs1_median"] <= figures["latency_bs1_p90"], model_id
        assert figures["end_to_end_throughput_low"] <= figures["end_to_end_throughput"] <= figures["end_to_end_throughput_high"]
        assert figures["end_to_end_throughput_low"] > 0
        assert (figures["rounds"], figures["batch_size"], figures["input_size"]) == (3, BATCH_SIZE, [3, 32, 32])
        assert figures["threads"] == 1 and figures["trainer_slots_held"] == machine_trainer_cap()
        assert "interleaved" in figures["method"] and "median" in figures["method"]
    tiny, large = speed_pass["models"][TINY], speed_pass["models"][LARGE]
    assert large["throughput"] * 3 < tiny["throughput"]
    assert large["latency_bs1_median"] > tiny["latency_bs1_median"]
    # decoding and resizing 160-pixel images dominate a tiny model's end-to-end figure
    assert tiny["end_to_end_throughput"] < tiny["throughput"] / 1.5


def test_loaded_model_is_the_trained_one(study):
    model, preprocessing, hyperparameters = load_trained_model(study["root"] / "models" / TINY, "cpu")
    assert hyperparameters.model_id == TINY and not model.training
    splits = load_splits(study["channels"].training, None, study["channels"].test, 0.2, 0)
    loader = torch.utils.data.DataLoader(ImageFiles(splits.test, preprocessing.transform()), batch_size=BATCH_SIZE)
    outputs, labels = predict(model, loader, torch.device("cpu"))
    task = Task(num_classes=3, binary=False, label_smoothing=hyperparameters.label_smoothing)
    metrics = task.metrics(outputs, labels, penalty_value(l2_penalty(model.get_classifier(), hyperparameters.regularizers_l2)))
    recorded = json.loads((study["root"] / "models" / TINY / "metrics.json").read_text())["metrics"]
    assert metrics["loss"] == pytest.approx(recorded["test_loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(recorded["test_accuracy"])


def test_unloadable_model_gets_an_error_and_the_others_are_measured(study, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(study["root"] / "models" / TINY, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    folders = {TINY: study["root"] / "models" / TINY, "gone": tmp_path / "gone", "broken": broken}
    figures = measure_speed(folders, study["channels"].test, BATCH_SIZE, rounds=1, round_seconds=0.01, threads=1)
    assert list(figures) == [TINY, "gone", "broken"]
    assert "could not be loaded" in figures["gone"]["error"] and "gone" in figures["gone"]["error"]
    assert "could not be loaded" in figures["broken"]["error"]
    assert figures[TINY]["throughput"] > 0 and "error" not in figures[TINY]


def test_with_speed_puts_the_pass_figure_first_and_keeps_the_job_figure(study):
    speed_pass = study["pass"]
    stale = {**study["rows"][0], "model_artifacts": "file:///elsewhere/a-later-run"}
    merged = with_speed([*study["rows"], stale], speed_pass)
    for row, original in zip(merged[:2], study["rows"][:2]):
        figures = speed_pass["models"][row["model_id"]]
        assert row["job_test_throughput"] == original["test_throughput"]
        assert row["test_throughput"] == figures["throughput"]
        assert (row["test_throughput_low"], row["test_throughput_high"]) == (figures["throughput_low"], figures["throughput_high"])
        assert row["latency_bs1_p90"] == figures["latency_bs1_p90"]
        assert row["end_to_end_throughput"] == figures["end_to_end_throughput"]
        assert row["throughput_measure"] == figures["method"]
    assert merged[2:] == [*study["rows"][2:], stale]  # SageMaker, failed, and a row the pass did not time
    assert with_speed(merged, speed_pass) == merged


def test_two_passes_give_the_same_frontier(study):
    second_pass = speed_pass_for_rows(study["rows"], study["channels"].test, BATCH_SIZE,
                                      jobs_root=study["root"] / "jobs", **QUICK)

    def ranking(speed_pass):
        return sorted(speed_pass["models"], key=lambda model_id: speed_pass["models"][model_id]["throughput"])

    assert ranking(study["pass"]) == ranking(second_pass) == [LARGE, TINY]
    first, _ = frontier(with_speed(study["rows"], study["pass"]))
    second, _ = frontier(with_speed(study["rows"], second_pass))
    assert [(row["model_id"], row["on_frontier"]) for row in first] == [(row["model_id"], row["on_frontier"]) for row in second]


def test_all_trainer_slots_are_held_while_timing(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_TRAINERS_VARIABLE, "2")
    slots = MachineSlots(tmp_path / "slots", 2)
    with holding_all_trainer_slots(tmp_path, wait_seconds=5) as held:
        assert held == 2
        assert slots.try_acquire() is None
    taken = slots.try_acquire()
    assert taken is not None
    os.close(taken[1])


def test_pass_waits_for_a_running_trainer_then_gives_up_or_measures(study, tmp_path, caplog):
    trainer = MachineSlots(tmp_path / "slots", 1).try_acquire()
    assert trainer is not None
    tiny_row = study["rows"][:1]
    with pytest.raises(MachineBusy, match="trainer slots"):
        speed_pass_for_rows(tiny_row, study["channels"].test, BATCH_SIZE, jobs_root=tmp_path, slot_wait_seconds=0.3)
    threading.Timer(1.5, os.close, args=(trainer[1],)).start()  # the trainer ends
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="model_selection.local.speed"):
        speed_pass = speed_pass_for_rows(tiny_row, study["channels"].test, BATCH_SIZE, jobs_root=tmp_path,
                                         slot_wait_seconds=30, rounds=1, round_seconds=0.01, threads=1)
    assert time.monotonic() - started >= 1.4
    assert "waiting for 1 of 1 trainer slots" in caplog.text
    assert speed_pass["models"][TINY]["throughput"] > 0
