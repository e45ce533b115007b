"""Predict over a split with every process, gather once per example, and score on the host."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec


@torch.no_grad()
def predict_logits(
    accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, size: int, task: str | None = None
) -> list[np.ndarray]:
    """Logits of every feature, in feature order, each example exactly once across processes.

    `task` picks one task's logits from a multi-task model's per-task outputs."""
    model.eval()
    logits_by_index: list[np.ndarray | None] = [None] * size
    gathered = 0
    for batch in loader:
        index = batch.pop("feature_index")
        batch.pop("labels", None)
        logits = model(**batch).logits
        if task is not None:
            logits = logits[task]
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


def host_loss(encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> float:
    """The kind's loss (mean over labelled positions) of all gathered predictions, computed once on the host."""
    kind = TASK_KINDS[spec.kind]
    if not logits:
        return 0.0
    labels = [torch.as_tensor(feature_labels) for feature_labels in encoded.feature_labels]
    scores = [torch.from_numpy(row) for row in logits]
    if kind.head == "token":  # widths differ between features: pad labels with -100, which the loss ignores
        scores = pad_sequence([s[: len(y)] for s, y in zip(scores, labels)], batch_first=True)
        labels = pad_sequence(labels, batch_first=True, padding_value=-100)
    else:
        scores, labels = torch.stack(scores), torch.stack(labels)
    return float(kind.loss(scores, labels, spec.class_weights))


def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: DataLoader,
    encoded: Encoded,
    spec: TaskSpec,
    task: str | None = None,
    calibrate: bool = False,
) -> dict[str, float]:
    """The kind's metrics, `loss` and `samples` of one split; `calibrate` (the validation split) first fits
    into `spec` what the kind chooses on these predictions (a multi-label task's thresholds)."""
    logits = predict_logits(accelerator, model, loader, len(encoded.features), task)
    kind = TASK_KINDS[spec.kind]
    if calibrate:
        kind.calibrate(encoded, logits, spec)
    metrics = kind.score(encoded, logits, spec)
    metrics["loss"] = host_loss(encoded, logits, spec)
    metrics["samples"] = len(encoded.records)
    return metrics


def evaluate_tasks(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loaders: dict[str, DataLoader],
    encoded: dict[str, dict[str, Encoded]],
    specs: dict[str, TaskSpec],
    split: str,
    calibrate: bool = False,
) -> dict[str, float]:
    """A multi-task model on one split: `<task>_<metric>` for every task with the split, the `average` of
    each task's main metric and the mean `loss`."""
    metrics, main = {}, []
    for name, loader in loaders.items():
        scores = evaluate(accelerator, model, loader, encoded[name][split], specs[name], task=name, calibrate=calibrate)
        metrics.update(prefixed(scores, name))
        main.append(scores[TASK_KINDS[specs[name].kind].default_metric])
    if main:
        metrics["average"] = sum(main) / len(main)
        metrics["loss"] = sum(metrics[f"{name}_loss"] for name in loaders) / len(loaders)
    return metrics


def negative_transfer_report(multi: dict, single: dict[str, dict], kinds: dict[str, str]) -> list[dict]:
    """Per task (`kinds`: task name -> task kind): the main test metric (validation if no test) of the
    multi-task run against the task trained alone; a drop is negative transfer."""
    rows = []
    for name, alone in single.items():
        metric = TASK_KINDS[kinds[name]].default_metric
        prefix = "test" if f"test_{name}_{metric}" in multi else "eval"
        key = f"{prefix}_{name}_{metric}"
        delta = multi[key] - alone[key]
        rows.append(
            {
                "task": name,
                "split": prefix,
                "metric": metric,
                "multi_task": multi[key],
                "single_task": alone[key],
                "delta": delta,
                "negative_transfer": delta < 0,
            }
        )
    return rows


def negative_transfer_markdown(rows: list[dict]) -> str:
    lines = ["| task | split | metric | multi-task | single-task | delta |", "|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **negative transfer**" if r["negative_transfer"] else ""
        lines.append(
            f"| {r['task']} | {r['split']} | {r['metric']} | {r['multi_task']:.4f} | {r['single_task']:.4f} "
            f"| {100 * r['delta']:+.2f}{flag} |"
        )
    return "\n".join(lines)


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in metrics.items()}
