"""Train a few small timm models on the bundled digits and print how they compare.

    python include/demo_trainer.py WORK_DIR MODEL_ID [MODEL_ID ...]

Each model is one run of the local trainer in its own process (as one training job),
fully fine-tuned from random weights at 32x32 so that it needs no download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_digits_dataset import write_digits  # noqa: E402

HYPERPARAMETERS = {"pretrained": "false", "image_size": "32", "epochs": "8", "train_only_top_layer": "False"}
COLUMNS = ("Model", "Test Accuracy", "Test Top 5 Accuracy", "Throughput (images/s)", "Parameters", "Duration per Epoch (s)")


def train_model(data: Path, model_id: str, model_dir: Path) -> dict:
    hyperparameters = {**HYPERPARAMETERS, "model_id": model_id}
    command = [sys.executable, "-m", "model_selection.local.train", "--model-dir", str(model_dir),
               "--hyperparameters", json.dumps(hyperparameters)]
    for channel in ("training", "validation", "test"):
        command += [f"--{channel}", str(data / channel)]
    print(f"training {model_id} ...", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((model_dir / "metrics.json").read_text())["metrics"]


def main() -> None:
    work_dir, model_ids = Path(sys.argv[1]), sys.argv[2:]
    data = write_digits(work_dir / "digits")
    rows = []
    for model_id in model_ids:
        metrics = train_model(data, model_id, work_dir / "models" / model_id)
        rows.append((model_id, f"{metrics['test_accuracy']:.1%}", f"{metrics['test_top_5_accuracy']:.1%}",
                     f"{metrics['test_throughput']:.0f}", f"{metrics['num_params'] / 1e6:.1f}M",
                     f"{metrics['train_epoch_duration']:.1f}"))
    rows.sort(key=lambda row: float(row[3]))
    widths = [max(len(str(row[i])) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for row in [COLUMNS, tuple("-" * width for width in widths), *rows]:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print(f"\nModels, logs and metrics.json: {work_dir / 'models'}")


if __name__ == "__main__":
    main()
