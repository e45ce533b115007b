"""Predict over a split with every process, gather once per example, and score on the host."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec


@torch.no_grad()
def predict_logits(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, size: int) -> list[np.ndarray]:
    """Logits of every feature, in feature order, each example exactly once across processes."""
    model.eval()
    logits_by_index: list[np.ndarray | None] = [None] * size
    gathered = 0
    for batch in loader:
        index = batch.pop("feature_index")
        batch.pop("labels", None)
        logits = model(**batch).logits
        if logits.dim() == 3:  # token logits: widths differ between processes
            logits = accelerator.pad_across_processes(logits, dim=1)
        index, logits = accelerator.gather_for_metrics((index, logits))
        gathered += len(index)
        for i, row in zip(index.tolist(), logits.float().cpu().numpy()):
            logits_by_index[i] = row
    model.train()
    missing = sum(row is None for row in logits_by_index)
    if missing or gathered != size:  # each example exactly once, whatever the number of processes
        raise RuntimeError(f"evaluation gathered {gathered} predictions for {size} examples ({missing} missing)")
    return logits_by_index


def host_loss(encoded: Encoded, logits: list[np.ndarray]) -> float:
    """Mean cross-entropy over labelled positions, computed once per example after gathering."""
    total, count = 0.0, 0
    for feature, row in zip(encoded.features, logits):
        labels = torch.as_tensor(feature["labels"]).reshape(-1)
        scores = torch.from_numpy(row).reshape(-1, row.shape[-1])[: labels.numel()]
        total += float(F.cross_entropy(scores, labels, ignore_index=-100, reduction="sum"))
        count += int((labels != -100).sum())
    return total / max(count, 1)


def evaluate(
    accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, encoded: Encoded, spec: TaskSpec
) -> dict[str, float]:
    logits = predict_logits(accelerator, model, loader, len(encoded.features))
    metrics = TASK_KINDS[spec.kind].score(encoded, logits, spec)
    metrics["loss"] = host_loss(encoded, logits)
    metrics["samples"] = len(encoded.records)
    return metrics


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in metrics.items()}
