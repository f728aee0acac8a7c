"""The screen against the full study it is meant to shortcut, measured side by side in one run.

    python benchmarks/bench_screen.py [--models a,b,...] [--datasets digits,stripes] [--keep-top K] [--epochs N]

For each data set, on the local backend, with the same models and the DAG's own plan (`plan_study`):

1. the screen (`screen_candidates`) in a fresh jobs root, so its feature cache starts cold;
2. fine-tuning only the K models the default score (combined) kept, in the screen's jobs root
   (its trials may load the screen's features, as they would in a screened DAG run);
3. the full study: one real local tuning job per model (every learning rate), in another fresh
   jobs root, so nothing the screen computed helps it; rows made by the DAG's `collect_row`.

Reported: T_screen / T_full (goal <= 5 %), (T_screen + T_kept) / T_full (the real saving), and for each
score and for the static ImageNet prior, at K = a quarter of the candidates (rounded up): the fraction of
the full study's frontier (test accuracy vs test throughput) kept, whether the best model (highest
fine-tuned test accuracy) was kept, the regret, and Kendall's tau against the fine-tuned test accuracy.

The weights are "pretrained-like", made offline as tests/test_transfer.py makes them: each architecture
is first trained fully on a generated source task (single low-contrast stripes), and the trainer's
model.safetensors is saved as `<model>.safetensors` in a weights folder the study and the screen both
use (`weights_dir`). A model whose pretraining fails starts from random weights; its row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include"), str(ROOT / "tests")]

import torch  # noqa: E402
from bench_trainer import seconds  # noqa: E402
from make_digits_dataset import write_digits  # noqa: E402
from test_transfer import A_CLASSES, B_CLASSES  # noqa: E402
from test_transfer import channels as stripe_channels  # noqa: E402

from model_selection.collection import collect_row  # noqa: E402
from model_selection.frontier import frontier  # noqa: E402
from model_selection.hooks import LocalTuningJobHook  # noqa: E402
from model_selection.local.screen import screen_candidates  # noqa: E402
from model_selection.local.train import Channels, train  # noqa: E402
from model_selection.planning import plan_study  # noqa: E402
from model_selection.screening import (  # noqa: E402
    DEFAULT_SCORE,
    SCORE_CHOICES,
    imagenet_top1,
    kendall_tau,
    ranking_report,
    screen_regret,
    select_top,
)
from model_selection.tuning_request import request_for_launch  # noqa: E402

PRIOR = "imagenet_top1"
SELECTORS = (*SCORE_CHOICES, PRIOR)
GOAL_SCREEN_SHARE = 0.05
KEPT_WORDS = {True: "yes", False: "NO", None: "-"}
ACTIVE = ("InProgress", "Stopping")
DATASETS = ("digits", "stripes")


def model_list(name: str) -> list[str]:
    lines = (ROOT / "include" / "model_lists" / f"{name}.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


DEFAULT_MODELS = model_list("local-tiny") + model_list("local-small")


# --- machine and data ---------------------------------------------------------------------------


def machine_facts() -> str:
    one, five, fifteen = os.getloadavg()
    return (f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)")


def dataset_channels(name: str, work: Path) -> dict[str, Path]:
    """digits: the project's data set (made if missing); stripes: pairs of low-contrast stripes, 6 classes."""
    if name == "digits":
        folder = write_digits(ROOT / "include" / "datasets" / "digits")
        return {channel: folder / channel for channel in ("training", "validation", "test")}
    return stripe_channels(work / "stripes", B_CLASSES, per_class=40, seed=20, test=20)


def image_count(channels: dict[str, Path]) -> int:
    return sum(1 for folder in channels.values() for path in folder.rglob("*") if path.is_file())


# --- pretrained-like weights --------------------------------------------------------------------


def make_pretrained_like_weights(models: list[str], weights_dir: Path, work: Path, image_size: str,
                                 epochs: int) -> dict[str, str]:
    """Train each architecture fully on the source task (single stripes) and save its weights file.

    Returns, by model, how its weights were made; a file already in `weights_dir` is reused as is.
    """
    weights_dir.mkdir(parents=True, exist_ok=True)
    source = stripe_channels(work / "source", A_CLASSES, per_class=40, seed=10, test=16)
    made: dict[str, str] = {}
    for model_id in models:
        target = weights_dir / f"{model_id}.safetensors"
        if target.is_file():
            made[model_id] = f"reused {target.name}"
            continue
        hyperparameters = {"model_id": model_id, "pretrained": "false", "image_size": image_size,
                           "epochs": str(epochs), "learning_rate": "0.003", "train_only_top_layer": "False"}
        started = time.perf_counter()
        try:
            with open(work / f"pretraining-{model_id}.log", "w") as log, contextlib.redirect_stdout(log):
                summary = train(Channels(**source), hyperparameters, work / "pretraining" / model_id)
        except Exception as error:  # noqa: BLE001 - that model then starts from random weights, said per row
            made[model_id] = f"pretraining failed ({type(error).__name__}: {error}); random init"
            continue
        shutil.copyfile(work / "pretraining" / model_id / "model.safetensors", target)
        made[model_id] = (f"stripes source task, {epochs} epochs, {time.perf_counter() - started:.0f} s, "
                          f"source test accuracy {summary['metrics']['test_accuracy']:.2f}")
        print(f"  pretrained {model_id}: {made[model_id]}", flush=True)
    return made


# --- the study and the screen -------------------------------------------------------------------


def plan(models: list[str], name: str, channels: dict[str, Path], hyperparameters: dict[str, str], epochs: int,
         jobs_root: Path) -> dict[str, Any]:
    """The DAG's own plan for these models (a fresh results store, so every model is launched)."""
    params = {
        "backend": "local", "model_ids": models, "epochs": epochs, "force": True,
        "dataset": {"name": name, **{channel: str(folder) for channel, folder in channels.items()}},
        "local_hyperparameters": hyperparameters, "results_uri": str(jobs_root / "results"),
    }
    return plan_study(params, ROOT, str(jobs_root))


def run_tuning_jobs(study_plan: dict[str, Any], jobs_root: Path, only: set[str] | None = None
                    ) -> tuple[float, list[dict[str, Any]]]:
    """Every planned model's tuning job (or those in `only`) created at once, as the DAG's lanes do;
    (seconds from the first create to the last job's end, the collected rows)."""
    hook = LocalTuningJobHook(str(jobs_root))
    launches = [launch for launch in study_plan["launches"] if only is None or launch["model_id"] in only]

    def run_all() -> None:
        for launch in launches:
            hook.create_or_attach(request_for_launch(launch))
        while any(hook.describe(launch["job_name"])["HyperParameterTuningJobStatus"] in ACTIVE for launch in launches):
            time.sleep(0.5)

    wall = seconds(run_all)
    return wall, [collect_row(hook, launch, study_plan["study"], "bench-screen") for launch in launches]


def run_screen(study_plan: dict[str, Any], channels: dict[str, Path], jobs_root: Path
               ) -> tuple[float, dict[str, dict[str, Any]]]:
    candidates = [{"model_id": launch["model_id"], "static_hyperparameters": launch["spec"]["static_hyperparameters"]}
                  for launch in study_plan["launches"]]
    results: dict[str, dict[str, Any]] = {}

    def screen() -> None:
        results.update(screen_candidates(candidates, channels["training"], channels.get("validation"), jobs_root,
                                         log=lambda line: print(f"  {line}", flush=True)))

    return seconds(screen), results


# --- what the screen kept -----------------------------------------------------------------------


def selector_values(results: dict[str, dict[str, Any]], selector: str) -> dict[str, float]:
    if selector == PRIOR:
        priors = {model: imagenet_top1(result.get("trainer_model_id") or model) for model, result in results.items()}
        return {model: value for model, value in priors.items() if value is not None}
    return {model: result["scores"][selector] for model, result in results.items() if result["error"] is None}


def selection_figures(results: dict[str, dict[str, Any]], accuracy: dict[str, float | None],
                      frontier_models: set[str], keep_top: int) -> dict[str, dict[str, Any]]:
    """For each score and the prior: kept models, frontier share kept, best kept, regret, tau vs accuracy."""
    priors = selector_values(results, PRIOR)
    figures = {}
    for selector in SELECTORS:
        values = selector_values(results, selector)
        kept, _ = select_top(values, keep_top)
        known = [model for model in values if accuracy.get(model) is not None]
        regret = screen_regret(accuracy, kept)
        figures[selector] = {
            "kept": kept,
            "frontier_kept": len(frontier_models & set(kept)) / len(frontier_models) if frontier_models else None,
            "best_kept": regret == 0.0 if regret is not None else None,
            "regret": regret,
            "tau": kendall_tau([values[m] for m in known], [accuracy[m] for m in known]),
        }
        if selector != PRIOR:
            figures[selector]["verdict"] = ranking_report([
                {"model_id": model, "score": values.get(model), "kept": model in kept,
                 "test_accuracy": accuracy.get(model), "imagenet_top1": priors.get(model)} for model in results
            ])["verdict"]
    return figures


# --- printing -----------------------------------------------------------------------------------


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def model_table(results: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]], weights: dict[str, str]) -> str:
    body = []
    for model, result in results.items():
        scores = result["scores"] or {}
        row = rows.get(model, {})
        source = "random init" if result.get("pretrained") is False else ("file" if result["error"] is None else "-")
        body.append([
            model, source, number(result["seconds"], 1), *(number(scores.get(name)) for name in SCORE_CHOICES),
            number(imagenet_top1(result.get("trainer_model_id") or model), 1), str(row.get("status")),
            number(row.get("test_accuracy")), number(row.get("test_throughput"), 0),
            "yes" if row.get("on_frontier") else "no", number(row.get("tuning_duration"), 1),
            result["error"] or weights.get(model, ""),
        ])
    return table(["model", "weights", "screen s", *SCORE_CHOICES, "IN top1", "study", "test acc", "img/s",
                  "frontier", "job s", "weights made / error"], body)


def selection_table(figures: dict[str, dict[str, Any]]) -> str:
    body = [[selector, ", ".join(f["kept"]), number(f["frontier_kept"], 2),
             KEPT_WORDS[f["best_kept"]], number(f["regret"]), number(f["tau"], 2)]
            for selector, f in figures.items()]
    return table(["selected by", "kept", "frontier kept", "best kept", "regret", "tau vs test acc"], body)


# --- one data set -------------------------------------------------------------------------------


def bench_dataset(name: str, models: list[str], keep_top: int, epochs: int, hyperparameters: dict[str, str],
                  weights: dict[str, str], work: Path) -> dict[str, Any]:
    channels = dataset_channels(name, work)
    print(f"\n== {name}: {image_count(channels)} images, {len(models)} models, K = {keep_top}; "
          f"{machine_facts()}", flush=True)
    screen_root, study_root = work / f"{name}-screen-jobs", work / f"{name}-study-jobs"
    screen_plan = plan(models, name, channels, hyperparameters, epochs, screen_root)
    print("-- screen (fresh jobs root, cold feature cache)", flush=True)
    screen_seconds, results = run_screen(screen_plan, channels, screen_root)
    kept_by_default = select_top(selector_values(results, DEFAULT_SCORE), keep_top)[0]
    print(f"-- fine-tuning the {keep_top} kept by {DEFAULT_SCORE} ({', '.join(kept_by_default)}), screen's jobs root",
          flush=True)
    kept_seconds, _ = run_tuning_jobs(screen_plan, screen_root, set(kept_by_default))
    print("-- full study (another fresh jobs root)", flush=True)
    full_seconds, study_rows = run_tuning_jobs(plan(models, name, channels, hyperparameters, epochs, study_root),
                                               study_root)
    candidates, _ = frontier(study_rows)
    rows = {row["model_id"]: row for row in study_rows}
    rows.update({row["model_id"]: row for row in candidates})
    frontier_models = {row["model_id"] for row in candidates if row["on_frontier"]}
    accuracy = {model: row.get("test_accuracy") if row.get("status") == "Completed" else None
                for model, row in rows.items()}
    figures = selection_figures(results, accuracy, frontier_models, keep_top)

    print(f"\n{name}: models (screen scores, ImageNet top-1 prior, full study's best trial)")
    print(model_table(results, rows, weights))
    print(f"\n{name}: the top {keep_top} of {len(models)} by each score; frontier = {sorted(frontier_models)}")
    print(selection_table(figures))
    for selector in SCORE_CHOICES:
        print(f"  {selector}: {figures[selector]['verdict']}")
    measured = {"name": name, "screen": screen_seconds, "kept": kept_seconds, "full": full_seconds,
                "figures": figures, "screen_sum": sum(result["seconds"] for result in results.values())}
    print(f"\n{name}: T_screen {screen_seconds:.1f} s (sum of per-model seconds {measured['screen_sum']:.1f} s), "
          f"T_kept {kept_seconds:.1f} s, T_full {full_seconds:.1f} s; T_screen / T_full = "
          f"{screen_seconds / full_seconds:.1%}; (T_screen + T_kept) / T_full = "
          f"{(screen_seconds + kept_seconds) / full_seconds:.1%}", flush=True)
    return measured


def goal_lines(measured: list[dict[str, Any]], keep_top: int) -> list[str]:
    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    shares = {m["name"]: m["screen"] / m["full"] for m in measured}
    savings = {m["name"]: (m["screen"] + m["kept"]) / m["full"] for m in measured}
    lines = [
        f"goal screen <= {GOAL_SCREEN_SHARE:.0%} of the full study: {verdict(max(shares.values()) <= GOAL_SCREEN_SHARE)} "
        f"({', '.join(f'{name} {share:.1%}' for name, share in shares.items())})",
        f"real cost, screen + fine-tuning the kept {keep_top} / full study: "
        f"{', '.join(f'{name} {share:.1%}' for name, share in savings.items())}",
    ]
    for selector in SELECTORS:
        kept = {m["name"]: m["figures"][selector]["best_kept"] for m in measured}
        frontier_kept = ", ".join(f"{m['name']} {number(m['figures'][selector]['frontier_kept'], 2)}" for m in measured)
        lines.append(
            f"goal best model kept at K = {keep_top}, by {selector}: {verdict(all(kept.values()))} "
            f"({', '.join(f'{name} {KEPT_WORDS[value]}' for name, value in kept.items())}); "
            f"frontier kept: {frontier_kept}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated timm names (default: local-tiny + local-small, 8 models)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, among {', '.join(DATASETS)}")
    parser.add_argument("--keep-top", type=int, default=None, help="K (default: a quarter of the models, rounded up)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per training job (the DAG's default: 10)")
    parser.add_argument("--image-size", default="32", help="input size in pixels for every model (default 32)")
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="epochs on the source task per architecture")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="keep the pretrained-like weights here and reuse those already made (default: a temp folder)")
    parser.add_argument("--train-only-top-layer", choices=("auto", "True", "False"), default="auto",
                        help="auto: the study's default (top layer only when pretrained weights load)")
    arguments = parser.parse_args()
    models = [model.strip() for model in arguments.models.split(",") if model.strip()]
    datasets = [name.strip() for name in arguments.datasets.split(",") if name.strip()]
    if set(datasets) - set(DATASETS) or not datasets:
        parser.error(f"--datasets takes names among {', '.join(DATASETS)}; got {arguments.datasets!r}")
    keep_top = arguments.keep_top or math.ceil(len(models) / 4)
    if not 1 <= keep_top < len(models):
        parser.error(f"--keep-top must be at least 1 and below the {len(models)} models")

    print(f"bench_screen: {len(models)} models {models}, K = {keep_top}, {arguments.epochs} epochs, "
          f"image size {arguments.image_size}; machine at start: {machine_facts()}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-screen-") as temporary:
        work = Path(temporary)
        weights_dir = (arguments.weights_dir or work / "weights").resolve()
        print("-- pretrained-like weights (not timed)", flush=True)
        weights = make_pretrained_like_weights(models, weights_dir, work, arguments.image_size,
                                               arguments.pretrain_epochs)
        hyperparameters = {"pretrained": "auto", "image_size": arguments.image_size, "weights_dir": str(weights_dir)}
        if arguments.train_only_top_layer != "auto":
            hyperparameters["train_only_top_layer"] = arguments.train_only_top_layer
        measured = [bench_dataset(name, models, keep_top, arguments.epochs, hyperparameters, weights, work)
                    for name in datasets]
    print(f"\n== summary ({time.perf_counter() - started:.0f} s in all; machine at end: {machine_facts()})")
    for line in goal_lines(measured, keep_top):
        print(line)


if __name__ == "__main__":
    main()
