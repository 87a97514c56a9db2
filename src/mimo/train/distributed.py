"""PyTorch's own distributed stack, launched by `torchrun`: process groups, DDP/FSDP2 wrapping,
gathered (full) state dicts, and reductions of metrics across ranks.

Without torchrun's environment variables everything runs as a single process (rank 0 of 1) and
every helper here is a no-op, so the trainer has one code path. Checkpoints always hold full,
unsharded tensors keyed by parameter name, which is what lets a run resume on another number of
ranks, with DDP or FSDP, or in a notebook.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mimo.config import PARALLEL_MODES
from mimo.errors import ArgumentError

# FSDP2, DTensor and distributed.checkpoint take seconds to import, so they are imported where used;
# a module can only be sharded (a tensor only be a DTensor) once they have been imported.
FSDP_MODULE, DTENSOR_MODULE = "torch.distributed.fsdp", "torch.distributed.tensor"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device(requested: str | None = None) -> str:
    """`requested` (checked: a device torch knows and this machine has), else the GPU when there is one,
    else the CPU: where a job runs when not told."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(requested).type
    except RuntimeError as error:
        raise ArgumentError(f"device '{requested}' is not a torch device; give cpu, cuda or cuda:N") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device '{requested}': this machine has no CUDA device; give cpu")
    return requested


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, chosen)


def shutdown_distributed() -> None:
    """Leave the process group (torchrun expects it at exit); a no-op in a single process."""
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


# ----- reductions (metrics, flags) -----------------------------------------------------------------
def _collective_device() -> torch.device:
    """NCCL reduces tensors on the GPU, gloo on the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum a tensor over ranks in place (a no-op in a single process)."""
    if is_initialized():
        dist.all_reduce(tensor)
    return tensor


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each named scalar over ranks (a NaN on any rank makes the mean NaN on all)."""
    if not is_initialized() or not values:
        return dict(values)
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    all_reduce_sum(packed)
    return dict(zip(values, (packed / dist.get_world_size()).tolist(), strict=True))


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one, so that all ranks take the same branch."""
    if not is_initialized():
        return flag
    packed = torch.tensor([float(flag)], device=_collective_device())
    return bool(all_reduce_sum(packed).item() > 0)


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks (every `blocks` ModuleList): FSDP shards and torch.compile compiles one at a time."""
    return [
        block
        for name, child in module.named_modules()
        if isinstance(child, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks"
        for block in child
    ]


def shard_fully(module: nn.Module, precision: str = "fp32") -> nn.Module:
    """FSDP2: each transformer block is one unit (its weights gathered only while it runs), the rest the root.

    In bf16 the shards are all-gathered and computed in bf16 and gradients reduced in fp32
    (`MixedPrecisionPolicy`): half the all-gather traffic; the fp32 shards and optimizer state stay exact.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if precision == "bf16":  # inputs keep their dtype: autocast decides the compute dtype, rotary angles stay fp32
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in transformer_blocks(module):
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def wrap_for_training(objective: nn.Module, parallel: str, info: DistInfo, precision: str = "fp32") -> nn.Module:
    """The module whose forward the trainer calls: DDP, FSDP2 (sharded in place) or the objective itself."""
    if info.world_size == 1:
        return objective
    if parallel == "fsdp":
        return shard_fully(objective, precision)
    if parallel == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        # buffers (rotary frequencies) are constants: no broadcast before every forward; gradients live in
        # the all-reduce buckets instead of beside them (one copy of the gradients less)
        return DistributedDataParallel(
            objective, device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True
        )
    raise ValueError(f"unknown parallel mode '{parallel}'; choose one of {list(PARALLEL_MODES)} (train.parallel)")


def is_sharded(module: nn.Module) -> bool:
    fsdp = sys.modules.get(FSDP_MODULE)
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def _is_dtensor(tensor: Tensor) -> bool:
    dtensor = sys.modules.get(DTENSOR_MODULE)
    return dtensor is not None and isinstance(tensor, dtensor.DTensor)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across ranks only on the last micro-step of an accumulated step."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)
    yield


def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's part of a (possibly sharded) tensor."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def clip_gradients(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip the global gradient norm to `max_norm` (0: no clipping); the norm before clipping, on the device."""
    norm = nn.utils.clip_grad_norm_(list(parameters), max_norm if max_norm > 0 else math.inf)
    if _is_dtensor(norm):
        norm = norm.full_tensor()
    return norm


# ----- full (gathered) state dicts -----------------------------------------------------------------
def _state_dict_api() -> Any:
    """torch.distributed.checkpoint.state_dict: gathers shards into full tensors and back."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _gather_to_rank0() -> Any:
    """Full tensors on rank 0's CPU (other ranks get nothing)."""
    return _state_dict_api().StateDictOptions(full_state_dict=True, cpu_offload=True)


def _load_full() -> Any:
    """Every rank passes the full tensors; a sharded module keeps its own shard."""
    return _state_dict_api().StateDictOptions(full_state_dict=True)


def full_model_state(module: nn.Module) -> dict[str, Tensor]:
    """Every tensor of `module`, unsharded, on the CPU of rank 0 (a collective under FSDP: call on all ranks)."""
    if not is_sharded(module):
        return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    return _state_dict_api().get_model_state_dict(module, options=_gather_to_rank0())


def load_full_model_state(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Load full tensors (on every rank); a sharded module keeps its own shard of each."""
    if is_sharded(module):
        _state_dict_api().set_model_state_dict(module, tensors, options=_load_full())
    else:
        module.load_state_dict(tensors)


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name (not position), unsharded, complete on rank 0."""
    return _state_dict_api().get_optimizer_state_dict(module, optimizer, options=_gather_to_rank0())


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    _state_dict_api().set_optimizer_state_dict(module, optimizer, state, options=_load_full())
