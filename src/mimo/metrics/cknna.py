"""CKNNA: centred kernel alignment restricted to mutual k-nearest neighbours.

The alignment metric of "The Platonic Representation Hypothesis" (Huh et al. 2024), used by the
paper to compare the backbone's history features with a reference model's. With L2-normalised
rows, K = AAᵀ and L = BBᵀ; mask_K (mask_L) marks each row's k nearest neighbours by K (L),
itself excluded; α = mask_K ⊙ mask_L keeps the pairs that are neighbours in both spaces, and

    CKNNA = HSIC_u(α⊙K, α⊙L) / sqrt(HSIC_u(mask_K⊙K, mask_K⊙K) · HSIC_u(mask_L⊙L, mask_L⊙L)).

It is 1 when the two spaces have the same neighbourhood structure with the same similarities (any
rotation of the features) and about 0 for unrelated features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_TOP_K = 10  # the platonic-rep default, and docs/method.md's


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of Song et al. 2012 (diagonals zeroed), for (m, m) kernel matrices, m > 3.

    HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((m−1)(m−2)) − 2/(m−2)·1ᵀK̃L̃1] / (m(m−3)).
    """
    m = k.shape[0]
    if m <= 3:
        raise ValueError(f"unbiased HSIC needs more than 3 samples, got {m}")
    k_tilde = k - torch.diag_embed(torch.diagonal(k))
    l_tilde = l - torch.diag_embed(torch.diagonal(l))
    trace_term = (k_tilde * l_tilde.T).sum()  # tr(K̃L̃) without the matrix product
    sums_term = k_tilde.sum() * l_tilde.sum() / ((m - 1) * (m - 2))
    cross_term = 2 * (k_tilde.sum(dim=0) @ l_tilde.sum(dim=1)) / (m - 2)  # 1ᵀK̃L̃1
    return (trace_term + sums_term - cross_term) / (m * (m - 3))


def nearest_neighbour_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """(m, m) 0/1 mask of each row's k most similar other rows."""
    without_self = kernel.clone().fill_diagonal_(float("-inf"))
    neighbours = without_self.topk(k, dim=1).indices
    return torch.zeros_like(kernel).scatter_(1, neighbours, 1.0)


def cknna(features_a: torch.Tensor, features_b: torch.Tensor, k: int = DEFAULT_TOP_K) -> float:
    """CKNNA between two representations (m, D_a) and (m, D_b) of the same m samples."""
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[0] != features_b.shape[0]:
        raise ValueError(
            f"expected (m, D) feature matrices of the same m samples, got {tuple(features_a.shape)} and "
            f"{tuple(features_b.shape)}"
        )
    m = features_a.shape[0]
    if not 2 <= k < m:
        raise ValueError(f"k must be in [2, m) for m = {m} samples, got k = {k}")
    a = F.normalize(features_a.double(), dim=1)
    b = F.normalize(features_b.double(), dim=1)
    kernel_a, kernel_b = a @ a.T, b @ b.T
    mask_a, mask_b = nearest_neighbour_mask(kernel_a, k), nearest_neighbour_mask(kernel_b, k)
    mutual = mask_a * mask_b
    alignment = hsic_unbiased(mutual * kernel_a, mutual * kernel_b)
    self_a = hsic_unbiased(mask_a * kernel_a, mask_a * kernel_a)
    self_b = hsic_unbiased(mask_b * kernel_b, mask_b * kernel_b)
    return float(alignment / torch.sqrt(self_a * self_b))
