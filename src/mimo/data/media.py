"""Pictures a person would rather look at: GIF/MP4 of videos, side-by-side grids, PNG curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

GIF_FRAME_MS = 150
GRID_PAD = 2


def to_uint8(videos: Tensor) -> np.ndarray:
    """(…, T, C, H, W) in [-1, 1] as uint8 (…, T, H, W, C); 1-channel videos become grey RGB."""
    if videos.shape[-3] == 1:
        videos = videos.expand(*videos.shape[:-3], 3, *videos.shape[-2:])
    if videos.shape[-3] != 3:
        raise ValueError(f"can only picture 1- or 3-channel frames, got {videos.shape[-3]} channels (decode latents)")
    pixels = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "... t c h w -> ... t h w c").cpu().numpy()


def video_grid(rows: Sequence[Tensor], upscale: int = 1) -> np.ndarray:
    """Frames (T, H', W', 3) uint8 of a grid: each entry of `rows` is (B, T, C, H, W), one row per entry,
    the B videos side by side. Rows may be shorter in time; they then hold their last frame."""
    frames = max(r.shape[1] for r in rows)
    padded = []
    for row in rows:
        if row.shape[1] < frames:
            row = torch.cat([row, row[:, -1:].expand(-1, frames - row.shape[1], -1, -1, -1)], dim=1)
        padded.append(row)
    stack = torch.stack(padded)  # (R, B, T, C, H, W)
    stack = torch.nn.functional.pad(stack, (GRID_PAD, GRID_PAD, GRID_PAD, GRID_PAD), value=1.0)
    grid = to_uint8(stack)  # (R, B, T, H, W, 3)
    grid = rearrange(grid, "r b t h w c -> t (r h) (b w) c")
    if upscale > 1:
        grid = grid.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return grid


def save_gif(frames: np.ndarray, path: str | Path, frame_ms: int = GIF_FRAME_MS) -> Path:
    """Write uint8 frames (T, H, W, 3) as a looping GIF."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264", gop: int = 12) -> None:
    """Write uint8 (T, H, W, 3) frames (H, W even) as a video file with PyAV."""
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def save_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write uint8 frames (T, H, W, 3) as H.264 MP4 (sizes padded to even numbers, as yuv420p needs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pad_rows, pad_cols = frames.shape[1] % 2, frames.shape[2] % 2
    write_video(path, np.pad(frames, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0))), fps)
    return path


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str = "",
    log_y: bool = True,
) -> Path:
    """A PNG with one line per named (x, y) curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
