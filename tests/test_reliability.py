"""Faults during training lose nothing, and bad input fails early with a message that says what to fix.

Each test injects one fault of docs/faults.md: a signal, a kill in the middle of a checkpoint
write, a NaN, a checkpoint of another model, a truncated or malicious file, a bad config or CLI
value, a tensor of the wrong shape, dtype or range.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import MICRO, MICRO_RUN
from mimo.cli import main
from mimo.config import SampleConfig, load_config
from mimo.data.synthetic import MovingShapes
from mimo.models import build_backbone
from mimo.models.checks import InputError, check_model_inputs, check_pixel_values, check_sample_inputs
from mimo.train.checkpoint import CheckpointError, find_checkpoint, load_module, load_tensors, save_checkpoint
from mimo.train.logger import read_metrics
from mimo.train.trainer import NonFiniteLossError, Trainer, train

RUN = MICRO_RUN
SUBPROCESS_TIMEOUT = 240  # seconds; generous for busy CI machines


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one intra-op thread


def run_config(out_dir: Path, *overrides: str):
    return load_config(None, [*RUN, f"train.out_dir={out_dir}", *overrides])


def _losses(run_dir: Path) -> list[dict[str, float]]:
    return [{k: r[k] for k in ("step", "loss", "diffusion", "mask", "grad_norm")} for r in read_metrics(run_dir)]


def _subprocess_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ----- signals and kills ---------------------------------------------------------------------------
def test_sigterm_checkpoints_at_a_step_boundary_and_the_resumed_run_repeats_the_losses(tmp_path):
    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "mimo.cli", "train", *RUN, "train.steps=100000", f"train.out_dir={interrupted}"]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = subprocess.Popen(command, env=_subprocess_env(), **pipes)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not read_metrics(interrupted) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]  # as shells expect: `&&` stops here
    assert "interrupted at step" in stderr and "resume with `mimo train" in stderr
    stopped_at = json.loads((find_checkpoint(interrupted) / "state.json").read_text())["step"]
    assert 1 <= stopped_at < 100000 and len(read_metrics(interrupted)) == stopped_at

    resumed = train(run_config(interrupted, f"train.steps={stopped_at + 2}"))  # `mimo train` again: resumes
    straight = train(run_config(tmp_path / "straight", f"train.steps={stopped_at + 2}"))
    assert resumed.step == straight.step
    assert _losses(interrupted) == _losses(tmp_path / "straight")


KILLED_WRITER = """
import sys, time, torch
import mimo.train.checkpoint as checkpoint

run_dir = sys.argv[1]
torch.manual_seed(0)
module = torch.nn.Linear(4, 3)
checkpoint.save_checkpoint(run_dir, 1, {"model": module.state_dict()}, None, {})
real_save_file = checkpoint.save_file

def slow_save_file(tensors, path, metadata=None):
    real_save_file(tensors, path, metadata)
    with open(path, "r+b") as handle:
        handle.truncate(40)  # half written when the kill comes
    print("writing", flush=True)
    time.sleep(600)

checkpoint.save_file = slow_save_file
checkpoint.save_checkpoint(run_dir, 2, {"model": {k: v + 1 for k, v in module.state_dict().items()}}, None, {})
"""


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=_subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "writing"
    finally:
        process.kill()
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    assert any(tmp_path.glob("checkpoints/.staging_*/*.tmp"))  # the kill did land mid-write
    checkpoint = find_checkpoint(tmp_path)
    assert checkpoint.name == "step_00000001"
    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 3)
    loaded = torch.nn.Linear(4, 3)
    load_module(loaded, checkpoint, "model")
    assert torch.equal(loaded.weight, expected.weight)
    # the next save cleans up the leftovers and moves `latest`
    assert save_checkpoint(tmp_path, 2, {"model": loaded.state_dict()}, None, {}).name == "step_00000002"
    assert not any(tmp_path.glob("checkpoints/.staging_*"))
    assert find_checkpoint(tmp_path).name == "step_00000002"


def test_incomplete_checkpoint_folders_are_never_picked(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": torch.nn.Linear(2, 2).state_dict()}, None, {})
    root = tmp_path / "checkpoints"
    (root / "step_00000009").mkdir()  # a folder without state.json, e.g. copied by hand and cut short
    (root / "latest").write_text("step_00000009")
    (root / "latest.tmp").write_text("step_0000")
    assert find_checkpoint(tmp_path).name == "step_00000001"


# ----- non-finite values -----------------------------------------------------------------------------
def _poison_loss_at(trainer: Trainer, step: int) -> None:
    forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        losses = forward(*args, **kwargs)
        if trainer.step == step:
            losses = {k: v * math.nan for k, v in losses.items()}
        return losses

    trainer.model.forward = poisoned


def test_nonfinite_loss_stops_with_the_step_and_losses_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(run_config(tmp_path, "train.steps=5", "train.checkpoint_every=1"))
    _poison_loss_at(trainer, step=2)
    with pytest.raises(NonFiniteLossError, match=r"at step 2: diffusion nan, mask nan, loss nan"):
        trainer.train()
    checkpoint = find_checkpoint(tmp_path)
    assert checkpoint.name == "step_00000002"
    assert all(torch.isfinite(t).all() for t in load_tensors(checkpoint / "model.safetensors").values())


def _poison_gradient_at(trainer: Trainer, step: int) -> None:
    weight = trainer.backbone.patch_embed.weight
    weight.register_hook(lambda grad: grad * math.nan if trainer.step == step else grad)


def test_nonfinite_gradient_step_is_skipped_without_touching_the_weights(tmp_path):
    trainer = Trainer(run_config(tmp_path / "steps", "train.on_nonfinite=skip"))
    _poison_gradient_at(trainer, step=0)
    before = {k: v.clone() for k, v in trainer.objective.state_dict().items()}
    ema_before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    assert trainer.train_step(trainer.batches()) is None
    assert all(torch.equal(before[k], v) for k, v in trainer.objective.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in trainer.ema.module.state_dict().items())

    trainer = Trainer(run_config(tmp_path / "run", "train.steps=3", "train.on_nonfinite=skip"))
    _poison_gradient_at(trainer, step=1)
    assert trainer.train().step == 3  # training went on past the skipped step
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 3]


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    trainer = Trainer(run_config(tmp_path))
    trainer.step = 1
    with torch.no_grad():
        trainer.backbone.final.linear.bias[0] = math.inf
    with pytest.raises(NonFiniteLossError, match=r"backbone\.final\.linear\.bias"):
        trainer.save()
    assert find_checkpoint(tmp_path) is None


# ----- loading ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    train(run_config(run_dir, "train.steps=2", "train.checkpoint_every=1"))
    return run_dir


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_checkpoint_of_another_architecture_names_the_mismatched_keys_and_shapes(trained_run, tmp_path, capsys):
    run_dir = _copy_run(trained_run, tmp_path / "run")
    saved = load_tensors(find_checkpoint(run_dir) / "model.safetensors")
    narrower = Trainer(run_config(run_dir, "model.width=32"))
    expected = narrower.objective.state_dict()
    first = min(k for k in saved if k in expected and saved[k].shape != expected[k].shape)
    line = f"{first}: checkpoint {tuple(saved[first].shape)} vs model {tuple(expected[first].shape)}"
    with pytest.raises(CheckpointError, match="shape mismatch") as error:
        narrower.resume()
    assert line in str(error.value)
    with pytest.raises(CheckpointError, match=r"not in model: decoder\."):
        Trainer(run_config(run_dir, "mimo.weight=0")).resume()  # a MiMo checkpoint into the CTF baseline
    assert main(["train", *RUN, f"train.out_dir={run_dir}", "model.width=32"]) == 2  # the CLI says the same
    assert line in capsys.readouterr().err


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_truncated_checkpoint_gives_a_clear_error(trained_run, tmp_path, name):
    run_dir = _copy_run(trained_run, tmp_path / "run")
    checkpoint = find_checkpoint(run_dir)
    path = checkpoint / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt") as error:
        Trainer(run_config(run_dir)).resume()
    assert f"move {checkpoint} out of the checkpoints folder" in str(error.value)
    shutil.move(checkpoint, tmp_path / "aside")  # what the message says to do
    assert Trainer(run_config(run_dir)).resume().name == "step_00000001"


class _RunsCode:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_disguised_as_a_checkpoint_is_refused_without_running_it(trained_run, tmp_path):
    run_dir = _copy_run(trained_run, tmp_path / "run")
    marker = tmp_path / "code_ran"
    (find_checkpoint(run_dir) / "model.safetensors").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(run_config(run_dir)).resume()
    assert not marker.exists()


def test_checkpoints_hold_only_safetensors_and_json(trained_run):
    checkpoint = find_checkpoint(trained_run)
    files = sorted(p.name for p in checkpoint.iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    for name in files:
        if name.endswith(".safetensors"):
            with safe_open(str(checkpoint / name), framework="pt") as handle:
                assert len(list(handle.keys())) > 0
        else:
            json.loads((checkpoint / name).read_text())


# ----- bad configuration and command lines -----------------------------------------------------------
MISSING_FILE = "missing file"


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        (None, ["train.steps=abc"], "train.steps: expected int"),
        (None, ["train.parallel=mpi"], "train.parallel"),
        (None, ["train.batch_size=0"], "train.batch_size"),
        (None, ["train.stepz=3"], "unknown key 'train.stepz'"),
        ("train: [unclosed", [], "not valid YAML"),
        ("train:\n  on_nonfinite: ignore\n", [], "train.on_nonfinite"),
        (MISSING_FILE, [], "not found"),
    ],
    ids=["wrong-type", "unknown-choice", "impossible-value", "unknown-key", "bad-yaml", "bad-yaml-value", "no-file"],
)
def test_bad_config_or_cli_value_exits_with_a_message_naming_the_key(tmp_path, capsys, yaml_text, overrides, message):
    config = tmp_path / "config.yaml"
    arguments = overrides
    if yaml_text is not None:
        if yaml_text != MISSING_FILE:
            config.write_text(yaml_text)
        arguments = [str(config), *overrides]
    assert main(["train", *arguments, f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


def test_malformed_override_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "train.steps=3", "train.lr"])
    assert exit_info.value.code == 2
    assert "section.key=value" in capsys.readouterr().err


# ----- bad tensors -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_clips():
    config = load_config(None, [*MICRO, "train.task=class_conditional"])
    torch.manual_seed(0)
    model = build_backbone(config).eval()
    data = MovingShapes(2, frame_size=16, num_frames=4)
    video = torch.stack([data[i]["video"] for i in range(2)])
    labels = torch.stack([data[i]["label"] for i in range(2)])
    return model, video, labels


def test_well_formed_inputs_pass_the_checks_and_run(model_and_clips):
    model, video, labels = model_and_clips
    noise_level = torch.rand(2, 2)
    keep = torch.arange(8).repeat(2, 1)
    check_model_inputs(model, video[:, 2:], noise_level, labels, video[:, :2], keep)
    with torch.no_grad():
        model(video[:, 2:], noise_level, labels, clean=video[:, :2], keep=keep)
    check_sample_inputs(model, 4, None, labels, video[:, :2], SampleConfig(steps=2), generator=torch.Generator())
    check_pixel_values("video", video)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("single-clip", r"batch axis: x\[None\]"),
        ("channels-last", r"permute\(0, 1, 4, 2, 3\)"),
        ("uint8", "uint8 pixels"),
        ("wrong-size", r"\(B, T, 3, 16, 16\)"),
        ("noise-level-per-clip", "one level per noisy frame"),
        ("float-labels", "integer class ids"),
        ("missing-labels", "class-conditional"),
        ("clean-batch", "batch size 1"),
        ("keep-too-long", "kept positions"),
    ],
)
def test_bad_model_inputs_are_named(model_and_clips, case, message):
    model, video, labels = model_and_clips
    noisy, clean, level = video[:, 2:], video[:, :2], torch.rand(2, 2)
    keep = None
    if case == "single-clip":
        noisy = noisy[0]
    elif case == "channels-last":
        noisy = noisy.permute(0, 1, 3, 4, 2)
    elif case == "uint8":
        noisy = ((noisy + 1) * 127.5).to(torch.uint8)
    elif case == "wrong-size":
        noisy = noisy[..., :8, :8]
    elif case == "noise-level-per-clip":
        level = torch.rand(2)
    elif case == "float-labels":
        labels = labels.float()
    elif case == "missing-labels":
        labels = None
    elif case == "clean-batch":
        clean = clean[:1]
    elif case == "keep-too-long":
        keep = torch.arange(17).repeat(2, 1)
    with pytest.raises(InputError, match=message):
        check_model_inputs(model, noisy, level, labels, clean, keep)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("context-fills-the-video", "must exceed the 2 context frames"),
        ("label-out-of-range", r"class ids in 0\.\.7"),
        ("nan-context", "NaN"),
        ("zero-steps", "steps must be a positive integer"),
        ("nothing-to-size-the-batch", "give batch_size, labels or context"),
    ],
)
def test_bad_sampling_arguments_are_named(model_and_clips, case, message):
    model, video, labels = model_and_clips
    arguments = dict(num_frames=4, batch_size=None, labels=labels, context=video[:, :2], options=SampleConfig(steps=2))
    if case == "context-fills-the-video":
        arguments["num_frames"] = 2
    elif case == "label-out-of-range":
        arguments["labels"] = labels + 100
    elif case == "nan-context":
        arguments["context"] = video[:, :2] * math.nan
    elif case == "zero-steps":
        arguments["options"] = SampleConfig(steps=0)
    elif case == "nothing-to-size-the-batch":
        arguments.update(labels=None, context=None)
        model = build_backbone(load_config(None, list(MICRO)))  # unconditional: labels do not size it either
    with pytest.raises(InputError, match=message):
        check_sample_inputs(model, generator=None, **arguments)


@pytest.mark.parametrize(
    ("scale", "message"), [(127.5, r"\[0, 255\]: x / 127.5 - 1"), (1.5, r"expects \[-1, 1\]"), (math.nan, "NaN")]
)
def test_training_batches_out_of_range_are_refused_before_a_step(tmp_path, scale, message):
    class Rescaled(MovingShapes):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            video = (item["video"] + 1) * scale  # [0, 255], [0, 3] or NaN
            return dict(item, video=video)

    trainer = Trainer(run_config(tmp_path), dataset=Rescaled(6, frame_size=16, num_frames=4))
    with pytest.raises(InputError, match=message):
        trainer.train_step(trainer.batches())
