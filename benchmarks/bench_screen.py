"""The screen against the full study it is meant to shortcut, measured side by side in one run.

    python benchmarks/bench_screen.py [--models a,b,...] [--datasets digits,stripes] [--keep-top K] [--epochs N]
                                      [--samples 5,10,20,40] [--seeds 0,1]

For each data set, on the local backend, with the same models and the DAG's own plan (`plan_study`):

1. the screen (`screen_candidates`) on every image, in a fresh jobs root, so its feature cache starts cold;
2. the screen on samples: at most `sample_per_class` images per class of training and of validation, for
   each size and seed, each in a fresh jobs root;
3. the full study: one real local tuning job per model (every learning rate) that fine-tunes the WHOLE
   model (train_only_top_layer False by default: the expensive case, as on SageMaker, where every epoch
   runs the backbone), in another fresh jobs root; rows made by the DAG's `collect_row`.

The kept models are not fine-tuned again: whole-model trials read no cached features, so in a screened
run a kept model's trials cost what they cost in the full study, its trainers' seconds there.

Reported: per data set, the models (scores of the all-image screen, ImageNet prior, fine-tuned test
accuracy, frontier, trainer seconds); the all-image screen's selection by each score and by the ImageNet
prior at K = a quarter of the candidates (rounded up): frontier share kept, best model kept, regret, Kendall's
tau against the fine-tuned test accuracy; and per screen (all images, then each sample size and seed), by the
default score: T_screen / T_full (goal <= 5 %), (T_screen + the kept models' share of the trainers' seconds) /
T_full, tau against the all-image screen and against the fine-tuned accuracy, regret, best kept. Then the
sample_per_class these measurements suggest as the default (`suggested_sample`) and the simulated SageMaker
study (sim_sagemaker_screen.py) at that size.

The weights are "pretrained-like", made offline as tests/test_transfer.py makes them: each architecture
is first trained fully on a generated source task (single low-contrast stripes), and the trainer's
model.safetensors is saved as `<model>.safetensors` in a weights folder the study and the screen both
use (`weights_dir`). A model whose pretraining fails starts from random weights; its row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include"), str(ROOT / "tests")]

import torch  # noqa: E402
from bench_trainer import seconds  # noqa: E402
from make_digits_dataset import write_digits  # noqa: E402
from sim_sagemaker_screen import Assumptions  # noqa: E402
from sim_sagemaker_screen import report as sim_report  # noqa: E402
from test_transfer import A_CLASSES, B_CLASSES  # noqa: E402
from test_transfer import channels as stripe_channels  # noqa: E402

from model_selection.collection import collect_row  # noqa: E402
from model_selection.frontier import frontier  # noqa: E402
from model_selection.hooks import LocalTuningJobHook  # noqa: E402
from model_selection.local.screen import screen_candidates  # noqa: E402
from model_selection.local.train import Channels, train  # noqa: E402
from model_selection.planning import plan_study  # noqa: E402
from model_selection.screening import (  # noqa: E402
    DEFAULT_SAMPLE_PER_CLASS,
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
SAMPLES = (5, 10, 20, 40)
SEEDS = (0, 1)
CLOSE_TAU = 0.6  # "orders the models like the all-image screen": at most a fifth of the model pairs swapped
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


def trainer_seconds(hook: LocalTuningJobHook, tuning_job_name: str) -> float:
    """Seconds the job's trainers ran (start to end of each training job): its cost, without the time it
    waited for a trainer slot behind the other models' jobs."""
    return sum((job["TrainingEndTime"] - job["TrainingStartTime"]).total_seconds()
               for job in hook.list_training_jobs(tuning_job_name)
               if job.get("TrainingStartTime") and job.get("TrainingEndTime"))


def run_tuning_jobs(study_plan: dict[str, Any], jobs_root: Path
                    ) -> tuple[float, list[dict[str, Any]], dict[str, float]]:
    """Every planned model's tuning job created at once, as the DAG's lanes do; (seconds from the first
    create to the last job's end, the collected rows, each model's trainer seconds)."""
    hook = LocalTuningJobHook(str(jobs_root))
    launches = study_plan["launches"]

    def run_all() -> None:
        for launch in launches:
            hook.create_or_attach(request_for_launch(launch))
        while any(hook.describe(launch["job_name"])["HyperParameterTuningJobStatus"] in ACTIVE for launch in launches):
            time.sleep(0.5)

    wall = seconds(run_all)
    rows = [collect_row(hook, launch, study_plan["study"], "bench-screen") for launch in launches]
    return wall, rows, {launch["model_id"]: trainer_seconds(hook, launch["job_name"]) for launch in launches}


@dataclasses.dataclass
class ScreenRun:
    """One screen of every candidate: on all images (`sample_per_class` None) or on a seeded sample."""

    sample_per_class: int | None
    seed: int
    seconds: float
    results: dict[str, dict[str, Any]]

    @property
    def label(self) -> str:
        return "all images" if self.sample_per_class is None else f"{self.sample_per_class} per class"

    @property
    def images(self) -> int:
        """Images each model saw (training + validation; the same for every model that did not fail)."""
        return max((result["images"] for result in self.results.values() if result["error"] is None), default=0)


def run_screen(study_plan: dict[str, Any], channels: dict[str, Path], jobs_root: Path,
               sample_per_class: int | None = None, seed: int = 0,
               log: Callable[[str], None] = lambda line: print(f"  {line}", flush=True)) -> ScreenRun:
    candidates = [{"model_id": launch["model_id"], "static_hyperparameters": launch["spec"]["static_hyperparameters"]}
                  for launch in study_plan["launches"]]
    results: dict[str, dict[str, Any]] = {}

    def screen() -> None:
        results.update(screen_candidates(candidates, channels["training"], channels.get("validation"), jobs_root,
                                         log=log, sample_per_class=sample_per_class, seed=seed))

    return ScreenRun(sample_per_class, seed, seconds(screen), results)


# --- what the screen kept -----------------------------------------------------------------------


def selector_values(results: dict[str, dict[str, Any]], selector: str) -> dict[str, float]:
    if selector == PRIOR:
        priors = {model: imagenet_top1(result.get("trainer_model_id") or model) for model, result in results.items()}
        return {model: value for model, value in priors.items() if value is not None}
    return {model: result["scores"][selector] for model, result in results.items() if result["error"] is None}


def selection_figures(results: dict[str, dict[str, Any]], accuracy: dict[str, float | None],
                      frontier_models: set[str], keep_top: int, selectors: tuple[str, ...] = SELECTORS
                      ) -> dict[str, dict[str, Any]]:
    """For each selector: kept models, frontier share kept, best kept, regret, tau vs accuracy (and, for a
    score, the report's verdict beside the ImageNet prior)."""
    priors = selector_values(results, PRIOR)
    figures = {}
    for selector in selectors:
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


def screen_figures(run: ScreenRun, all_images: ScreenRun, accuracy: dict[str, float | None],
                   frontier_models: set[str], keep_top: int, full_seconds: float, trainer: dict[str, float]
                   ) -> dict[str, Any]:
    """One screen by the default score: its cost against the full study's, and its ranking against the
    all-image screen's and against the fine-tuned accuracy."""
    figures = selection_figures(run.results, accuracy, frontier_models, keep_top, (DEFAULT_SCORE,))[DEFAULT_SCORE]
    values, reference = selector_values(run.results, DEFAULT_SCORE), selector_values(all_images.results, DEFAULT_SCORE)
    common = [model for model in values if model in reference]
    kept_share = sum(trainer.get(model, 0.0) for model in figures["kept"]) / sum(trainer.values())
    return {
        **figures,
        "share": run.seconds / full_seconds,
        "with_kept": run.seconds / full_seconds + kept_share,
        "tau_screen": kendall_tau([values[m] for m in common], [reference[m] for m in common]),
    }


def meets_rule(figures: dict[str, Any], all_image_regret: float | None) -> bool:
    """The sample's rule: cheap enough, the best model kept wherever the all-image screen keeps it, and
    ordered like the all-image screen."""
    regret_ok = figures["regret"] is not None and (all_image_regret is None or figures["regret"] <= all_image_regret)
    return (figures["share"] <= GOAL_SCREEN_SHARE and regret_ok
            and figures["tau_screen"] is not None and figures["tau_screen"] >= CLOSE_TAU)


def suggested_sample(measured: list[dict[str, Any]], samples: list[int]) -> int | None:
    """The smallest sample_per_class whose screens meet `meets_rule` on every data set and seed."""
    for sample in sorted(samples):
        if all(meets_rule(figures, m["all_images"]["regret"])
               for m in measured for figures in m["screens"] if figures["sample_per_class"] == sample):
            return sample
    return None


# --- printing -----------------------------------------------------------------------------------


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def model_table(results: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]], weights: dict[str, str],
                trainer: dict[str, float]) -> str:
    body = []
    for model, result in results.items():
        scores = result["scores"] or {}
        row = rows.get(model, {})
        source = "random init" if result.get("pretrained") is False else ("file" if result["error"] is None else "-")
        body.append([
            model, source, number(result["seconds"], 1), *(number(scores.get(name)) for name in SCORE_CHOICES),
            number(imagenet_top1(result.get("trainer_model_id") or model), 1), str(row.get("status")),
            number(row.get("test_accuracy")), number(row.get("test_throughput"), 0),
            "yes" if row.get("on_frontier") else "no", number(trainer.get(model), 1),
            result["error"] or weights.get(model, ""),
        ])
    return table(["model", "weights", "screen s", *SCORE_CHOICES, "IN top1", "study", "test acc", "img/s",
                  "frontier", "trainer s", "weights made / error"], body)


def selection_table(figures: dict[str, dict[str, Any]]) -> str:
    body = [[selector, ", ".join(f["kept"]), number(f["frontier_kept"], 2),
             KEPT_WORDS[f["best_kept"]], number(f["regret"]), number(f["tau"], 2)]
            for selector, f in figures.items()]
    return table(["selected by", "kept", "frontier kept", "best kept", "regret", "tau vs test acc"], body)


def screens_table(screens: list[dict[str, Any]]) -> str:
    body = [[f["label"], str(f["seed"]), str(f["images"]), number(f["seconds"], 1), f"{f['share']:.1%}",
             f"{f['with_kept']:.1%}", number(f["tau_screen"], 2), number(f["tau"], 2), number(f["regret"]),
             KEPT_WORDS[f["best_kept"]], ", ".join(f["kept"])] for f in screens]
    return table(["screen", "seed", "images/model", "screen s", "screen / study", "+ kept / study",
                  "tau vs all-image screen", "tau vs test acc", "regret", "best kept", "kept"], body)


# --- one data set -------------------------------------------------------------------------------


def bench_dataset(name: str, models: list[str], keep_top: int, epochs: int, hyperparameters: dict[str, str],
                  weights: dict[str, str], samples: list[int], seeds: list[int], work: Path) -> dict[str, Any]:
    channels = dataset_channels(name, work)
    print(f"\n== {name}: {image_count(channels)} images, {len(models)} models, K = {keep_top}; "
          f"{machine_facts()}", flush=True)
    screen_plan = plan(models, name, channels, hyperparameters, epochs, work / f"{name}-plan")
    print("-- screen on all images (fresh jobs root, cold feature cache)", flush=True)
    all_images = run_screen(screen_plan, channels, work / f"{name}-screen-all")
    runs = [all_images]
    for sample in samples:
        for seed in seeds:
            run = run_screen(screen_plan, channels, work / f"{name}-screen-{sample}-{seed}", sample, seed,
                             log=lambda line: None)  # one line per run below, not one per model
            failed = [f"{model}: {result['error']}" for model, result in run.results.items() if result["error"]]
            print(f"-- screen on {run.label}, seed {seed}: {run.seconds:.1f} s, {run.images} images per model"
                  f"{'; failed: ' + '; '.join(failed) if failed else ''}", flush=True)
            runs.append(run)
    print(f"-- full study, whole model fine-tuned (train_only_top_layer "
          f"{hyperparameters.get('train_only_top_layer', 'auto')}; another fresh jobs root)", flush=True)
    study_root = work / f"{name}-study-jobs"
    full_seconds, study_rows, trainer = run_tuning_jobs(
        plan(models, name, channels, hyperparameters, epochs, study_root), study_root)
    candidates, _ = frontier(study_rows)
    rows = {row["model_id"]: row for row in study_rows}
    rows.update({row["model_id"]: row for row in candidates})
    frontier_models = {row["model_id"] for row in candidates if row["on_frontier"]}
    accuracy = {model: row.get("test_accuracy") if row.get("status") == "Completed" else None
                for model, row in rows.items()}
    figures = selection_figures(all_images.results, accuracy, frontier_models, keep_top)
    screens = [{"label": run.label, "sample_per_class": run.sample_per_class, "seed": run.seed, "images": run.images,
                "seconds": run.seconds,
                **screen_figures(run, all_images, accuracy, frontier_models, keep_top, full_seconds, trainer)}
               for run in runs]

    print(f"\n{name}: models (all-image screen's scores, ImageNet top-1 prior, full study's best trial)")
    print(model_table(all_images.results, rows, weights, trainer))
    print(f"\n{name}: the top {keep_top} of {len(models)} by each score of the all-image screen; "
          f"frontier = {sorted(frontier_models)}")
    print(selection_table(figures))
    for selector in SCORE_CHOICES:
        print(f"  {selector}: {figures[selector]['verdict']}")
    print(f"\n{name}: each screen by {DEFAULT_SCORE}, K = {keep_top}; T_full {full_seconds:.1f} s "
          f"(trainers {sum(trainer.values()):.1f} s); '+ kept' adds the kept models' share of the trainers' seconds")
    print(screens_table(screens), flush=True)
    return {"name": name, "full": full_seconds, "all_images": screens[0], "screens": screens[1:], "figures": figures}


def goal_lines(measured: list[dict[str, Any]], keep_top: int, samples: list[int]) -> list[str]:
    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    def worst(sample: int | None, key: str, pick: Callable[[list[float]], float] = max) -> dict[str, float | None]:
        """Per data set, the worst figure over the seeds (None: the all-image screen)."""
        figures = {m["name"]: [f[key] for f in [m["all_images"], *m["screens"]]
                               if f["sample_per_class"] == sample and f[key] is not None] for m in measured}
        return {name: pick(values) if values else None for name, values in figures.items()}

    def listed(figures: dict[str, Any], form: Callable[[Any], str]) -> str:
        return ", ".join(f"{name} {form(value)}" for name, value in figures.items())

    lines = []
    for sample in [None, *samples]:
        shares, with_kept = worst(sample, "share"), worst(sample, "with_kept")
        kept = {m["name"]: all(f["best_kept"] for f in [m["all_images"], *m["screens"]]
                               if f["sample_per_class"] == sample) for m in measured}
        label = "all images" if sample is None else f"sample_per_class {sample}"
        lines.append(
            f"{label}: screen <= {GOAL_SCREEN_SHARE:.0%} of the full study "
            f"{verdict(max(shares.values()) <= GOAL_SCREEN_SHARE)} ({listed(shares, '{:.1%}'.format)}); "
            f"best kept at K = {keep_top} by {DEFAULT_SCORE} {verdict(all(kept.values()))} "
            f"({listed(kept, KEPT_WORDS.get)}); screen + kept / study {listed(with_kept, '{:.1%}'.format)}"
            + ("" if sample is None else
               f"; lowest tau vs the all-image screen {listed(worst(sample, 'tau_screen', min), number)}")
        )
    for selector in SELECTORS:
        kept = {m["name"]: m["figures"][selector]["best_kept"] for m in measured}
        lines.append(f"all-image screen, best model kept at K = {keep_top} by {selector}: "
                     f"{verdict(all(kept.values()))} ({listed(kept, KEPT_WORDS.get)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated timm names (default: local-tiny + local-small, 8 models)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, among {', '.join(DATASETS)}")
    parser.add_argument("--keep-top", type=int, default=None, help="K (default: a quarter of the models, rounded up)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per training job (the DAG's default: 10)")
    parser.add_argument("--samples", default=",".join(map(str, SAMPLES)), help="sample_per_class values to screen with")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="sampling seeds per sample_per_class")
    parser.add_argument("--image-size", default="32", help="input size in pixels for every model (default 32)")
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="epochs on the source task per architecture")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="keep the pretrained-like weights here and reuse those already made "
                             "(default: a temp folder)")
    parser.add_argument("--train-only-top-layer", choices=("auto", "True", "False"), default="False",
                        help="False (default): the study fine-tunes the whole model; auto: the study's default "
                             "(top layer only when pretrained weights load)")
    arguments = parser.parse_args()
    models = [model.strip() for model in arguments.models.split(",") if model.strip()]
    datasets = [name.strip() for name in arguments.datasets.split(",") if name.strip()]
    samples = [int(value) for value in arguments.samples.split(",") if value.strip()]
    seeds = [int(value) for value in arguments.seeds.split(",") if value.strip()]
    if set(datasets) - set(DATASETS) or not datasets:
        parser.error(f"--datasets takes names among {', '.join(DATASETS)}; got {arguments.datasets!r}")
    keep_top = arguments.keep_top or math.ceil(len(models) / 4)
    if not 1 <= keep_top < len(models):
        parser.error(f"--keep-top must be at least 1 and below the {len(models)} models")
    if any(sample < 1 for sample in samples) or not seeds:
        parser.error("--samples takes integers of at least 1, --seeds at least one seed")

    print(f"bench_screen: {len(models)} models {models}, K = {keep_top}, {arguments.epochs} epochs, "
          f"image size {arguments.image_size}, samples per class {samples} x seeds {seeds}; "
          f"machine at start: {machine_facts()}", flush=True)
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
        measured = [bench_dataset(name, models, keep_top, arguments.epochs, hyperparameters, weights, samples, seeds,
                                  work) for name in datasets]
    print(f"\n== summary ({time.perf_counter() - started:.0f} s in all; machine at end: {machine_facts()})")
    for line in goal_lines(measured, keep_top, samples):
        print(line)
    suggested = suggested_sample(measured, samples)
    print(f"suggested sample_per_class: {suggested if suggested is not None else 'none of ' + str(samples)} (the "
          f"smallest whose screen, on every data set and seed, costs <= {GOAL_SCREEN_SHARE:.0%} of the full study, "
          f"keeps the best model wherever the all-image screen keeps it, and orders the models like the all-image "
          f"screen: tau >= {CLOSE_TAU}); the Param's default is {DEFAULT_SAMPLE_PER_CLASS}")
    print()
    print("\n".join(sim_report(suggested or DEFAULT_SAMPLE_PER_CLASS, Assumptions())), flush=True)


if __name__ == "__main__":
    main()
