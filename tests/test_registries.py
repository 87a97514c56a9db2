"""Each option set is one registry beside its implementation: an entry added there is accepted by the config
and used by the code that reads the option, with no other edit (README, "How to extend")."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import Dataset

from conftest import micro_config, micro_model
from mimo.config import ConfigError, SampleConfig
from mimo.data import DATASETS, build_dataset
from mimo.diffusion import flow
from mimo.diffusion.sampler import sample_video
from mimo.models import attention
from mimo.objectives.objective import build_ctf_batch
from mimo.options import check_options


def _levels_the_model_sees(monkeypatch, model) -> list[float]:
    """The noise level of every call of `model` (uncached sampling calls its forward)."""
    levels = []
    original = model.forward

    def recording(noisy, noise_level, *args, **kwargs):
        levels.append(noise_level.flatten()[0].item())
        return original(noisy, noise_level, *args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    return levels


def test_a_new_sampling_grid_is_accepted_by_the_config_and_stepped_through_by_the_sampler(monkeypatch):
    seen = []

    def quadratic_grid(steps: int, options: SampleConfig) -> torch.Tensor:  # more steps near the clean end
        levels = torch.linspace(1.0, 0.0, steps + 1) ** 2
        seen.append(levels)
        return levels

    with pytest.raises(ConfigError, match=r"sample\.grid"):
        check_options(micro_config("sample.grid=quadratic"))
    monkeypatch.setitem(flow.SAMPLING_GRIDS, "quadratic", quadratic_grid)
    config = check_options(micro_config("sample.grid=quadratic", "sample.steps=3", "sample.use_cache=false"))
    model = micro_model(config)
    levels = _levels_the_model_sees(monkeypatch, model)
    sample_video(model, 1, config.sampling, batch_size=1)
    assert len(seen) == 1 and levels == pytest.approx(seen[0][:-1].tolist())


@dataclass(frozen=True)
class PowerGridOptions(SampleConfig):
    """SampleConfig with the parameter of a new grid: in the library, one more field of SampleConfig."""

    power: float = 2.0


def test_a_grid_with_a_parameter_reads_it_from_the_sampling_options(monkeypatch):
    def power_grid(steps: int, options: PowerGridOptions) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, steps + 1) ** options.power

    monkeypatch.setitem(flow.SAMPLING_GRIDS, "power", power_grid)
    model = micro_model(micro_config())
    levels = _levels_the_model_sees(monkeypatch, model)
    sample_video(model, 1, PowerGridOptions(grid="power", power=3.0, steps=2, use_cache=False), batch_size=1)
    assert levels == pytest.approx([1.0, 0.5**3])


def test_a_new_noise_level_sampler_is_accepted_by_the_config_and_drawn_by_the_objective(monkeypatch):
    def constant_levels(shape, generator, diffusion):
        return torch.full(shape, 0.25)

    with pytest.raises(ConfigError, match=r"diffusion\.timestep_sampling"):
        check_options(micro_config("diffusion.timestep_sampling=constant"))
    monkeypatch.setitem(flow.NOISE_LEVEL_SAMPLERS, "constant", constant_levels)
    config = micro_config("diffusion.timestep_sampling=constant")
    video = torch.zeros(2, config.data.num_frames, 3, config.data.frame_size, config.data.frame_size)
    batch = build_ctf_batch(video, None, config, 0, torch.Generator().manual_seed(0), grid=4)
    assert torch.equal(batch.noise_level, torch.full_like(batch.noise_level, 0.25))


class Blank(Dataset):
    """A toy dataset: black clips of the configured shape."""

    def __init__(self, config, count: int):
        self.shape, self.count = (config.num_frames, config.channels, config.frame_size, config.frame_size), count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"video": -torch.ones(self.shape), "label": torch.tensor(0)}


def test_a_new_dataset_is_accepted_by_the_config_and_built_by_name(monkeypatch):
    with pytest.raises(ConfigError, match=r"data\.dataset"):
        check_options(micro_config("data.dataset=blank", "data.path=unused"))

    def blank(config, split: str, num_clips: int | None, start_at_zero: bool) -> Dataset:
        return Blank(config, num_clips or 5)

    monkeypatch.setitem(DATASETS, "blank", blank)
    config = micro_config("data.dataset=blank", "data.path=unused")
    dataset = build_dataset(config.data, "eval", num_clips=3)
    assert isinstance(dataset, Blank) and len(dataset) == 3


def test_a_new_attention_rule_is_one_function_that_both_mask_forms_follow(monkeypatch):
    """README's row: edit `frame_causal_rule` and the dense mask and FlexAttention's block mask both change."""

    def no_history(query_frame, query_clean, key_frame, key_clean):  # noisy frames see only themselves
        return (query_clean == key_clean) & (key_frame == query_frame)

    layout = attention.FrameLayout(2, 4, 2, 4, 1)
    attention.clear_mask_caches()
    monkeypatch.setattr(attention, "frame_causal_rule", no_history)
    try:
        frame, clean = layout.tokens()
        expected = no_history(frame[:, None], clean[:, None], frame[None, :], clean[None, :])
        assert torch.equal(layout.dense_mask(), expected)
        block = layout.block_mask(block_size=4).to_dense()[0, 0].bool()  # (tiles, tiles) of 4 tokens
        assert torch.equal(block, expected.unflatten(0, (-1, 4)).unflatten(2, (-1, 4)).any(dim=(1, 3)))
    finally:
        attention.clear_mask_caches()
