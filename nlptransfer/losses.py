"""How per-task losses combine into one: registered weightings (`LOSS_WEIGHTINGS`)."""

from __future__ import annotations

import torch
from torch import nn


class StaticWeighting(nn.Module):
    """sum_t w_t * L_t with fixed weights (1.0 unless the task config gives `weight`)."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, factors: dict | None = None):
        super().__init__()
        self.weights = {task: float((weights or {}).get(task, 1.0)) for task in tasks}

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[task] * loss for task, loss in losses.items())


class UncertaintyWeighting(nn.Module):
    """Learned homoscedastic-uncertainty weights (Kendall, Gal & Cipolla, CVPR 2018).

    With s_t = log sigma_t^2 learned per task: classification adds exp(-s_t) L_t + s_t / 2 and
    regression exp(-s_t) L_t / 2 + s_t / 2 (the paper's 1/sigma^2 and 1/(2 sigma^2) factors, + log sigma).
    """

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, factors: dict | None = None):
        super().__init__()
        self.index = {task: i for i, task in enumerate(tasks)}
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)))
        self.factor = {task: float((factors or {}).get(task, 1.0)) for task in tasks}  # the kind's uncertainty_factor

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for task, loss in losses.items():
            s = self.log_vars[self.index[task]]
            total = total + self.factor[task] * torch.exp(-s) * loss + 0.5 * s
        return total


LOSS_WEIGHTINGS: dict[str, type[nn.Module]] = {"static": StaticWeighting, "uncertainty": UncertaintyWeighting}
