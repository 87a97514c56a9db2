"""`train.init_from RUN`: start a run from another run's weights (fine-tuning, the unmasked tail).

The paper fine-tunes high-mask-ratio models without masking to recover their quality; any change
of objective, data or schedule on top of a trained model works the same way. The backbone must
match exactly (it is the model); the training-only parts (MiMo decoder, REPA projector) are taken
where both runs have them with the same shapes, and left at initialisation otherwise (e.g. a
decoder for a run that had none). The EMA continues from the other run's EMA. The optimizer,
step and data position start afresh: this is a new run, not a resume (`train.resume` is that).

`train.init_from` may also name a preset (a YAML file; in a config file, relative to that file): its run is
trained first, then this one starts from it, so a recipe of phases (configs/reference/) is one command.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mimo.config import Config, load_config, names_a_preset
from mimo.errors import ConfigError
from mimo.train.checkpoint import CheckpointError, check_compatible, find_checkpoint, load_tensors, read_state
from mimo.train.distributed import full_model_state, load_full_model_state

BACKBONE = "backbone."


def preset_to_train_first(config: Config) -> Config | None:
    """The preset `train.init_from` names, loaded (None for a run folder). A chain of presets that comes back to
    a run folder it trains into would never end: it is refused."""
    folders, preset, first = [config.train.out_dir], config, None
    while names_a_preset(preset.train.init_from):
        named = preset.train.init_from
        try:
            preset = load_config(named)
        except ConfigError as error:
            raise ConfigError(f"train.init_from={named}: {error}") from error
        if preset.train.out_dir in folders:
            raise ConfigError(
                f"train.init_from={named} trains into {preset.train.out_dir}, a folder earlier in this chain of "
                f"presets ({' <- '.join(folders)}); give each phase its own train.out_dir"
            )
        folders.append(preset.train.out_dir)
        first = preset if first is None else first
    return first


def has_finished(config: Config) -> bool:
    """Whether `config`'s run folder holds a checkpoint of its last step (training it again would do nothing)."""
    checkpoint = find_checkpoint(config.train.out_dir)
    return checkpoint is not None and read_state(checkpoint)["step"] >= config.train.steps


def lineage(run: str | Path) -> list[Path]:
    """The runs that made `run`, first to last, following each one's train.init_from (a preset names its
    train.out_dir; relative folders are read from where `mimo train` ran, as training read them)."""
    runs = [Path(run)]
    while (parent := load_config(runs[0] / "config.yaml").train.init_from) is not None:
        runs.insert(0, Path(load_config(parent).train.out_dir if names_a_preset(parent) else parent))
    return runs


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
