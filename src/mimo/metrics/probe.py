"""Linear probe: how linearly decodable labels are from frozen features, on a held-out split.

A fixed recipe so that probe accuracies are comparable across models and runs: a seeded random
split, features standardised with the training part's statistics, then multinomial logistic
regression with an L2 penalty, fitted to its optimum by full-batch L-BFGS in float64. The penalty
strength C is swept (as docs/method.md asks) and picked on a validation part of the training split, then
the probe is refitted on the whole training split; the held-out part is used once, for the score.
The objective is scikit-learn's `LogisticRegression(C=C)` (mean cross-entropy + ‖W‖²/(2·C·n), the
bias unpenalised), so the two agree; torch keeps scikit-learn optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths, as scikit-learn's C
HELD_OUT_FRACTION = 0.2
VALIDATION_FRACTION = 0.2  # of the training split, for choosing C
LBFGS_MAX_ITERATIONS = 500
STANDARDISE_EPS = 1e-8  # keeps constant feature dimensions at zero instead of NaN


@dataclass(frozen=True)
class ProbeResult:
    held_out_accuracy: float
    train_accuracy: float
    c: float
    num_train: int
    num_held_out: int


def split_indices(num_samples: int, held_out_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random (train, held-out) index split."""
    num_held_out = round(num_samples * held_out_fraction)
    if not 0 < num_held_out < num_samples:
        raise ValueError(
            f"a held-out fraction of {held_out_fraction} leaves {num_held_out} of {num_samples} samples held out; "
            "both parts need at least one sample"
        )
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[num_held_out:], order[:num_held_out]


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Zero mean, unit variance per dimension, with the training features' statistics only."""
    mean, std = train.mean(dim=0), train.std(dim=0)
    return [(x - mean) / (std + STANDARDISE_EPS) for x in (train, *others)]


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float = 1.0
) -> torch.nn.Linear:
    """Minimise mean cross-entropy + ‖W‖²/(2·C·n) (scikit-learn's objective) with full-batch L-BFGS."""
    x = features.double()
    linear = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    penalty = 1.0 / (2 * c * x.shape[0])
    optimizer = torch.optim.LBFGS(
        linear.parameters(),
        max_iter=LBFGS_MAX_ITERATIONS,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), labels) + penalty * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear.requires_grad_(False)


def _accuracy(linear: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return (linear(features.double()).argmax(dim=1) == labels).double().mean().item()


def _select_c(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, grid: Sequence[float], seed: int
) -> float:
    """The C with the best validation accuracy (the smallest C on ties: the simplest probe)."""
    fit_part, validation_part = split_indices(len(labels), VALIDATION_FRACTION, seed + 1)
    fit_x, validation_x = standardise(features[fit_part], features[validation_part])
    probes = [fit_logistic_regression(fit_x, labels[fit_part], num_classes, c) for c in grid]
    scores = [_accuracy(probe, validation_x, labels[validation_part]) for probe in probes]
    return grid[scores.index(max(scores))]


def linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    c: float | Sequence[float] = DEFAULT_C_GRID,
    held_out_fraction: float = HELD_OUT_FRACTION,
    seed: int = 0,
) -> ProbeResult:
    """Held-out accuracy of a logistic-regression probe on features (N, D) for labels (N,).

    `c` is one inverse L2 strength, or a grid to choose from on a validation part of the training split.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    features, labels = features.detach().double().cpu(), labels.detach().long().cpu()
    num_classes = int(labels.max()) + 1
    train, held_out = split_indices(len(labels), held_out_fraction, seed)
    grid = [c] if isinstance(c, float | int) else list(c)
    chosen_c = grid[0] if len(grid) == 1 else _select_c(features[train], labels[train], num_classes, grid, seed)
    train_x, held_out_x = standardise(features[train], features[held_out])
    probe = fit_logistic_regression(train_x, labels[train], num_classes, chosen_c)
    return ProbeResult(
        held_out_accuracy=_accuracy(probe, held_out_x, labels[held_out]),
        train_accuracy=_accuracy(probe, train_x, labels[train]),
        c=float(chosen_c),
        num_train=len(train),
        num_held_out=len(held_out),
    )
