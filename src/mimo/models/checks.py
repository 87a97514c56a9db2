"""Checks of the tensors passed to the library: a wrong shape, dtype or range fails at the entry point
with a message saying what was expected, instead of deep inside an einops pattern or as a NaN loss.

Shape and dtype checks read no values, so they cost nothing on a GPU and can run on every forward.
Value checks (range, finiteness, label ids) read the data; they run where data enters: a sampling
call, a training batch on the CPU before it is moved, and a forward whose inputs are on the CPU.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

from mimo.errors import InputError, NonFiniteValuesError

if TYPE_CHECKING:
    from mimo.config import SampleConfig
    from mimo.models.dit import FrameCausalDiT

PIXEL_RANGE = (-1.0, 1.0)  # docs/method.md: pixels live in [-1, 1]
PIXEL_TOLERANCE = 1e-3  # resizing and decoding overshoot by rounding; beyond this it is a scaling bug
# Frames of 1 or 3 channels are pixels, checked against PIXEL_RANGE; latents (4 channels for SD-VAE, 16 for
# newer autoencoders) are scaled to about unit variance with no fixed range, so only their finiteness is checked.
PIXEL_CHANNELS = (1, 3)


def _require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _values_readable(tensor: Tensor) -> bool:
    """Whether a forward may read `tensor`'s values: on the CPU (no device sync), and real (the memory census
    runs the forward on fake tensors, which have none)."""
    return tensor.device.type == "cpu" and not isinstance(tensor, FakeTensor)


def check_frames(name: str, frames: Tensor, channels: int, frame_size: int, batch: int | None = None) -> None:
    """Frames (B, T, C, H, W) of the model's channels and size, floating point."""
    frames = _require_tensor(name, frames)
    expected = f"(B, T, {channels}, {frame_size}, {frame_size})"
    shape = tuple(frames.shape)
    if frames.ndim != 5 or shape[2:] != (channels, frame_size, frame_size):
        hint = ""
        if frames.ndim == 4:
            hint = "; a single clip needs a batch axis: x[None]"
        elif frames.ndim == 5 and shape[-1] == channels and shape[2] != channels:
            hint = "; channels-last clips need x.permute(0, 1, 4, 2, 3)"
        raise InputError(f"{name} must be {expected} frames, got {shape}{hint}")
    if shape[1] == 0:
        raise InputError(f"{name} has no frames: shape {shape}")
    if batch is not None and shape[0] != batch:
        raise InputError(f"{name} has batch size {shape[0]}, but the other inputs have {batch}")
    if not frames.is_floating_point():
        raise InputError(
            f"{name} has dtype {frames.dtype}; the model takes floating-point frames in [-1, 1] "
            "(uint8 pixels: x.float() / 127.5 - 1)"
        )


def check_pixel_values(name: str, frames: Tensor) -> None:
    """Finite values inside [-1, 1] (reads the data)."""
    if not torch.isfinite(frames).all():
        raise InputError(f"{name} contains NaN or infinite values")
    low, high = frames.min().item(), frames.max().item()
    if low < PIXEL_RANGE[0] - PIXEL_TOLERANCE or high > PIXEL_RANGE[1] + PIXEL_TOLERANCE:
        hint = " (pixels in [0, 255]: x / 127.5 - 1)" if high > 2 else ""
        raise InputError(f"{name} has values in [{low:.3g}, {high:.3g}]; the model expects [-1, 1]{hint}")


def check_finite(name: str, values: Tensor) -> None:
    if not torch.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values")


def check_generated(videos: Tensor) -> None:
    """Sampled videos (B, T, C, H, W) are finite: NaN frames of a diverged model are refused, never written."""
    bad = int((~torch.isfinite(videos.flatten(1)).all(dim=1)).sum().item())
    if bad:
        raise NonFiniteValuesError(
            f"{bad} of {len(videos)} sampled videos hold NaN or infinite values: the model's weights give "
            "non-finite output"
        )


def check_noise_level(noise_level: Tensor, batch: int, frames: int) -> None:
    """Noise levels (B, T) for (B, T) noisy frames, floating point."""
    noise_level = _require_tensor("noise_level", noise_level)
    if tuple(noise_level.shape) != (batch, frames):
        raise InputError(
            f"noise_level must be (B, T) = ({batch}, {frames}), one level per noisy frame, "
            f"got {tuple(noise_level.shape)}"
        )
    if not noise_level.is_floating_point():
        raise InputError(f"noise_level has dtype {noise_level.dtype}; give floats in [0, 1] (0 = clean, 1 = noise)")


def check_labels(labels: Tensor | None, batch: int, num_classes: int, read_values: bool = False) -> None:
    """Class ids (B,) in 0..num_classes - 1 (num_classes, the null class, is set by guidance, never given)."""
    if not num_classes:
        if labels is not None:
            raise InputError("this model is unconditional: pass labels=None")
        return
    if labels is None:
        raise InputError(f"this model is class-conditional ({num_classes} classes): pass labels (B,)")
    labels = _require_tensor("labels", labels)
    if tuple(labels.shape) != (batch,):
        raise InputError(f"labels must be ({batch},), one class id per clip, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"labels have dtype {labels.dtype}; give integer class ids (labels.long())")
    if read_values and labels.numel() and (labels.min().item() < 0 or labels.max().item() >= num_classes):
        raise InputError(
            f"labels must be class ids in 0..{num_classes - 1}, got values in [{labels.min().item()}, "
            f"{labels.max().item()}]; (class {num_classes} is guidance's null class: sample.cfg_scale uses it)"
        )


def check_keep(keep: Tensor | None, batch: int, tokens_per_frame: int) -> None:
    """Kept spatial positions (B, n) of MiMo's tube mask, integer indices, n <= tokens per frame."""
    if keep is None:
        return
    keep = _require_tensor("keep", keep)
    if keep.ndim != 2 or keep.shape[0] != batch or not 1 <= keep.shape[1] <= tokens_per_frame:
        raise InputError(
            f"keep must be (B, n) = ({batch}, n) with 1 <= n <= {tokens_per_frame} kept positions, "
            f"got {tuple(keep.shape)}"
        )
    if keep.dtype != torch.long:
        raise InputError(f"keep has dtype {keep.dtype}; give int64 position indices (objectives.masking.tube_mask)")
    if _values_readable(keep) and keep.numel() and not 0 <= keep.min() <= keep.max() < tokens_per_frame:
        raise InputError(
            f"keep holds positions in [{keep.min().item()}, {keep.max().item()}]; a frame has positions "
            f"0..{tokens_per_frame - 1}"
        )


def check_layers(layers: tuple[int, ...], depth: int) -> None:
    """1-based layer numbers of a model of `depth` blocks."""
    outside = [layer for layer in layers if not 1 <= layer <= depth]
    if outside:
        raise InputError(f"layers {outside} do not exist: the model has layers 1..{depth}")


def _require_count(name: str, value: object, unit: str = "") -> None:
    """A positive integer: a Python or NumPy one (operator.index accepts both), never a bool or a float."""
    try:
        count = operator.index(value)
    except TypeError:
        count = None
    if isinstance(value, bool) or count is None or count < 1:
        raise InputError(f"{name} must be a positive integer{unit}, got {value!r}")


def check_model_inputs(
    model: FrameCausalDiT,
    noisy: Tensor,
    noise_level: Tensor,
    labels: Tensor | None = None,
    clean: Tensor | None = None,
    keep: Tensor | None = None,
    return_layers: tuple[int, ...] = (),
) -> None:
    """The inputs of FrameCausalDiT.forward: shapes and dtypes, and values only of CPU tensors (finite noise
    levels, keep positions inside a frame), so that it costs no device sync on a GPU."""
    size = model.grid * model.patch_size
    check_frames("noisy", noisy, model.channels, size)
    batch, frames = noisy.shape[:2]
    check_noise_level(noise_level, batch, frames)
    if _values_readable(noise_level):
        check_finite("noise_level", noise_level)
    check_layers(return_layers, model.depth)
    check_labels(labels, batch, model.num_classes)
    if clean is not None:
        check_frames("clean", clean, model.channels, size, batch)
    if keep is not None and clean is None:
        raise InputError("keep selects clean-history tokens, but no clean frames were given")
    check_keep(keep, batch, model.tokens_per_frame)


def check_sample_inputs(
    model: FrameCausalDiT,
    num_frames: int,
    batch_size: int | None,
    labels: Tensor | None,
    context: Tensor | None,
    options: SampleConfig,
    generator: torch.Generator | None,
) -> None:
    """The arguments of sample_video, values included (it runs once per call)."""
    _require_count("num_frames", num_frames)
    _require_count("steps", options.steps, " (ODE steps per frame)")
    if options.window is not None:
        _require_count("window", options.window, " clean frames (or None for all)")
    if batch_size is not None:
        _require_count("batch_size", batch_size)
    if not (math.isfinite(options.cfg_scale) and options.cfg_scale >= 0):
        raise InputError(f"cfg_scale must be 0 or more (1: no guidance), got {options.cfg_scale}")
    if generator is not None and generator.device.type != "cpu":
        raise InputError("generator must be a CPU torch.Generator (noise is drawn on the CPU, then moved)")
    batch = batch_size
    if context is not None:
        check_frames("context", context, model.channels, model.grid * model.patch_size)
        weights = model.patch_embed.weight.dtype
        if context.dtype != weights:
            raise InputError(
                f"context has dtype {context.dtype}, the model's weights {weights}: pass context.to({weights})"
            )
        if model.channels in PIXEL_CHANNELS:
            check_pixel_values("context", context)
        else:
            check_finite("context", context)
        if batch is not None and batch != context.shape[0]:
            raise InputError(f"batch_size is {batch}, but context holds {context.shape[0]} clips; give only one")
        batch = context.shape[0]
        if context.shape[1] >= num_frames:
            raise InputError(f"num_frames ({num_frames}) must exceed the {context.shape[1]} context frames")
    if labels is not None:
        batch = _require_tensor("labels", labels).shape[0] if batch is None else batch
        check_labels(labels, batch, model.num_classes, read_values=True)
    elif model.num_classes:
        check_labels(None, batch or 0, model.num_classes)
    if batch is None:
        raise InputError("give batch_size, labels or context so that the number of videos is known")


def check_history_options(model: FrameCausalDiT, options: SampleConfig, class_guided: bool) -> None:
    """sample_video's history options against what the model was trained for."""
    history_noise, history_guidance = options.history_noise, options.history_guidance
    if not 0 <= history_noise <= 1:
        raise InputError(f"history_noise is a noise level in [0, 1] (0: the history as it is), got {history_noise}")
    if history_guidance < 0:
        raise InputError(f"history_guidance must be 0 or more (1: off), got {history_guidance}")
    if (history_noise > 0 or history_guidance != 1) and model.history_noise_embed is None:
        raise InputError(
            "this model was trained on clean histories only: sample with history_noise=0 and history_guidance=1, "
            "or train with diffusion.history_noise_max / diffusion.history_dropout"
        )
    if history_guidance != 1 and class_guided:
        raise InputError("history guidance and classifier-free guidance together are not supported: set one to 1")
