"""What autoregressive sampling will cost, said before it starts: frames × ODE steps model calls, each timed
once on this model, batch and device, so that `mimo sample --frames 100000` announces its hours up front
instead of starting them without a word.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mimo.config import Config
from mimo.models.dit import FrameCausalDiT


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def calls_per_frame(steps: int, solver: str) -> int:
    """Model evaluations of one frame's ODE (flow.integrate: Heun evaluates twice on all but the last step)."""
    return 2 * steps - 1 if solver == "heun" else steps


@dataclass(frozen=True)
class SamplingCost:
    videos: int
    seeds: int  # each seed generates every video again
    frames: int  # generated, beyond the given context
    steps: int  # ODE steps per frame
    clean_passes: int  # per frame: appending it to the KV cache, or re-encoding the window once it slides
    calls: int  # model calls (each on the whole batch)
    parameters: int  # of the model
    seconds_per_call: float  # measured
    device: str

    @property
    def seconds(self) -> float:
        return self.calls * self.seconds_per_call

    def describe(self, what: str = "sampling") -> str:
        return (
            f"{what}: {self.videos} videos × "
            + (f"{self.seeds} seeds × " if self.seeds > 1 else "")
            + f"{self.frames} frames × ({self.steps} steps + {self.clean_passes} clean passes) = "
            f"{self.calls} model calls ({self.parameters / 1e6:.3g}M parameters, "
            f"{self.seconds_per_call * 1e3:.3g} ms each on {self.device}): "
            f"about {format_duration(self.seconds)}"
        )


@torch.no_grad()
def time_model_call(model: FrameCausalDiT, batch: int, guided: bool) -> float:
    """Seconds of one denoising call on one frame of `batch` videos (twice the rows under guidance), after a
    warm-up call; the history attention a cached call adds is small next to it for short windows."""
    device = model.patch_embed.weight.device
    rows = batch * (2 if guided else 1)
    size = model.grid * model.patch_size
    noisy = torch.zeros(rows, 1, model.channels, size, size, device=device, dtype=model.patch_embed.weight.dtype)
    level = torch.ones(rows, 1, device=device)
    labels = torch.full((rows,), model.null_class, device=device) if model.num_classes else None
    seconds = []
    for _ in range(2):  # the first call pays for kernel selection and allocation
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        model(noisy, level, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds[-1]


def sampling_cost(
    model: FrameCausalDiT,
    config: Config,
    videos: int,
    batch_size: int | None = None,
    seeds: int = 1,
    num_frames: int | None = None,
) -> SamplingCost:
    """The cost of `sample_for_task` generating `videos` videos of `num_frames` (default: the config's sample
    length) for each of `seeds` seeds, in batches of `batch_size` (None: all at once), with the config's
    sample settings."""
    sample = config.sample
    length = num_frames or sample.num_frames or config.data.num_frames
    frames = length - config.context_frames  # generated
    window = config.sample_window  # as sample_for_task
    clean_passes = window if length > window + 1 else 1  # past the window the sampler re-encodes it every frame
    guided = bool(model.num_classes) and sample.cfg_scale != 1.0
    batch = min(videos, batch_size or videos)
    batches = -(-videos // batch)
    calls = seeds * batches * frames * (calls_per_frame(sample.steps, sample.solver) + clean_passes)
    seconds = time_model_call(model, batch, guided)
    device = str(model.patch_embed.weight.device)
    parameters = sum(p.numel() for p in model.parameters())
    return SamplingCost(videos, seeds, frames, sample.steps, clean_passes, calls, parameters, seconds, device)
