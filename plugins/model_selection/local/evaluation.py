"""Loss, the JumpStart script's metrics, and honest per-example test timing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from model_selection.metrics import dataset_metric_names


@dataclasses.dataclass(frozen=True)
class Task:
    """Binary problems have one sigmoid output; others one softmax output per class."""

    num_classes: int
    binary: bool
    label_smoothing: float

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else self.num_classes

    @property
    def metric_names(self) -> tuple[str, ...]:
        return dataset_metric_names(self.num_classes, self.binary)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.binary:
            targets = labels.float() * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(outputs.squeeze(1), targets)
        return F.cross_entropy(outputs, labels, label_smoothing=self.label_smoothing)

    def metrics(self, outputs: torch.Tensor, labels: torch.Tensor, penalty: float = 0.0) -> dict[str, float]:
        """Every metric of this problem type over a whole split, loss including the L2 penalty."""
        outputs, labels = outputs.float(), labels.long()
        result = {"loss": float(self.loss(outputs, labels)) + penalty}
        if self.binary:
            scores = torch.sigmoid(outputs.squeeze(1)).numpy()
            result.update(binary_metrics(scores, labels.numpy()))
            return result
        result["accuracy"] = float((outputs.argmax(dim=1) == labels).float().mean())
        if "top_5_accuracy" in self.metric_names:
            top5 = outputs.topk(5, dim=1).indices
            result["top_5_accuracy"] = float((top5 == labels[:, None]).any(dim=1).float().mean())
        return result


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Keras' binary metrics: counts at the threshold, precision, recall, ROC AUC and PR AUC."""
    predicted = scores >= threshold
    positive = labels == 1
    true_pos = float(np.sum(predicted & positive))
    false_pos = float(np.sum(predicted & ~positive))
    true_neg = float(np.sum(~predicted & ~positive))
    false_neg = float(np.sum(~predicted & positive))
    return {
        "accuracy": (true_pos + true_neg) / len(labels),
        "true_pos": true_pos,
        "false_pos": false_pos,
        "true_neg": true_neg,
        "false_neg": false_neg,
        "precision": true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0,
        "recall": true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0,
        "auc": roc_auc(scores, positive),
        "prc": average_precision(scores, positive),
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties count half); 0 when a class is absent."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return 0.0
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision; 0 without positives."""
    n_pos = int(positive.sum())
    if not n_pos:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    hits = positive[order].astype(float)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / n_pos)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device: torch.device):
    """Outputs and labels over all batches, on the CPU."""
    outputs, labels = [], []
    for inputs, targets in batches:
        outputs.append(forward(inputs.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(outputs), torch.cat(labels)


@dataclasses.dataclass(frozen=True)
class TestTiming:
    evaluation_latency: float  # wall time of the whole evaluation, data loading included
    compute_seconds: float  # model forward passes only, after one warm-up batch
    examples: int
    batch_size: int

    @property
    def latency_per_sample(self) -> float:
        return self.compute_seconds / self.examples

    @property
    def throughput(self) -> float:
        return self.examples / self.compute_seconds


@torch.inference_mode()
def timed_predict(model: torch.nn.Module, batches: Iterable, device: torch.device, batch_size: int):
    """Outputs, labels and per-example timing of the model in inference mode.

    The first batch runs once untimed to warm up (allocation, kernel choice); then every
    batch, the first included, is timed from input on the device to output synchronised.
    """
    model.eval()
    outputs, labels = [], []
    compute_seconds = 0.0
    started = time.perf_counter()
    for index, (inputs, targets) in enumerate(batches):
        inputs = inputs.to(device, non_blocking=True)
        if index == 0:
            model(inputs)
        synchronize(device)
        before = time.perf_counter()
        result = model(inputs)
        synchronize(device)
        compute_seconds += time.perf_counter() - before
        outputs.append(result.float().cpu())
        labels.append(torch.as_tensor(targets))
    evaluation_latency = time.perf_counter() - started
    outputs_all, labels_all = torch.cat(outputs), torch.cat(labels)
    timing = TestTiming(evaluation_latency, compute_seconds, len(labels_all), batch_size)
    return outputs_all, labels_all, timing
