"""Checkpoints that survive a crash and cannot run code when loaded.

A checkpoint is a folder `step_XXXXXXXX/` of safetensors files (model, EMA, optimizer tensors) and
a `state.json` (step, config, optimizer structure). Every file is written to a temporary name,
fsynced and renamed, and the folder itself is renamed into place before `latest` points at it, so
a process killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mimo.config import Config, from_dict
from mimo.data.atomic import fsync_directory, write_atomically
from mimo.errors import ArgumentError, CheckpointError, NonFiniteValuesError
from mimo.models import build_backbone
from mimo.models.dit import FrameCausalDiT
from mimo.train.distributed import load_full_model_state

STATE_FILE = "state.json"
LATEST_FILE = "latest"
STAGING_PREFIX = ".staging_"  # a checkpoint being written; never read
CHECKPOINT_DIR = "checkpoints"
# The model shipped with the package (configs/reference/demo.yaml, exported by benchmarks/reference_card.py):
# every command that takes a trained run also takes this name, unless a folder of that name is in the way.
REFERENCE_MODEL = "reference"
REFERENCE_OUTPUTS = Path("outputs") / REFERENCE_MODEL  # what commands make of it: never inside the package
EARLIER_CHECKPOINT = "move {} out of the checkpoints folder and the run resumes from the one before it"


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (contiguous CPU copies; shared storage is split)."""
    copies = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    write_atomically(path, lambda temporary: save_file(copies, str(temporary), metadata))


def save_json(path: Path, values: dict[str, Any]) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(values, indent=1)))


def load_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or truncated ({error}); {EARLIER_CHECKPOINT.format(path.parent)}"
        ) from error


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer state dict keyed by parameter name as flat tensors `NAME.SLOT` plus a JSON-able rest (no pickle)."""
    tensors, scalars = {}, {}
    for param, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"{param}.{slot}"] = value
            else:
                scalars[f"{param}.{slot}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, Tensor], structure: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(structure["scalars"].items()):
        param, slot = key.rsplit(".", 1)  # slot names (exp_avg, step) have no dots; parameter names do
        state.setdefault(param, {})[slot] = value
    return {"state": state, "param_groups": structure["param_groups"]}


def check_compatible(module: nn.Module, tensors: dict[str, Tensor], source: Path) -> None:
    """Raise with the mismatched keys and shapes when `tensors` were saved from another architecture."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{key}: checkpoint {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(tensors))
        if tensors[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing in checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"not in model: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
        raise CheckpointError(
            f"{source} was saved from a different model or config ({' | '.join(parts)}). "
            "Use the config the checkpoint was trained with (its state.json holds it), "
            "or another train.out_dir to start a new run."
        )


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, dict[str, Tensor]],
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under run_dir/checkpoints, point `latest` at it, prune old ones.

    `modules` maps file names to full state dicts; `optimizer_state` is keyed by parameter name
    (`distributed.full_optimizer_state`). Staging folders left by a killed save are removed.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    staging = root / f"{STAGING_PREFIX}{final.name}"
    for leftover in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    for name, tensors in modules.items():
        save_tensors(staging / f"{name}.safetensors", tensors)
    state = dict(state, step=step)
    if optimizer_state is not None:
        tensors, structure = optimizer_to_tensors(optimizer_state)
        save_tensors(staging / "optimizer.safetensors", tensors)
        state["optimizer"] = structure
    save_json(staging / STATE_FILE, state)
    fsync_directory(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_directory(root)
    write_atomically(root / LATEST_FILE, lambda temporary: temporary.write_text(final.name))
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run folder (or of a checkpoints folder), oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR if (Path(run_dir) / CHECKPOINT_DIR).is_dir() else Path(run_dir)
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def reference_model() -> Path:
    """The folder of the shipped reference model (package data: ema.safetensors, state.json, its card)."""
    return Path(str(resources.files("mimo") / REFERENCE_MODEL))


def _named(path: str | Path) -> Path:
    """`path`, or the shipped reference model for its name when no such file or folder exists."""
    path = Path(path)
    return reference_model() if str(path) == REFERENCE_MODEL and not path.exists() else path


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint folder for a run folder (its latest), a checkpoints folder, a checkpoint itself, or
    the shipped reference model (`REFERENCE_MODEL`)."""
    path = _named(path)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / CHECKPOINT_DIR, path):
        latest = root / LATEST_FILE
        if latest.is_file():
            candidate = root / latest.read_text().strip()
            if (candidate / STATE_FILE).is_file():
                return candidate
        complete = list_checkpoints(root)
        if complete:
            return complete[-1]
    return None


def read_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} is not a checkpoint folder: {STATE_FILE} is missing")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); {EARLIER_CHECKPOINT.format(checkpoint)}") from error
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "step" not in state:
        raise CheckpointError(f"{path} holds no step and config; {EARLIER_CHECKPOINT.format(checkpoint)}")
    return state


def load_module(module: nn.Module, checkpoint: Path, name: str) -> None:
    """Load `name`.safetensors of a checkpoint into `module`, checking keys and shapes first."""
    path = checkpoint / f"{name}.safetensors"
    tensors = load_tensors(path)
    check_compatible(module, tensors, path)
    load_full_model_state(module, tensors)


def find_trained_checkpoint(path: str | Path) -> Path:
    """`find_checkpoint`, refusing a path that holds none."""
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        what = "does not exist" if not _named(path).exists() else "holds no checkpoint (no state.json)"
        raise CheckpointError(
            f"{path} {what}; give a run folder (train.out_dir), a checkpoint folder or an exported model"
        )
    return checkpoint


def run_folder(path: str | Path) -> Path:
    """The folder that outputs of a trained model go under: the run of a checkpoint folder
    (RUN/checkpoints/step_N), `REFERENCE_OUTPUTS` for the shipped reference model, else the folder given
    (a run folder or an exported model)."""
    path = _named(path)
    if path == reference_model():
        return REFERENCE_OUTPUTS
    if (path / STATE_FILE).is_file() and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return path


def output_folder(checkpoint: str | Path, out_dir: str | Path | None, name: str) -> Path:
    """Where a command writes what it made of a trained model: `out_dir`, else RUN/`name` (see `run_folder`).
    Checked before any work: a file in the way is refused."""
    out = Path(out_dir) if out_dir is not None else run_folder(checkpoint) / name
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"output folder {out} is a file; give another --out")
    return out


def load_trained_model(path: str | Path, use_ema: bool = True, device: str = "cpu") -> tuple[FrameCausalDiT, Config]:
    """The backbone of a run folder, checkpoint or exported model, in eval mode, and its config.

    The EMA weights, or with `use_ema=False` the raw ones; never an untrained model: weights that are
    missing are an error (an export holds only the EMA).
    """
    checkpoint = find_trained_checkpoint(path)
    state = read_state(checkpoint)
    config = from_dict(state["config"])
    model = build_backbone(config)
    if use_ema:
        if not (checkpoint / "ema.safetensors").is_file():
            raise CheckpointError(f"{checkpoint} has no ema.safetensors: its EMA weights are missing")
        load_module(model, checkpoint, "ema")
    else:
        if not (checkpoint / "model.safetensors").is_file():
            exported = (
                " (an exported model holds only the EMA weights: sample without --no-ema)"
                if ("exported_from" in state)
                else ""
            )
            raise CheckpointError(f"{checkpoint} has no model.safetensors: its raw weights are missing{exported}")
        tensors = load_tensors(checkpoint / "model.safetensors")
        backbone = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
        check_compatible(model, backbone, checkpoint / "model.safetensors")
        model.load_state_dict(backbone)
    nonfinite = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if nonfinite:
        raise CheckpointError(
            f"{checkpoint} holds NaN or infinite weights ({', '.join(nonfinite[:3])}): it cannot generate videos; "
            "use an earlier checkpoint of the run"
        )
    return model.to(device).eval(), config


@contextlib.contextmanager
def naming_the_checkpoint(path: str | Path) -> Iterator[None]:
    """Non-finite output of a trained model is reported with the checkpoint whose weights gave it."""
    try:
        yield
    except NonFiniteValuesError as error:
        raise NonFiniteValuesError(
            f"{find_trained_checkpoint(path)}: {error}; sample an earlier checkpoint of the run (its checkpoints/ "
            "folder), or train again with a lower train.lr"
        ) from error
