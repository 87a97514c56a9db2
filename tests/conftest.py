"""Shared small fixtures: a micro configuration, a micro model whose outputs depend on every input,
and a batch of synthetic clips. Everything runs at 16×16 pixels with 4×4 patches and 4 frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness import flex_backward_on_cpu as lifted_flex_guard
from mimo.config import Config, load_config
from mimo.data.synthetic import MovingShapes
from mimo.models.attention import clear_mask_caches
from mimo.models.dit import FrameCausalDiT

VAE_SCALE, VAE_SHIFT = 0.5, 0.1  # not SD's values, so that a forgotten shift or scale shows
FRAME_SIZE = 16
NUM_FRAMES = 4
MICRO = ("model.preset=micro", f"data.frame_size={FRAME_SIZE}", "model.patch_size=4", f"data.num_frames={NUM_FRAMES}")
# A micro training run of a few steps: several epochs of 6 clips, a log line per step, no checkpoints in between.
MICRO_RUN = (
    *MICRO,
    "train.batch_size=2",
    "data.num_clips=6",
    "train.lr=1e-3",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "train.tensorboard=false",
    "sample.steps=1",
)
RANDOM_INIT_STD = 0.1  # large enough that adaLN gates and the output layer pass signal, small enough to stay stable


def micro_config(*overrides: str) -> Config:
    """The micro preset on 16×16 frames, with extra `section.key=value` overrides."""
    return load_config(None, [*MICRO, *overrides])


def randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every all-zero parameter (adaLN-Zero, the output layer, biases) random values.

    At initialisation the DiT's gates and output layer are zero, so its output ignores its inputs
    and any "output X does not change" test would pass vacuously.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * RANDOM_INIT_STD)
    return model


def micro_model(
    config: Config | None = None, num_classes: int | None = None, dtype: torch.dtype = torch.float32, seed: int = 0
) -> FrameCausalDiT:
    """A randomised micro FrameCausalDiT in eval mode; `num_classes` defaults to the config's."""
    config = config or micro_config()
    torch.manual_seed(seed)
    classes = config.num_classes if num_classes is None else num_classes
    model = FrameCausalDiT(
        config.model,
        config.data.channels,
        config.data.frame_size,
        classes,
        history_conditioned=config.diffusion.history_conditioned,
    )
    return randomize_zero_init(model, seed).to(dtype).eval()


@pytest.fixture(scope="module")
def single_thread():
    """Micro models gain nothing from intra-op threads, and on a loaded 2-core machine two threads per
    process made these tests up to ten times slower; use with `pytest.mark.usefixtures`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def flex_backward_on_cpu():
    """FlexAttention trains on a CPU for this test only (torch's guard lifted, see benchmarks/harness.py): the
    block-sparse path a GPU runs, forward and backward, through the whole model and trainer."""
    with lifted_flex_guard():
        yield


@pytest.fixture
def fresh_masks():
    """No mask cached by earlier tests: the test's sequence builds each mask first, as a new job's process does."""
    clear_mask_caches()


@pytest.fixture(scope="session")
def randomize() -> Callable[..., torch.nn.Module]:
    return randomize_zero_init


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Config]:
    return micro_config


@pytest.fixture(scope="session")
def make_model() -> Callable[..., FrameCausalDiT]:
    return micro_model


@pytest.fixture(scope="session")
def clips() -> tuple[torch.Tensor, torch.Tensor]:
    """Four synthetic clips (4, 4, 3, 16, 16) in [-1, 1] and their class labels."""
    dataset = MovingShapes(4, frame_size=FRAME_SIZE, num_frames=NUM_FRAMES, seed=0)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["video"] for item in items]), torch.stack([item["label"] for item in items])


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny diffusers AutoencoderKL (2x downsampling, 4 latent channels) saved to a folder."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=VAE_SCALE,
        shift_factor=VAE_SHIFT,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path
