"""Per-frame fidelity of predicted videos against the ground truth: PSNR, SSIM, LPIPS and Moving MNIST's MSE.

Inputs are frames (..., C, H, W) in [−1, 1] — single images, videos (T, C, H, W) or batches
(B, T, C, H, W); every function returns one value per frame, shape (...), so a caller averages
over frames and clips as its protocol says (video-prediction papers average per-frame values).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from mimo.errors import MetricUnavailableError

PIXEL_RANGE = 2.0  # frames live in [−1, 1]
PSNR_LEVELS = 255  # PSNR counts errors below one level of an 8-bit frame as that level (PSNR_CAP_DB)
PSNR_CAP_DB = 20 * math.log10(PSNR_LEVELS)
# SSIM constants of Wang et al. 2004 ("Image quality assessment: from error visibility to structural
# similarity"): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# LPIPS backbones and the torchvision weights they are built on.
LPIPS_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.ndim < 3:
        raise ValueError(
            f"expected two tensors of the same shape (..., C, H, W), got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = PIXEL_RANGE) -> torch.Tensor:
    """10·log10(range² / MSE) per frame (..., ), in dB. An MSE below one 8-bit level squared counts as that level
    (a cap of 20·log10(255) = 48.13 dB): identical frames (copy-last while an object rests or returns) would
    give +inf, and one of them would make a mean over frames and clips infinite."""
    _check_pair(prediction, target)
    mse = (prediction.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(data_range**2 / mse.clamp_min((data_range / PSNR_LEVELS) ** 2))


def summed_squared_error(
    prediction: torch.Tensor, target: torch.Tensor, data_range: float = PIXEL_RANGE
) -> torch.Tensor:
    """Squared error summed over a frame's pixels (and channels), pixels rescaled to [0, 1], per frame (..., ).

    The "MSE" of the Moving MNIST literature (ConvLSTM 103.3, PredRNN 56.8, SimVP 23.8 at 64×64): a sum
    over the frame, not a mean, so it grows with the frame's area; averaged over frames and clips.
    """
    _check_pair(prediction, target)
    return ((prediction.double() - target.double()) / data_range).pow(2).sum(dim=(-3, -2, -1))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = PIXEL_RANGE) -> torch.Tensor:
    """Mean structural similarity per frame (..., ), averaged over channels.

    Local statistics use a Gaussian window (population covariances), and only windows that fit
    inside the frame count — the same as scikit-image's `structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`, which crops the border.
    """
    _check_pair(prediction, target)
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {tuple(prediction.shape[-2:])}"
        )
    leading = prediction.shape[:-3]
    channels = prediction.shape[-3]
    x = rearrange(prediction.double(), "... c h w -> (...) c h w")
    y = rearrange(target.double(), "... c h w -> (...) c h w")
    window_1d = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    window = torch.outer(window_1d, window_1d).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=channels)  # "valid": border windows are left out

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(leading)


def load_lpips(net: str = "alex", device: torch.device | str = "cpu") -> torch.nn.Module:
    """The LPIPS network (Zhang et al. 2018), only from what is installed locally — it never downloads.

    Needs the `lpips` package (which ships its linear heads) and the torchvision ImageNet weights
    of its backbone in the torch hub cache.
    """
    if net not in LPIPS_BACKBONE_WEIGHTS:
        raise ValueError(f"unknown LPIPS backbone {net!r}; choose one of {sorted(LPIPS_BACKBONE_WEIGHTS)}")
    try:
        import lpips
        import torchvision
    except ImportError as error:
        raise MetricUnavailableError(
            f"LPIPS needs the `lpips` package and torchvision ({error}); install them with `pip install lpips`, "
            "or report PSNR and SSIM only."
        ) from error
    weights = getattr(torchvision.models, LPIPS_BACKBONE_WEIGHTS[net]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise MetricUnavailableError(
            f"LPIPS-{net} needs torchvision's ImageNet weights at {cached}; download {weights.url} there "
            "(mimo does not download it), or report PSNR and SSIM only."
        )
    return lpips.LPIPS(net=net, verbose=False).eval().to(device)


@torch.no_grad()
def lpips_distance(prediction: torch.Tensor, target: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    """LPIPS per frame (..., ) with a network from `load_lpips`; frames in [−1, 1] as LPIPS expects."""
    _check_pair(prediction, target)
    leading = prediction.shape[:-3]
    x = rearrange(prediction.float(), "... c h w -> (...) c h w")
    y = rearrange(target.float(), "... c h w -> (...) c h w")
    return network(x, y).flatten().reshape(leading)
