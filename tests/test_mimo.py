"""MiMo: the training objective, its decoder and its targets.

- the decoder never sees a history frame after the one it predicts for;
- with r = 0 and λ = 0 a step is exactly the CTF baseline's (loss and gradients, computed by hand);
- a micro model overfits one batch, and the masked-history loss falls with it;
- inference needs nothing from MiMo: the backbone alone samples.
"""

from __future__ import annotations

import pytest
import torch

from mimo.config import SampleConfig
from mimo.diffusion.sampler import sample_video
from mimo.models.dit import FrameCausalDiT
from mimo.models.mimo_decoder import MimoDecoder
from mimo.objectives.objective import (
    TrainingObjective,
    build_ctf_batch,
    masked_reconstruction_loss,
    mimo_targets,
)

pytestmark = pytest.mark.usefixtures("single_thread")

PATCH = 4
CHANGED = 1e-5


def _patch(video: torch.Tensor, clip: int, frame: int, position: int, grid: int) -> torch.Tensor:
    """One patch as a vector in (channel, row, column) order, cut by plain slicing."""
    row, col = divmod(position, grid)
    return video[clip, frame, :, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH].reshape(-1)


@pytest.mark.parametrize(("targets", "offsets"), [("current", [0]), ("next", [1]), ("current+next", [0, 1])])
def test_targets_of_history_frame_t_are_the_patches_of_frames_t_and_t_plus_1(targets, offsets, clips):
    video = clips[0][:2]
    grid = video.shape[-1] // PATCH
    out = mimo_targets(video, PATCH, targets, normalize=False)
    assert out.shape == (2, video.shape[1] - 1, grid * grid, len(offsets), 3 * PATCH * PATCH)
    for clip in range(2):
        for frame in range(video.shape[1] - 1):
            for position in (0, 5, grid * grid - 1):
                for k, offset in enumerate(offsets):
                    expected = _patch(video, clip, frame + offset, position, grid)
                    assert torch.equal(out[clip, frame, position, k], expected)


def test_normalised_targets_have_zero_mean_and_unit_variance_per_patch():
    video = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = mimo_targets(video, PATCH, "current+next", normalize=True)
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(out.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=-1), torch.ones(out.shape[:-1]), atol=1e-3, rtol=0)


def test_masked_reconstruction_loss_averages_patch_errors_over_dropped_positions_only():
    generator = torch.Generator().manual_seed(0)
    prediction, target = (
        torch.randn(2, 3, 4, 2, 5, generator=generator),
        torch.randn(2, 3, 4, 2, 5, generator=generator),
    )
    dropped = torch.tensor([[True, False, True, False], [False, False, False, True]])
    errors = [
        (prediction[b, t, n] - target[b, t, n]).pow(2).mean()
        for b in range(2)
        for t in range(3)
        for n in range(4)
        if dropped[b, n]
    ]
    torch.testing.assert_close(masked_reconstruction_loss(prediction, target, dropped), torch.stack(errors).mean())
    everything = (prediction - target).pow(2).mean()
    torch.testing.assert_close(masked_reconstruction_loss(prediction, target, None), everything)


def _mimo_objective(make_config, randomize, *overrides: str) -> TrainingObjective:
    config = make_config("train.task=unconditional", *overrides)
    torch.manual_seed(0)
    backbone = FrameCausalDiT(config.model, config.data.channels, config.data.frame_size, config.num_classes)
    return randomize(TrainingObjective(config, backbone)).eval()


@pytest.mark.parametrize("layer", [1, 2])
def test_the_decoder_prediction_for_history_frame_t_ignores_every_later_frame(layer, make_config, randomize, clips):
    objective = _mimo_objective(make_config, randomize, f"mimo.decoder_layer={layer}")
    backbone, decoder = objective.backbone, objective.decoder
    video = clips[0]
    batch = build_ctf_batch(video, None, objective.config, 0, torch.Generator().manual_seed(0), backbone.grid)
    keep = batch.mask.keep

    @torch.no_grad()
    def predict(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        out = backbone(noisy, batch.noise_level, clean=clean, noisy_start=0, keep=keep, return_layers=(layer,))
        return decoder(out.clean_hidden[layer], keep)

    base = predict(batch.clean, batch.noisy)
    history = batch.clean.shape[1]
    assert base.shape == (video.shape[0], history, backbone.tokens_per_frame, 2, 3 * PATCH * PATCH)
    generator = torch.Generator().manual_seed(1)
    for frame in range(video.shape[1]):
        clean, noisy = batch.clean.clone(), batch.noisy.clone()
        noisy[:, frame] += torch.randn(noisy[:, frame].shape, generator=generator)
        assert torch.equal(predict(batch.clean, noisy), base), f"noisy frame {frame} leaked into the decoder"
        if frame < history:
            clean[:, frame] += torch.randn(clean[:, frame].shape, generator=generator)
            after = predict(clean, batch.noisy)
            assert torch.equal(after[:, :frame], base[:, :frame]), f"clean frame {frame} leaked backwards"
            assert (after[:, frame:] - base[:, frame:]).abs().max() > CHANGED


def test_the_decoder_alone_is_frame_causal_and_fills_every_position():
    torch.manual_seed(0)
    decoder = MimoDecoder(backbone_width=16, width=12, depth=2, heads=2, patch_dim=5, num_targets=2, grid=3).eval()
    keep = torch.tensor([[0, 4, 8], [1, 2, 3]])
    features = torch.randn(2, 4, 3, 16)
    with torch.no_grad():
        base = decoder(features, keep)
        assert base.shape == (2, 4, 9, 2, 5)
        for frame in range(4):
            changed = features.clone()
            changed[:, frame] += 1.0
            after = decoder(changed, keep)
            assert torch.equal(after[:, :frame], base[:, :frame])
            assert (after[:, frame] - base[:, frame]).abs().max() > CHANGED


def test_the_objective_logs_both_losses_and_trains_on_the_shortened_masked_history(make_config, randomize, clips):
    objective = _mimo_objective(make_config, randomize)
    seen = {}
    objective.backbone.register_forward_hook(lambda module, args, output: seen.update(output=output))
    losses = objective(clips[0], None, torch.Generator().manual_seed(0))
    assert set(losses) == {"diffusion", "mask", "loss"}
    torch.testing.assert_close(losses["loss"], losses["diffusion"] + 0.5 * losses["mask"])
    hidden = seen["output"].clean_hidden[objective.decoder_layer]
    tokens = objective.backbone.tokens_per_frame
    assert hidden.shape[1:3] == (clips[0].shape[1] - 1, tokens // 2)  # r = 0.5 of 16 positions dropped


@pytest.mark.parametrize(
    "overrides",
    [
        ("train.task=prediction", "train.context_frames=2"),
        ("train.task=class_conditional", "train.label_dropout=0.5"),
        ("train.task=unconditional", "diffusion.timestep_sampling=uniform"),
    ],
)
def test_with_no_mask_and_no_weight_a_step_is_exactly_the_ctf_baseline(overrides, make_config, randomize, clips):
    config = make_config("mimo.mask_ratio=0", "mimo.weight=0", *overrides)
    torch.manual_seed(0)
    backbone = FrameCausalDiT(config.model, config.data.channels, config.data.frame_size, config.num_classes)
    randomize(backbone)
    objective = TrainingObjective(config, backbone)
    assert objective.decoder is None
    assert {id(p) for p in objective.parameters()} == {id(p) for p in backbone.parameters()}
    video, labels = clips
    losses = objective(video, labels, torch.Generator().manual_seed(3))
    assert set(losses) == {"diffusion", "loss"}
    losses["loss"].backward()
    gradients = {name: p.grad.clone() for name, p in backbone.named_parameters()}
    backbone.zero_grad()

    # the baseline by hand, drawing the same noise in the documented order: levels, noise, label dropout
    generator = torch.Generator().manual_seed(3)
    first = config.context_frames
    target = video[:, first:]
    draws = target.shape[:2]
    if config.diffusion.timestep_sampling == "uniform":
        levels = torch.rand(draws, generator=generator)
    else:
        levels = torch.sigmoid(torch.randn(draws, generator=generator))
    noise = torch.randn(target.shape, generator=generator)
    given = None
    if config.num_classes:
        dropped = torch.rand(video.shape[0], generator=generator) < config.train.label_dropout
        given = torch.where(dropped, backbone.null_class, labels)
        assert dropped.any() and not dropped.all()
    s = levels[:, :, None, None, None]
    velocity = backbone((1 - s) * target + s * noise, levels, given, clean=video[:, :-1], noisy_start=first).velocity
    baseline = (velocity - (noise - target)).pow(2).mean()
    baseline.backward()
    torch.testing.assert_close(losses["loss"], baseline)
    for name, p in backbone.named_parameters():
        torch.testing.assert_close(gradients[name], p.grad, msg=f"gradient of {name}")


def _overfit(config, video, steps: int, lr: float) -> list[dict[str, float]]:
    torch.manual_seed(0)
    backbone = FrameCausalDiT(config.model, config.data.channels, config.data.frame_size, config.num_classes)
    objective = TrainingObjective(config, backbone)
    optimizer = torch.optim.Adam(objective.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        losses = objective(video, None, torch.Generator().manual_seed(0))  # the same noise every step
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    return history


OVERFIT_STEPS = 60
OVERFIT_LR = 4e-3


def test_a_micro_baseline_overfits_one_batch(make_config, clips):
    config = make_config("mimo.weight=0", "mimo.mask_ratio=0", "train.task=unconditional")
    history = _overfit(config, clips[0][:2], OVERFIT_STEPS, OVERFIT_LR)
    assert history[-1]["loss"] < history[0]["loss"] / 10


def test_a_micro_mimo_model_overfits_one_batch_and_its_mask_loss_falls(make_config, clips):
    config = make_config("train.task=unconditional")
    history = _overfit(config, clips[0][:2], OVERFIT_STEPS, OVERFIT_LR)
    assert history[-1]["loss"] < history[0]["loss"] / 10
    assert history[-1]["diffusion"] < history[0]["diffusion"] / 10
    assert history[-1]["mask"] < history[0]["mask"] / 5


def test_a_mimo_backbone_samples_without_its_decoder(make_config, randomize, clips):
    objective = _mimo_objective(make_config, randomize)
    state = objective.backbone.state_dict()
    assert not any("decoder" in name for name in state)
    config = objective.config
    inference = FrameCausalDiT(config.model, config.data.channels, config.data.frame_size, config.num_classes)
    inference.load_state_dict(state)  # strict: the inference model has exactly the backbone's weights
    inference.eval()
    options = SampleConfig(steps=2, use_cache=True)
    frames = sample_video(inference, 3, options, batch_size=2, generator=torch.Generator().manual_seed(0))
    again = sample_video(objective.backbone, 3, options, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 3, 3, 16, 16) and torch.isfinite(frames).all()
    assert torch.equal(frames, again)
