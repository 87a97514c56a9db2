"""Memory census of one training step at a config's real sizes, counted without running it.

The step's forward runs on fake tensors (`FakeTensorMode`: shapes and dtypes, no storage, no
compute), so DiT-XL at batch 32 is counted in seconds on a CPU. Per GPU it counts:

- static: fp32 parameters, their gradients, AdamW's two moments and the backbone's EMA copy,
  from the parameter count (divided over the ranks under FSDP, which also holds two gathered
  blocks in bf16 at a time: the one running and the one prefetched, plus one block's fp32
  gradients before their reduce-scatter);
- activations: every tensor autograd saves for the backward (saved-tensor hooks, one count per
  storage), as on a GPU: CUDA's autocast rules (matmuls in bf16; layer_norm, softmax, pow, sum ...
  in fp32, emulated on the CPU because CUDA autocast needs a CUDA build) and FlexAttention's saved
  set (q, k, v, output, log-sum-exp; no dense mask). With activation checkpointing a block keeps
  only its input, and one block's activations live again while its backward runs;
- transient: the two largest saved tensors again, standing for the gradient buffers of the
  backward's largest kernel.

peak = static + activations + transient. `mimo bench memory CONFIG` prints it; every GPU preset
states its figure in a comment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from mimo.config import Config, with_overrides
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective

GB = 10**9  # GPU memory is sold in GB (80 GB = 74.5 GiB)
FP32_BYTES, BF16_BYTES = 4, 2
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, fp32 each
FSDP_LIVE_BLOCKS = 2  # the block running and the one FSDP2 prefetches
TRANSIENT_TENSORS = 2
OUTSIDE = -1  # saved tensors of the embedders, the final layer, the MiMo decoder and the losses
GPU_MEMORY_GB = 80  # H100 SXM / A100 80 GB: what every GPU preset must fit in
FSDP_PRESET_GPUS = 8  # the FSDP presets are written for one node of 8 GPUs

# Functions CUDA autocast runs in fp32 (PyTorch AMP docs, "CUDA Ops that can autocast to float32"),
# the ones a training step of this project calls; CPU autocast leaves them in bf16.
CUDA_FP32_FUNCTIONS = {
    F.layer_norm,
    F.group_norm,
    F.softmax,
    F.log_softmax,
    F.mse_loss,
    F.normalize,
    F.softplus,
    torch.exp,
    torch.log,
    torch.pow,
    torch.sum,
    torch.rsqrt,
    torch.cumsum,
    Tensor.pow,
    Tensor.__pow__,
    Tensor.sum,
    Tensor.exp,
    Tensor.log,
    Tensor.rsqrt,
}


class CudaAutocastRules(TorchFunctionMode):
    """On top of CPU bf16 autocast: CUDA's fp32 functions get fp32 inputs (so fp32 outputs), and SDPA
    runs without its dense mask, so that it saves what FlexAttention saves on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CUDA_FP32_FUNCTIONS and torch.is_autocast_enabled("cpu"):
            args, kwargs = _to_fp32(args), _to_fp32(kwargs)
        elif func is F.scaled_dot_product_attention:
            kwargs = {**kwargs, "attn_mask": None}
            args = args[:3]
        return func(*args, **kwargs)


def _to_fp32(tree: Any) -> Any:
    if isinstance(tree, Tensor) and tree.is_floating_point():
        return tree.float()
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_fp32(item) for item in tree)
    if isinstance(tree, dict):
        return {key: _to_fp32(value) for key, value in tree.items()}
    return tree


@dataclass(frozen=True)
class MemoryCensus:
    """Bytes per GPU of one training step; `peak` is what must fit in the GPU's memory."""

    parameters: int
    gradients: int
    optimizer: int
    ema: int
    fsdp_buffers: int
    activations: int
    transient: int
    batch_size: int
    grad_accumulation: int
    world_size: int
    parallel: str
    activation_checkpointing: bool
    precision: str
    num_parameters: int
    tokens_per_clip: int

    @property
    def static(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.ema + self.fsdp_buffers

    @property
    def peak(self) -> int:
        return self.static + self.activations + self.transient

    def to_json(self) -> dict[str, Any]:
        gb = {
            name: round(value / GB, 2)
            for name, value in asdict(self).items()
            if name in ("parameters", "gradients", "optimizer", "ema", "fsdp_buffers", "activations", "transient")
        }
        settings = {
            name: value
            for name, value in asdict(self).items()
            if name not in gb and name not in ("num_parameters", "tokens_per_clip")
        }
        return {
            "peak_gb": round(self.peak / GB, 1),
            "fits_80gb": self.peak < GPU_MEMORY_GB * GB,
            "gb": gb,
            **settings,
            "parameters_millions": round(self.num_parameters / 1e6, 1),
            "tokens_per_clip": self.tokens_per_clip,
        }


@dataclass
class SavedTensors:
    """Bytes autograd saves, one count per storage, by backbone block (index) or OUTSIDE them."""

    by_block: dict[int, int]
    largest: list[int]
    block_inputs: dict[int, int]


@contextlib.contextmanager
def _count_saved(objective: nn.Module) -> Iterator[SavedTensors]:
    """Saved-tensor hooks that count each storage once; parameters (counted as static memory) are skipped."""
    parameters = {p.untyped_storage()._cdata for p in objective.parameters()}
    seen: set[int] = set()
    result = SavedTensors(by_block={}, largest=[], block_inputs={})
    current = [OUTSIDE]
    handles = []
    for index, block in enumerate(objective.backbone.blocks):  # the blocks activation checkpointing wraps

        def enter(module, args, index=index):
            current[0] = index
            result.block_inputs[index] = args[0].numel() * args[0].element_size()

        def leave(module, args, output):
            current[0] = OUTSIDE

        handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in parameters and key not in seen:
            seen.add(key)
            size = storage.nbytes()
            result.by_block[current[0]] = result.by_block.get(current[0], 0) + size
            result.largest = sorted([*result.largest, size], reverse=True)[:TRANSIENT_TENSORS]
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield result
    finally:
        for handle in handles:
            handle.remove()


def saved_activations(config: Config, fake: bool = True) -> SavedTensors:
    """What the forward of one training micro-step saves for its backward, on fake (or real) CPU tensors.

    Activation checkpointing is left off here: `training_memory` derives its effect from the per-block counts.
    """
    if config.repa.mode != "none":
        raise ValueError("the memory census covers the backbone and the MiMo decoder; set repa.mode=none")
    config = with_overrides(config, ["train.activation_checkpointing=false", "model.attention=sdpa"])
    data = config.data
    shape = (config.train.batch_size, data.num_frames, data.channels, data.frame_size, data.frame_size)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    bf16 = config.train.precision == "bf16"
    with mode:
        torch.manual_seed(config.train.seed)
        objective = TrainingObjective(config, build_backbone(config)).train()
        if fake:  # fake masks must not be cached for later real runs
            objective.backbone.cache_masks = False
            if objective.decoder is not None:
                objective.decoder.cache_masks = False
        video = torch.zeros(shape)
        labels = torch.zeros(shape[0], dtype=torch.long) if config.num_classes else None
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        rules = CudaAutocastRules() if bf16 else contextlib.nullcontext()
        with _count_saved(objective) as saved, autocast, rules:
            objective(video, labels, torch.Generator().manual_seed(0))
    return saved


def preset_world_size(config: Config) -> int:
    """The GPUs a preset is written for: one node for FSDP presets, one GPU otherwise."""
    return FSDP_PRESET_GPUS if config.train.parallel == "fsdp" else 1


def training_memory(config: Config, world_size: int = 1) -> MemoryCensus:
    """Memory per GPU of one training step of `config` on `world_size` GPUs (see the module docstring)."""
    train = config.train
    with torch.device("meta"):  # shapes only: parameter counts and the sequence layout
        objective = TrainingObjective(config, build_backbone(config))
    total = sum(p.numel() for p in objective.parameters())
    backbone = sum(p.numel() for p in objective.backbone.parameters())
    largest_block = max(sum(p.numel() for p in block.parameters()) for block in objective.backbone.blocks)
    sharded = train.parallel == "fsdp" and world_size > 1
    shards = world_size if sharded else 1
    parameter_bytes = total * FP32_BYTES
    fsdp_buffers = 0
    if sharded:
        gathered = BF16_BYTES if train.precision == "bf16" else FP32_BYTES
        fsdp_buffers = FSDP_LIVE_BLOCKS * largest_block * gathered + largest_block * FP32_BYTES
    saved = saved_activations(config)
    blocks = {index: size for index, size in saved.by_block.items() if index != OUTSIDE}
    activations = sum(saved.by_block.values())
    if train.activation_checkpointing:
        kept_inputs = sum(saved.block_inputs.values())
        activations = saved.by_block.get(OUTSIDE, 0) + kept_inputs + max(blocks.values(), default=0)
    return MemoryCensus(
        parameters=parameter_bytes // shards,
        gradients=parameter_bytes // shards,
        optimizer=ADAMW_MOMENTS * parameter_bytes // shards,
        ema=backbone * FP32_BYTES // shards,
        fsdp_buffers=fsdp_buffers,
        activations=activations,
        transient=sum(saved.largest),
        batch_size=train.batch_size,
        grad_accumulation=train.grad_accumulation,
        world_size=world_size,
        parallel=train.parallel if world_size > 1 else "single",
        activation_checkpointing=train.activation_checkpointing,
        precision=train.precision,
        num_parameters=total,
        tokens_per_clip=objective.layout().length,
    )
