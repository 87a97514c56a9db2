"""`train.init_from RUN`: start a run from another run's weights (fine-tuning, the unmasked tail).

The paper fine-tunes high-mask-ratio models without masking to recover their quality; any change
of objective, data or schedule on top of a trained model works the same way. The backbone must
match exactly (it is the model); the training-only parts (MiMo decoder, REPA projector) are taken
where both runs have them with the same shapes, and left at initialisation otherwise (e.g. a
decoder for a run that had none). The EMA continues from the other run's EMA. The optimizer,
step and data position start afresh: this is a new run, not a resume (`train.resume` is that).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mimo.train.checkpoint import CheckpointError, check_compatible, find_checkpoint, load_tensors
from mimo.train.distributed import full_model_state, load_full_model_state

BACKBONE = "backbone."


def initialise_from_run(objective: nn.Module, ema_backbone: nn.Module, run: str | Path) -> list[str]:
    """Load `run`'s latest weights into `objective` (its `backbone` and any matching extras) and its EMA
    into `ema_backbone`; returns the names of the objective's tensors left at their initial values.

    Every rank calls it under torchrun (gathering and loading full states are collectives).
    """
    checkpoint = find_checkpoint(run)
    if checkpoint is None:
        raise CheckpointError(f"train.init_from: no checkpoint found at {run}; give a run folder or a checkpoint")
    weights = load_tensors(checkpoint / "model.safetensors")
    backbone = {key.removeprefix(BACKBONE): value for key, value in weights.items() if key.startswith(BACKBONE)}
    try:
        check_compatible(ema_backbone, backbone, checkpoint / "model.safetensors")
    except CheckpointError as error:
        raise CheckpointError(f"train.init_from: the backbone of {run} differs from this run's: {error}") from error
    state = full_model_state(objective)
    taken = {key: value for key, value in weights.items() if key in state and state[key].shape == value.shape}
    load_full_model_state(objective, {**state, **taken})
    ema_file = checkpoint / "ema.safetensors"
    load_full_model_state(ema_backbone, load_tensors(ema_file) if ema_file.is_file() else backbone)
    return sorted(set(state) - set(taken))
