"""Fréchet distance between two feature distributions, from sums that can be reduced across ranks.

FD(N(μ₁, Σ₁), N(μ₂, Σ₂)) = |μ₁ − μ₂|² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁Σ₂)^½)   (Dowson & Landau 1982),
the distance behind FID and FVD. Features are accumulated as plain float64 tensors (Σx, Σxxᵀ, n), so
each data-parallel rank sums its own share and a single `all_reduce` gives the exact global
statistics — nothing is gathered, and the result does not depend on how the set was split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import scipy.linalg
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from mimo.errors import NonFiniteValuesError

SqrtMethod = Literal["sqrtm", "eigh"]
# Which divisor turns the centred scatter matrix into Σ: the original FVD (Unterthiner et al.,
# computed with TF-GAN's `frechet_classifier_distance_from_activations`) divides by n − 1;
# StyleGAN-V's `FeatureStats` (used by FAR and DFoT) divides by n. They differ by O(Tr Σ / n).
CovarianceNormaliser = Literal["tf-gan", "stylegan-v"]
COVARIANCE_DDOF: dict[str, int] = {"tf-gan": 1, "stylegan-v": 0}
DEFAULT_COVARIANCE_NORMALISER: CovarianceNormaliser = "tf-gan"


class FeatureStatistics:
    """Running Σx, Σxxᵀ and n of feature vectors, in float64.

    float64 matters: with 400-d I3D logits and thousands of videos, E[xxᵀ] − μμᵀ in float32 loses
    the small eigenvalues the matrix square root depends on.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.feature_sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer_sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        # Tensors, not ints, so that they are reduced together with the sums.
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.float64, device=device)  # samples with a NaN or inf feature

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, D)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"FeatureStatistics expects features of shape (N, {self.dim}), got {tuple(features.shape)}; "
                "flatten each sample to one vector first."
            )
        x = features.detach().to(device=self.feature_sum.device, dtype=torch.float64)
        self.nonfinite += (~torch.isfinite(x).all(dim=1)).sum()
        self.feature_sum += x.sum(dim=0)
        self.outer_sum += x.T @ x
        self.count += x.shape[0]

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Add another accumulator's sums into this one (e.g. shards computed separately); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into dimension {self.dim}")
        self.feature_sum += other.feature_sum.to(self.feature_sum.device)
        self.outer_sum += other.outer_sum.to(self.outer_sum.device)
        self.count += other.count.to(self.count.device)
        self.nonfinite += other.nonfinite.to(self.nonfinite.device)
        return self

    def all_reduce(self) -> FeatureStatistics:
        """Sum the statistics over all ranks when torch.distributed is initialised (no-op otherwise).

        Under NCCL the accumulator must live on the rank's GPU (`device=` at construction).
        """
        if dist.is_available() and dist.is_initialized():
            for tensor in (self.feature_sum, self.outer_sum, self.count, self.nonfinite):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return self

    @property
    def num_samples(self) -> int:
        return int(self.count.item())

    def mean(self) -> torch.Tensor:
        """μ = Σx / n, float64 (D,)."""
        self._require_samples(1)
        return self.feature_sum / self.count

    def covariance(self, normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER) -> torch.Tensor:
        """Σ = (Σxxᵀ − n·μμᵀ) / (n − ddof), ddof from `COVARIANCE_DDOF[normaliser]`.

        The default reproduces the original FVD (TF-GAN, n − 1); "stylegan-v" (n) reproduces the
        numbers of FAR, DFoT and other StyleGAN-V-based code. A report must say which it used.
        """
        if normaliser not in COVARIANCE_DDOF:
            raise ValueError(f"unknown covariance normaliser {normaliser!r}; use one of {sorted(COVARIANCE_DDOF)}")
        self._require_samples(2)
        mu = self.mean()
        centred_outer = self.outer_sum - self.count * torch.outer(mu, mu)
        return centred_outer / (self.count - COVARIANCE_DDOF[normaliser])

    def save(self, path: str | Path) -> None:
        """Write the raw sums (safetensors), e.g. to reuse a real set's statistics across evaluations."""
        tensors = {"feature_sum": self.feature_sum, "outer_sum": self.outer_sum, "count": self.count}
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> FeatureStatistics:
        tensors = load_file(str(path), device=str(device))
        stats = cls(tensors["feature_sum"].shape[0], device=device)
        stats.feature_sum, stats.outer_sum, stats.count = (
            tensors["feature_sum"],
            tensors["outer_sum"],
            tensors["count"],
        )
        return stats

    def check_finite(self, source: str) -> None:
        """Refuse NaN or infinite statistics of `source` (e.g. "fake.npz") before a matrix square root sees them."""
        bad = int(self.nonfinite.item())
        if bad:
            raise NonFiniteValuesError(
                f"{source}: {bad} of {self.num_samples} videos have NaN or infinite features: the videos (or the "
                "model that generated them) hold non-finite values; give finite videos"
            )
        if not all(torch.isfinite(t).all() for t in (self.feature_sum, self.outer_sum, self.count)):
            raise NonFiniteValuesError(
                f"the feature statistics of {source} hold NaN or infinite values; compute them again from finite videos"
            )

    def _require_samples(self, minimum: int) -> None:
        if self.num_samples < minimum:
            raise ValueError(
                f"FeatureStatistics holds {self.num_samples} samples; at least {minimum} are needed. "
                "Call update() with features first (and all_reduce() under DDP)."
            )


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: SqrtMethod = "sqrtm") -> float:
    """Tr((Σ₁Σ₂)^½) for finite, symmetric positive semi-definite Σ₁, Σ₂ (`frechet_distance` checks that
    they are finite: on NaN, scipy's sqrtm never returns and ignores Ctrl-C; on finite input it is bounded).

    "sqrtm": scipy's Schur-based square root of the (non-symmetric) product, as StyleGAN-V and
    pytorch-fid do; round-off can leave a tiny imaginary part, which is dropped.
    "eigh": Σ₁Σ₂ is similar to the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½, so the trace of its root is
    Σᵢ √λᵢ of that matrix — an independent route used to cross-check the first.
    """
    if method == "sqrtm":
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
        return float(np.real(np.trace(root)))
    if method == "eigh":
        eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
        sqrt_sigma1 = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
        middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
        middle_eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
        return float(np.sqrt(np.clip(middle_eigenvalues, 0.0, None)).sum())
    raise ValueError(f"unknown matrix square-root method {method!r}; use 'sqrtm' or 'eigh'")


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    method: SqrtMethod = "sqrtm",
) -> float:
    """|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), computed in float64."""
    mu1, sigma1, mu2, sigma2 = (_as_float64_numpy(a) for a in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}; "
            "both sets must use the same feature extractor."
        )
    statistics = {"first mean": mu1, "first covariance": sigma1, "second mean": mu2, "second covariance": sigma2}
    for name, array in statistics.items():
        if not np.isfinite(array).all():  # scipy's sqrtm never returns on NaN input, and ignores Ctrl-C
            raise NonFiniteValuesError(f"Fréchet distance: the {name} holds NaN or infinite values; give finite ones")
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    distance = mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrt_product(sigma1, sigma2, method)
    if not np.isfinite(distance):
        raise FloatingPointError(
            f"Fréchet distance is not finite ({distance}); the covariances are likely singular. "
            "Use more samples than feature dimensions, or method='eigh'."
        )
    return distance


def frechet_distance_from_statistics(
    first: FeatureStatistics,
    second: FeatureStatistics,
    normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER,
    method: SqrtMethod = "sqrtm",
) -> float:
    """Fréchet distance between the Gaussians fitted to two accumulated feature sets."""
    return frechet_distance(
        first.mean(), first.covariance(normaliser), second.mean(), second.covariance(normaliser), method
    )


def _as_float64_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)
