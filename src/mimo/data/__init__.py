"""Datasets: every one yields dicts with `video` (T, C, H, W) in model space and `label` (int64)."""

from __future__ import annotations

from torch.utils.data import Dataset

from mimo.config import DataConfig
from mimo.data.synthetic import MovingShapes

EVAL_SEED_OFFSET = 1_000_000  # held-out synthetic clips come from a disjoint seed


def build_dataset(config: DataConfig, split: str = "train", num_clips: int | None = None) -> Dataset:
    """The dataset a config names; `split` is "train" or "eval" (held out, deterministic clips)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if config.dataset == "synthetic":
        seed = config.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
        return MovingShapes(num_clips or config.num_clips, config.frame_size, config.num_frames, seed)
    raise NotImplementedError(f"dataset '{config.dataset}' is not wired into build_dataset yet")
