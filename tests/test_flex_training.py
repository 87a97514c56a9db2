"""Training with block-sparse FlexAttention (`model.attention=flex`, what a GPU runs) is training with dense-mask
SDPA: the same gradients through the model and the MiMo decoder, the same steps, the same resume. On a CPU it
runs under the `flex_backward_on_cpu` fixture (torch's device guard lifted, eager reference math); without it
a CPU run is refused before any work, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import MICRO, MICRO_RUN
from mimo.config import SampleConfig, load_config
from mimo.diffusion.sampler import sample_video
from mimo.errors import ConfigError
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective
from mimo.train.checkpoint import find_checkpoint, load_tensors
from mimo.train.logger import read_metrics
from mimo.train.trainer import Trainer, step_generator, train

RUN = (*MICRO_RUN, "train.sample_at_end=false")
FLOAT64_GRAD_ATOL = 1e-10  # the two kernels sum the softmax in different orders; nothing else differs
FLOAT32_LOSS_RTOL = 1e-5
# Adam divides each gradient by its own scale, so float32 rounding of a near-zero gradient moves its weight by a
# visible share of lr (1e-3): 1 % of one step's move (measured: 4.6e-6 after 4 steps)
FLOAT32_WEIGHT_ATOL = 1e-5
LOSS_KEYS = ("loss", "diffusion", "mask", "grad_norm")

pytestmark = pytest.mark.usefixtures("single_thread")


def _config(out_dir: Path, attention: str, *overrides: str):
    return load_config(None, [*RUN, f"train.out_dir={out_dir}", f"model.attention={attention}", *overrides])


def _objective_gradients(attention: str, ratio: float, randomize, clips) -> dict[str, torch.Tensor]:
    """Gradients of L_total of one CTF + MiMo step of a randomised float64 objective (backbone + decoder)."""
    config = load_config(None, [*MICRO, f"model.attention={attention}", f"mimo.mask_ratio={ratio}"])
    torch.manual_seed(0)
    objective = TrainingObjective(config, build_backbone(config))
    randomize(objective).double()
    losses = objective(clips[0].double(), None, step_generator(0, 0))
    losses["loss"].backward()
    return {name: p.grad for name, p in objective.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_flex_gradients_of_model_and_mimo_decoder_equal_sdpa_gradients(ratio, randomize, clips, flex_backward_on_cpu):
    """16 tokens a frame in 128-token tiles: every tile is partial, at r = 0.25 (12 kept) and 0.75 (4 kept)."""
    flex, sdpa = (_objective_gradients(attention, ratio, randomize, clips) for attention in ("flex", "sdpa"))
    assert flex.keys() == sdpa.keys()
    assert any(name.startswith("decoder.") for name in flex) and any(".attn.qkv." in name for name in flex)
    for name, expected in sdpa.items():
        assert expected.abs().max() > 1e3 * FLOAT64_GRAD_ATOL, name  # a gradient that could differ
        torch.testing.assert_close(flex[name], expected, atol=FLOAT64_GRAD_ATOL, rtol=0, msg=name)


def _losses(run_dir: Path) -> list[dict[str, float]]:
    return [{key: record[key] for key in LOSS_KEYS} for record in read_metrics(run_dir)]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = find_checkpoint(run_dir)
    return {name: load_tensors(checkpoint / f"{name}.safetensors") for name in ("model", "ema")}


def _assert_same_training(run: Path, reference: Path) -> None:
    for ours, theirs in zip(_losses(run), _losses(reference), strict=True):
        for key in LOSS_KEYS:
            assert ours[key] == pytest.approx(theirs[key], rel=FLOAT32_LOSS_RTOL), key
    ours, theirs = _weights(run), _weights(reference)
    for module in ("model", "ema"):
        for key, expected in theirs[module].items():
            torch.testing.assert_close(ours[module][key], expected, atol=FLOAT32_WEIGHT_ATOL, rtol=0)


def test_flex_training_steps_and_resume_equal_sdpa_training(tmp_path, flex_backward_on_cpu):
    sdpa = train(_config(tmp_path / "sdpa", "sdpa", "train.steps=4"))
    train(_config(tmp_path / "flex", "flex", "train.steps=2"))
    resumed = train(_config(tmp_path / "flex", "flex", "train.steps=4"))
    assert resumed.step == sdpa.step == 4
    _assert_same_training(tmp_path / "flex", tmp_path / "sdpa")


@pytest.mark.usefixtures("fresh_masks", "flex_backward_on_cpu")
def test_training_after_sampling_in_one_process_reuses_the_samplers_masks(tmp_path):
    """The sampler builds the MiMo decoder's layout, FrameLayout(T-1, N), under inference_mode (teacher-forced
    to the last frame, and again when the window slides); training then saves that BlockMask for backward."""
    config = _config(tmp_path, "flex", "train.steps=1")
    trainer = Trainer(config)
    frames, size = config.data.num_frames, config.data.frame_size
    clip = torch.rand(1, frames, 3, size, size) * 2 - 1
    for context, length in ((frames - 1, frames), (1, frames + 2)):  # teacher-forced; past the window
        options = SampleConfig(steps=1, window=config.sample_window)
        sample_video(trainer.ema.module, length, options, context=clip[:, :context])
    losses = trainer.train_step(trainer.batches())
    assert losses is not None and losses["mask"] > 0


def test_flex_training_on_a_cpu_is_refused_before_any_work_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.attention=flex cannot train on cpu") as refused:
        Trainer(_config(tmp_path, "flex"))
    assert "\n" not in str(refused.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
