"""The screen's dollars on SageMaker, simulated from the seed's Caltech-256 study (no AWS call is made).

    python benchmarks/sim_sagemaker_screen.py [--sample-per-class N] [--startup-seconds S] [--download-mb-per-s R]

There is no SageMaker account where this project is built, so the screen's saving on SageMaker cannot
be measured; the seed's own study is the closest record of what its tuning jobs cost. The seed
(shared/docs/seed-article.txt) fine-tuned JumpStart TensorFlow models on Caltech-256 on ml.g4dn.xlarge
and published, for the 21 models of its frontier, the duration per epoch (include/seed_study/). From
that table, the price table (include/prices/) and the JumpStart -> timm map (include/model_maps/):

- each model's tuning job is 2 training jobs (learning rates 1x and 0.2x), each billed
  start-up + epochs x the table's duration per epoch;
- the screen is one training job: start-up, then per scored candidate the download of its timm
  twin's weights, one forward pass over the sample (the table's epoch duration x sample fraction x a
  forward-only factor) and the scoring (measured here, on synthetic features of the widest twin's width);
- at K = ceil(N / 4) of the N scored candidates, the screen keeps the K most accurate (the goal: the
  best model kept) and saves the others' tuning jobs.

Every figure that does not come from those tables or a measurement here is an assumption, printed by name.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins")]

import numpy as np  # noqa: E402

from model_selection.cost import load_prices  # noqa: E402
from model_selection.local.jumpstart_map import translate_jumpstart_ids  # noqa: E402
from model_selection.screening import DEFAULT_SAMPLE_PER_CLASS, score_features  # noqa: E402

SEED_TABLE = ROOT / "include" / "seed_study" / "caltech256-frontier-g4dn-xlarge.csv"
INSTANCE_TYPE = "ml.g4dn.xlarge"  # every training job of the seed's study ran on it
LEARNING_RATES = 2  # the seed's tuning jobs: the default learning rate and a fifth of it
SEED_EPOCHS = 10  # the seed's setting
EARLIEST_STOP_EPOCHS = 4  # early stopping with the seed's patience of 3 ends a job after 1 + 3 epochs at the earliest
CLASSES = 256  # Caltech-256's object classes (the project's caltech256 split leaves the clutter class out)
OBJECT_IMAGES = 29_780  # Caltech-256's 30,607 images less the 827 of the clutter class


@dataclasses.dataclass(frozen=True)
class SeedModel:
    """One row of the seed's frontier table."""

    jumpstart_id: str
    parameters_millions: float
    test_accuracy: float
    seconds_per_epoch: float


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """What the simulation cannot read from a table or measure here; each one printed with its reason."""

    startup_seconds: float = 120.0
    training_images_per_epoch: int = round(0.7 * OBJECT_IMAGES)
    forward_factor: float = 1.0
    download_mb_per_s: float = 50.0
    bytes_per_parameter: int = 4

    def lines(self) -> list[str]:
        return [
            f"start-up: {self.startup_seconds:.0f} s billed per training job (ASSUMED, not measured: no AWS account "
            "here). Billing runs from TrainingStartTime, which DescribeTrainingJob documents as coming before the "
            "container image's and the data channels' download; a multi-GB deep-learning image plus Caltech-256 "
            "(1.2 GB) and the program's own set-up (JumpStart's artifact, the screen's pip install of timm) are put "
            "at 2 minutes. Instance provisioning before TrainingStartTime is not billed.",
            f"training images per epoch: {self.training_images_per_epoch:,} (ASSUMED: 70 % of Caltech-256's "
            f"{OBJECT_IMAGES:,} object-class images, the project's caltech256 split; the article states neither its "
            "split nor whether an epoch's duration includes the validation pass; a larger figure, or a duration "
            "that includes validation, makes the per-image cost and so the screen's estimate smaller).",
            f"forward-only factor: {self.forward_factor:g} (ASSUMED: the seed kept JumpStart's default "
            "train_only_on_top_layer=True, so each of its epochs is one forward pass of the frozen backbone over the "
            "training images plus the top layer's step; the screen's pass costs that per image).",
            f"weights download: {self.bytes_per_parameter} bytes x the table's parameters per twin, at "
            f"{self.download_mb_per_s:g} MB/s from the Hugging Face Hub (ASSUMED bandwidth; float32 safetensors).",
            f"sample: sample_per_class x {CLASSES} classes x 2 channels (training and validation) per candidate, an "
            "upper bound (a class with fewer images gives all it has).",
            f"the study's epochs: {SEED_EPOCHS} (the seed's setting, if no job stopped early) and "
            f"{EARLIEST_STOP_EPOCHS} (the earliest early stopping with patience 3 ends a job); the seed's table does "
            "not say how many epochs each job ran, so the study's cost lies between the two.",
        ]


def load_seed_table(path: Path = SEED_TABLE) -> list[SeedModel]:
    """The seed's published rows: the only record of what its tuning jobs cost."""
    with open(path, newline="") as handle:
        return [SeedModel(row["jumpstart_id"], float(row["parameters_millions"]),
                          float(row["test_accuracy_percent"]) / 100, float(row["seconds_per_epoch"]))
                for row in csv.DictReader(handle)]


def tuning_job_seconds(model: SeedModel, epochs: int, assumptions: Assumptions) -> float:
    """Billed seconds of one model's tuning job: its training jobs, each start-up plus its epochs."""
    return LEARNING_RATES * (assumptions.startup_seconds + epochs * model.seconds_per_epoch)


def feature_width(timm_name: str) -> int:
    """The width of the features the screen scores (timm's pre-logits), from the architecture without weights."""
    import timm

    model = timm.create_model(timm_name, pretrained=False)
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def scoring_seconds(images_per_class: int, width: int) -> float:
    """Seconds of `score_features` here on synthetic features of the screen's shape (a stand-in for the
    instance's CPU; LogME's iterations depend on the data, so this is an estimate)."""
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), images_per_class)
    centres = generator.normal(size=(CLASSES, width))
    train, evaluation = (centres[labels] + 3 * generator.normal(size=(len(labels), width)) for _ in range(2))
    started = time.perf_counter()
    score_features(train, labels, evaluation, labels)
    return time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class ScreenJob:
    """The screen's one training job, per scored candidate: (download, forward pass, scoring) seconds."""

    startup_seconds: float
    per_candidate: dict[str, tuple[float, float, float]]

    @property
    def seconds(self) -> float:
        return self.startup_seconds + sum(sum(parts) for parts in self.per_candidate.values())


def screen_job(scored: Iterable[SeedModel], sample_per_class: int, score_seconds: float,
               assumptions: Assumptions) -> ScreenJob:
    sample_fraction = sample_per_class * CLASSES * 2 / assumptions.training_images_per_epoch
    return ScreenJob(assumptions.startup_seconds, {
        model.jumpstart_id: (
            model.parameters_millions * 1e6 * assumptions.bytes_per_parameter / (assumptions.download_mb_per_s * 1e6),
            model.seconds_per_epoch * sample_fraction * assumptions.forward_factor,
            score_seconds,
        ) for model in scored
    })


def dollars(seconds: float, usd_per_hour: float) -> float:
    return seconds / 3600 * usd_per_hour


def short(model_id: str) -> str:
    return model_id.removeprefix("tensorflow-ic-").removeprefix("imagenet-")


def kept_and_dropped(scored: Sequence[SeedModel]) -> tuple[list[SeedModel], list[SeedModel]]:
    """The K = ceil(N/4) most accurate of the scored (what a screen that meets its goal keeps) and the others."""
    ranked = sorted(scored, key=lambda model: -model.test_accuracy)
    keep_top = math.ceil(len(scored) / 4)
    return ranked[:keep_top], ranked[keep_top:]


def dollar_lines(models: Sequence[SeedModel], scored: Sequence[SeedModel], screen: ScreenJob,
                 assumptions: Assumptions, usd_per_hour: float) -> list[str]:
    """Per bound on the study's epochs: the study's, the saved and the screen's dollars."""
    kept, dropped = kept_and_dropped(scored)
    by_cost = sorted(scored, key=lambda model: model.seconds_per_epoch)
    screen_usd = dollars(screen.seconds, usd_per_hour)
    lines = []
    for epochs in (SEED_EPOCHS, EARLIEST_STOP_EPOCHS):
        def cost(group: Iterable[SeedModel], epochs: int = epochs) -> float:
            return dollars(sum(tuning_job_seconds(model, epochs, assumptions) for model in group), usd_per_hour)

        study, saved = cost(models), cost(dropped)
        least, most = cost(by_cost[:-len(kept)]), cost(by_cost[len(kept):])  # it keeps the dearest / cheapest K
        lines.append(
            f"  {epochs:>2} epochs per job: study ${study:,.2f}; saved ${saved:,.2f} "
            f"({saved / study:.1%} of the study; whichever {len(kept)} it keeps: ${least:,.2f} to ${most:,.2f}); "
            f"screen ${screen_usd:,.2f} ({screen_usd / study:.2%} of the study); net saved ${saved - screen_usd:,.2f}"
        )
    return lines


def scenario_lines(title: str, models: Sequence[SeedModel], scored: Sequence[SeedModel], screen: ScreenJob,
                   assumptions: Assumptions, usd_per_hour: float) -> list[str]:
    """What a screen of `scored` that keeps the K most accurate saves against tuning every model."""
    kept, dropped = kept_and_dropped(scored)
    return [f"{title}: {len(scored)} of {len(models)} scored; K = ceil({len(scored)}/4) = {len(kept)} kept, ASSUMED "
            f"to be the most accurate in the seed's table ({', '.join(short(model.jumpstart_id) for model in kept)}); "
            f"{len(dropped)} screened out, {LEARNING_RATES * len(dropped)} training jobs not run",
            *dollar_lines(models, scored, screen, assumptions, usd_per_hour)]


def report(sample_per_class: int, assumptions: Assumptions, alternative_startups: Sequence[float] = (60.0, 300.0)
           ) -> list[str]:
    """The simulation's printed lines: the assumptions, the screen's job, and both scenarios' dollars."""
    prices = load_prices()
    usd_per_hour = prices.price(INSTANCE_TYPE)
    if usd_per_hour is None:
        raise SystemExit(f"the price table has no {INSTANCE_TYPE}")
    models = load_seed_table()
    twins = translate_jumpstart_ids([model.jumpstart_id for model in models], ROOT).timm_names  # exact twins only
    scored = [model for model in models if model.jumpstart_id in twins]
    widths = {name: feature_width(name) for name in set(twins.values())}
    widest = max(widths, key=widths.__getitem__)
    width = widths[widest]
    score_seconds = scoring_seconds(sample_per_class, width)
    lines = [
        f"== simulated SageMaker study: the seed's Caltech-256 frontier, {len(models)} JumpStart models "
        f"({SEED_TABLE.relative_to(ROOT)}), {INSTANCE_TYPE} at ${usd_per_hour}/h (include/prices, as of "
        f"{prices.as_of}, {prices.region}; the table's own note: not the AWS price list, to be checked)",
        "assumptions:", *(f"  - {line}" for line in assumptions.lines()),
        f"measured: scoring one candidate (kNN, linear probe, LogME) on {sample_per_class} x {CLASSES} training and "
        f"as many validation features of width {width} (the widest exact twin, {widest}) took {score_seconds:.1f} s "
        "here; used for every candidate (an upper bound: the others are narrower)",
    ]
    mapped = screen_job(scored, sample_per_class, score_seconds, assumptions)
    lines.append(f"the screen's one training job (sample_per_class {sample_per_class}), per candidate with an exact "
                 "twin: download + forward pass + scoring seconds")
    lines += [f"  {short(model_id):<40} {twins[model_id]:<48} {download:6.1f} + {forward:7.1f} + {scoring:5.1f}"
              for model_id, (download, forward, scoring) in mapped.per_candidate.items()]
    lines.append(f"  start-up {mapped.startup_seconds:.0f} s; the job: {mapped.seconds:,.0f} s = "
                 f"${dollars(mapped.seconds, usd_per_hour):,.2f}")
    every = screen_job(models, sample_per_class, score_seconds, assumptions)
    unscored = len(models) - len(scored)
    lines += scenario_lines(f"as mapped (the {unscored} without an exact twin pass unscored and are fine-tuned)",
                            models, scored, mapped, assumptions, usd_per_hour)
    lines += scenario_lines("if every candidate had an exact twin", models, models, every, assumptions, usd_per_hour)
    for startup in alternative_startups:
        other = dataclasses.replace(assumptions, startup_seconds=startup)
        lines.append(f"as mapped, with a start-up of {startup:.0f} s per training job instead:")
        lines += dollar_lines(models, scored, screen_job(scored, sample_per_class, score_seconds, other), other,
                              usd_per_hour)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-per-class", type=int, default=DEFAULT_SAMPLE_PER_CLASS,
                        help=f"images per class of training and of validation (default: the Param's, "
                             f"{DEFAULT_SAMPLE_PER_CLASS})")
    parser.add_argument("--startup-seconds", type=float, default=Assumptions.startup_seconds,
                        help="billed start-up per training job (an assumption)")
    parser.add_argument("--download-mb-per-s", type=float, default=Assumptions.download_mb_per_s,
                        help="bandwidth for the twins' weights (an assumption)")
    arguments = parser.parse_args()
    assumptions = Assumptions(startup_seconds=arguments.startup_seconds, download_mb_per_s=arguments.download_mb_per_s)
    print("\n".join(report(arguments.sample_per_class, assumptions)))


if __name__ == "__main__":
    main()
