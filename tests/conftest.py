"""Shared fixtures: tiny, generated image data sets and a way to run the trainer for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# pytest-xdist's workers run side by side: each worker's processes (trainers, Airflow, torch in the test itself)
# get its share of the cores, as `OMP_NUM_THREADS`, which the local backend passes to its trainers as their cap.
# Set before numpy and torch load, so the cores are counted here: importing the supervisor's `usable_cores`
# would load numpy first. More OpenMP threads than free cores spin-wait for each other
# (model_selection.local.supervisor.trainer_threads).
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // XDIST_WORKERS)))

import numpy as np  # noqa: E402 - after the thread count above
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PLUGINS = PROJECT_ROOT / "plugins"

# No test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"


def write_image_folders(root: Path, classes: int, per_class: int, size: int = 16, seed: int = 0) -> Path:
    """Class k is a noisy image of its own colour and stripe: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, size=3)
        for index in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 25, size=(size, size, 3)), 0, 255)
            pixels[(label * 3) % size : (label * 3) % size + 2, :, :] = 255
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"image_{index:03d}.png")
    return root


@pytest.fixture
def dataset(tmp_path: Path):
    """A factory: channels (training, validation, test) of `classes` classes."""

    def make(classes: int = 3, per_class: int = 8, test: bool = True, validation: bool = True) -> dict[str, Path]:
        channels = {"training": write_image_folders(tmp_path / "data" / "training", classes, per_class, seed=1)}
        if validation:
            channels["validation"] = write_image_folders(tmp_path / "data" / "validation", classes, max(per_class // 2, 2), seed=2)
        if test:
            channels["test"] = write_image_folders(tmp_path / "data" / "test", classes, max(per_class // 2, 2), seed=3)
        return channels

    return make


TINY_MODEL = {"model_id": "test_efficientnet", "pretrained": "false", "image_size": "16", "batch_size": "8"}


@pytest.fixture
def hooked(monkeypatch):
    """Registers handlers on every SageMaker botocore client made from now on (the provider's hook makes them)."""
    import botocore.session

    handlers: list = []
    create_client = botocore.session.Session.create_client

    def create_and_hook(self, *args, **kwargs):
        client = create_client(self, *args, **kwargs)
        for handler in handlers:
            client.meta.events.register("before-send.sagemaker.*", handler)
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", create_and_hook)
    return handlers


class SageMakerContract:
    """Holds every SageMaker request a botocore client sends to SageMaker's whole service model.

    botocore checks types, required members and minimums; SageMaker also refuses what breaks a
    maximum, pattern or enum, and moto (the suite's SageMaker) refuses none of it. A refused
    request raises AssertionError before it is sent, and is kept in `violations`, so the test
    fails at teardown even where the code under test swallows the error. A test that sends a bad
    request on purpose clears `violations` once it has seen the refusal.
    """

    PARAMS = "model_selection.contract.params"

    def __init__(self) -> None:
        self.violations: list[str] = []

    def keep_params(self, params, context, **kwargs) -> None:
        context[self.PARAMS] = params  # the caller's parameters; before-call sees them serialized

    def check(self, model, context, **kwargs) -> None:
        from model_selection.backends.api import request_problems

        if model.service_model.service_name != "sagemaker" or self.PARAMS not in context:
            return
        problems = request_problems(model.name, context[self.PARAMS])
        if problems:
            message = f"SageMaker would refuse this {model.name} request: " + "; ".join(problems)
            self.violations.append(message)
            raise AssertionError(message)

    def hook(self, client) -> None:
        client.meta.events.register("before-parameter-build.sagemaker.*", self.keep_params)
        client.meta.events.register("before-call.sagemaker.*", self.check)

    def unhook(self, client) -> None:
        client.meta.events.unregister("before-parameter-build.sagemaker.*", self.keep_params)
        client.meta.events.unregister("before-call.sagemaker.*", self.check)


@pytest.fixture(autouse=True)
def sagemaker_contract(monkeypatch):
    """Every botocore client made during a test checks its SageMaker requests (SageMakerContract)."""
    import botocore.session

    contract = SageMakerContract()
    create_client = botocore.session.Session.create_client

    def create_and_check(self, *args, **kwargs):
        client = create_client(self, *args, **kwargs)
        contract.hook(client)
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", create_and_check)
    yield contract
    if contract.violations:
        pytest.fail("\n".join(contract.violations), pytrace=False)


def run_trainer(arguments: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The trainer as SageMaker or the local backend runs it: a separate process."""
    environment = {**os.environ, "PYTHONPATH": str(PLUGINS), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "model_selection.local.train", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def pytest_terminal_summary(terminalreporter) -> None:
    """The reliability figures (tests/test_reliability.py), when those tests ran."""
    figures = getattr(sys.modules.get("test_reliability"), "FIGURES", None)
    if not figures:
        return
    columns = ("fault", "models", "faults", "completed", "duplicates", "lost")
    widths = [max(len(str(row.get(column, ""))) for row in [dict(zip(columns, columns)), *figures]) for column in columns]
    terminalreporter.section("reliability: per fault, models / faults injected / completed / duplicate launches / results lost")
    for row in [dict(zip(columns, columns)), *figures]:
        terminalreporter.write_line(" | ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


# Module-scoped fixtures that are expensive to make (a running Airflow, trained models, converted
# weights) or that carry state from one test to the next (a study killed mid-run).
SHARED_MODULE_FIXTURES = frozenset({"airflow", "finished_run", "killed_study", "faulted_study", "study", "feature_sets",
                                    "lite0"})


def pytest_collection_modifyitems(items) -> None:
    """`make test` spreads tests over pytest-xdist workers (`--dist loadgroup`); the tests of a module
    that share one of its expensive fixtures stay together in one worker, in file order. xdist hands out the
    largest groups first, then single tests in collection order: the `slow` ones go to the front of that
    order, so that no worker is left running one alone while the other has finished."""
    for item in items:
        if SHARED_MODULE_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise
