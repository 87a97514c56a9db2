"""Against exposure bias: noise augmentation of the history, history guidance and the model's own history.

The model is told how noised its history is, the training batch noises only the history (and drops it whole for
guidance's history-free branch), the sampler noises every history frame the same way cached or not, a model
trained on clean histories refuses both; the own-history option trains on the model's own teacher-forced
samples of the history, each from the true frames before it, with every other draw unchanged."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import randomize_zero_init
from mimo.config import ConfigError, SampleConfig, load_config
from mimo.diffusion.sampler import sample_video
from mimo.errors import InputError
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective, build_ctf_batch

pytestmark = pytest.mark.usefixtures("single_thread")

NOISED = ("diffusion.history_noise_max=0.3",)
GUIDABLE = (*NOISED, "diffusion.history_dropout=0.1")


def _batch(config, video, seed: int = 0):
    return build_ctf_batch(video, None, config, 0, torch.Generator().manual_seed(seed), grid=4)


def test_history_noise_leaves_the_diffusion_draws_and_the_tube_mask_as_they_were(make_config, clips):
    """Arms with and without history noise are paired: same noise levels, noise and mask for the noisy frames."""
    video = clips[0]
    clean, noised = _batch(make_config(), video), _batch(make_config(*NOISED), video)
    assert clean.history_level is None and torch.equal(clean.clean, video[:, :-1])
    for name in ("noisy", "noise_level", "velocity"):
        assert torch.equal(getattr(clean, name), getattr(noised, name))
    assert torch.equal(clean.mask.keep, noised.mask.keep)
    assert noised.history_level.shape == video[:, :-1].shape[:2]
    assert (noised.history_level >= 0).all() and (noised.history_level <= 0.3).all()
    assert noised.history_level.unique().numel() > 1  # one level per frame, not one for all
    assert not torch.equal(noised.clean, video[:, :-1])


def test_history_noise_is_the_interpolant_at_the_level_the_model_is_told(make_config, clips):
    video = clips[0]
    batch = _batch(make_config(*NOISED), video)
    s = batch.history_level[..., None, None, None]
    implied_noise = (batch.clean - (1 - s) * video[:, :-1]) / s
    assert implied_noise.std().item() == pytest.approx(1.0, abs=0.1)  # what is left is unit Gaussian noise


def test_history_dropout_gives_whole_clips_a_history_of_pure_noise(make_config, clips):
    video = clips[0].repeat(16, 1, 1, 1, 1)  # 64 clips: about 6 dropped at 10 %
    batch = _batch(make_config(*GUIDABLE), video)
    dropped = (batch.history_level == 1).all(dim=1)
    assert 0 < int(dropped.sum()) < len(video) // 2
    assert ((batch.history_level == 1).any(dim=1) == dropped).all()  # whole histories, never single frames
    kept = ~dropped
    assert (batch.history_level[kept] <= 0.3).all()
    # at level 1 nothing of the clip is left in its history
    correlation = torch.corrcoef(torch.stack([batch.clean[dropped].flatten(), video[:, :-1][dropped].flatten()]))
    assert abs(correlation[0, 1].item()) < 0.05


def test_the_model_is_told_the_history_noise_level(make_config, make_model, clips):
    model = make_model(make_config(*NOISED))
    video = clips[0]
    noisy, level = video[:, 2:3], torch.full((4, 1), 0.5)
    outputs = [
        model(noisy, level, clean=video[:, :2], clean_noise_level=torch.full((4, 2), s)).velocity for s in (0.0, 0.2)
    ]
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4
    told_nothing = model(noisy, level, clean=video[:, :2]).velocity
    torch.testing.assert_close(told_nothing, outputs[0], rtol=0, atol=0)  # no level given: a clean history


def test_a_model_trained_on_clean_histories_refuses_noise_levels_and_history_options(make_model, clips):
    model = make_model()
    video = clips[0]
    with pytest.raises(InputError, match="clean histories"):
        model(video[:, 2:3], torch.ones(4, 1), clean=video[:, :2], clean_noise_level=torch.zeros(4, 2))
    for option in ({"history_noise": 0.1}, {"history_guidance": 2.0}):
        with pytest.raises(InputError, match="clean histories"):
            sample_video(model, 3, SampleConfig(steps=2, **option), context=video[:, :2])


def test_history_guidance_at_zero_follows_the_history_free_branch_alone(make_config, make_model, clips):
    """w = 0 keeps only the branch whose history is pure noise: the context must not matter at all."""
    model = make_model(make_config(*GUIDABLE))
    video = clips[0]

    def sample(context: torch.Tensor, guidance: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        options = SampleConfig(steps=2, history_guidance=guidance)
        return sample_video(model, 4, options, context=context, generator=generator)

    torch.testing.assert_close(sample(video[:, :2], 0.0)[:, 2:], sample(video[[1, 2, 3, 0], :2], 0.0)[:, 2:])
    guided = sample(video[:, :2], 1.5)[:, 2:]
    assert (guided - sample(video[[1, 2, 3, 0], :2], 1.5)[:, 2:]).abs().max() > 1e-3


def test_sampling_with_a_noised_history_depends_on_the_level(make_config, make_model, clips):
    model = make_model(make_config(*NOISED))
    context = clips[0][:, :2]
    samples = [
        sample_video(
            model,
            4,
            SampleConfig(steps=2, history_noise=s),
            context=context,
            generator=torch.Generator().manual_seed(0),
        )
        for s in (0.0, 0.2)
    ]
    assert torch.equal(samples[0][:, :2], context) and torch.equal(samples[1][:, :2], context)  # given, unchanged
    assert (samples[0][:, 2:] - samples[1][:, 2:]).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["sample.history_noise=0.1"], "sample.history_noise"),  # a model of clean histories
        ([*NOISED, "sample.history_noise=0.5"], "sample.history_noise"),  # above the trained levels
        ([*NOISED, "sample.history_guidance=2"], "sample.history_guidance"),  # no history dropout in training
        (["diffusion.history_noise_max=1.5"], "diffusion.history_noise_max"),
        (["diffusion.history_dropout=1"], "diffusion.history_dropout"),
        (["sample.shift=0"], "sample.shift"),
        (["train.lr_schedule=linear"], "train.lr_schedule"),
    ],
)
def test_history_and_schedule_options_are_validated_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, overrides)


def test_history_guidance_together_with_classifier_free_guidance_is_refused():
    with pytest.raises(ConfigError, match=re.escape("sample.history_guidance")):
        load_config(None, ["train.task=class_conditional", *GUIDABLE, "sample.history_guidance=2"])


def _objective(make_config, *overrides):
    config = make_config("train.context_frames=1", *overrides)
    return TrainingObjective(config, randomize_zero_init(build_backbone(config)))


def test_own_history_replaces_the_generated_frames_history_with_the_models_samples(make_config, clips):
    video = clips[0]
    objective = _objective(make_config, "diffusion.own_history=1")
    history = objective.own_history(video, None, torch.Generator().manual_seed(0))
    assert torch.equal(history[:, :1], video[:, :1])  # the given frame stays true
    assert (history[:, 1:] - video[:, 1:-1]).abs().amin(dim=(2, 3, 4)).max() > 0  # every later frame is sampled
    assert history.abs().max() <= 1
    # each sample sees only the true frames before it: a later true frame changes no earlier sample
    changed = video.clone()
    changed[:, 1] = -changed[:, 1]  # 4-frame clips: history frames 0 (given), 1 and 2 (sampled)
    again = objective.own_history(changed, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again[:, 1], history[:, 1], rtol=0, atol=1e-6)  # sampled from frame 0 only
    assert (again[:, 2] - history[:, 2]).abs().max() > 1e-4


def test_own_history_leaves_every_other_draw_and_the_targets_as_they_were(make_config, clips):
    video, generator = clips[0], torch.Generator().manual_seed(0)
    plain = _objective(make_config)
    own = _objective(make_config, "diffusion.own_history=0.5")
    history = own.own_history(video, None, torch.Generator().manual_seed(0))
    a = build_ctf_batch(video, None, plain.config, 0, torch.Generator().manual_seed(0), grid=4)
    b = build_ctf_batch(video, None, own.config, 0, generator, grid=4, history=history)
    for name in ("noisy", "noise_level", "velocity"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.mask.keep, b.mask.keep) and torch.equal(b.clean, history)
    kept_true = (history == video[:, :-1]).flatten(1).all(dim=1)
    assert 0 < int(kept_true.sum()) < len(video) or len(video) < 4  # about half the clips keep the true history
