"""REPA, the VFM-alignment baseline: projector, loss, encoders, feature cache, and REPA in training (with MiMo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from conftest import FRAME_SIZE, NUM_FRAMES, micro_config
from mimo.config import ConfigError, load_config
from mimo.data.encoder_features import (
    ENCODER_FEATURES_KEY,
    WithEncoderFeatures,
    cached_feature_dim,
    extract_features,
)
from mimo.data.synthetic import MovingShapes
from mimo.models import build_backbone
from mimo.models.encoders import (
    RandomEncoder,
    ViTEncoder,
    build_encoder,
    dinov2_encoder,
    resize_grid,
    timm_encoder,
)
from mimo.models.repa import RepaProjector
from mimo.objectives.objective import TrainingObjective, build_ctf_batch
from mimo.objectives.repa import aligned_pairs, negative_cosine_similarity

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "repa"
PROJECTOR_DIM = 64  # REPA's 2048 is slow on a CPU and changes nothing these tests check
GRID = FRAME_SIZE // 4  # the micro backbone's token grid (4-pixel patches)
REPA = ("repa.encoder=random", f"repa.projector_dim={PROJECTOR_DIM}", "repa.layer=1")
NO_MIMO = ("mimo.weight=0", "mimo.mask_ratio=0")


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread is as fast, and far faster on a machine busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def repa_config(mode: str, *overrides: str):
    return micro_config(*REPA, f"repa.mode={mode}", *overrides)


def repa_objective(config, seed: int = 0, feature_dim: int | None = None) -> TrainingObjective:
    torch.manual_seed(seed)
    return TrainingObjective(config, build_backbone(config), feature_dim)


def fixed_generator() -> torch.Generator:
    return torch.Generator().manual_seed(7)


# ----- projector and loss ------------------------------------------------------------------------


def test_projector_is_repas_three_layer_mlp_from_backbone_width_to_encoder_features():
    projector = RepaProjector(width=48, feature_dim=24, hidden=80)
    kinds = [type(layer) for layer in projector.mlp]
    assert kinds == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    shapes = [tuple(layer.weight.shape) for layer in projector.mlp[0::2]]
    assert shapes == [(80, 48), (80, 80), (24, 80)]
    assert projector(torch.randn(2, 3, 5, 48)).shape == (2, 3, 5, 24)


def test_loss_is_minus_one_exactly_when_features_match_and_otherwise_the_mean_negative_cosine():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(6, 10, 16, generator=generator)
    assert negative_cosine_similarity(prediction, 3.0 * prediction).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_cosine_similarity(prediction, -prediction).item() == pytest.approx(1.0, abs=1e-6)
    target = torch.randn(6, 10, 16, generator=generator)
    reference = -F.cosine_similarity(prediction.double(), target.double(), dim=-1).mean()
    loss = negative_cosine_similarity(prediction, target)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    assert loss.item() > -1.0


def test_encoder_grid_is_resized_bilinearly_along_the_right_axes():
    columns = torch.arange(8.0).view(1, 8, 1).expand(8, 8, 3)  # (h, w, E): value = column index
    resized = resize_grid(columns[None, None], 4)[0, 0]  # leading (B, T) axes pass through
    assert resized.shape == (4, 4, 3)
    assert torch.equal(resized, resized[:1].expand_as(resized))  # still constant down each column
    # a bilinear filter keeps a ramp linear away from the border: output column j is centred at 2j + 0.5
    assert torch.allclose(resized[0, 1:3, 0], torch.tensor([2.5, 4.5]))
    assert resize_grid(columns, 8) is columns


def test_aligned_pairs_match_each_token_with_its_own_frame_and_position():
    """Both: history token (t, j) ↔ features of clean frame t at kept position keep[j]; noisy token (t, n) ↔
    features of generated frame first_noisy + t at position n. Checked token by token."""
    batch, frames, positions, first_noisy = 2, 4, 9, 1
    generator = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(positions, generator=generator)[:4].sort().values for _ in range(batch)])
    clean = torch.randn(batch, frames - 1, 4, 5, generator=generator)
    noisy = torch.randn(batch, frames - first_noisy, positions, 5, generator=generator)
    targets = torch.randn(batch, frames, positions, 3, generator=generator)
    pairs = {}
    for b in range(batch):
        for t in range(frames - 1):
            for j in range(4):
                pairs[tuple(clean[b, t, j].tolist())] = targets[b, t, keep[b, j]]
        for t in range(frames - first_noisy):
            for n in range(positions):
                pairs[tuple(noisy[b, t, n].tolist())] = targets[b, first_noisy + t, n]
    for mode, count in (("history", batch * 3 * 4), ("future", batch * 3 * positions), ("both", len(pairs))):
        tokens, target = aligned_pairs(mode, clean, noisy, targets, keep, first_noisy)
        assert tokens.shape == (count, 5) and target.shape == (count, 3)
        for token, token_target in zip(tokens, target, strict=True):
            assert torch.equal(pairs[tuple(token.tolist())], token_target)


# ----- the objective ------------------------------------------------------------------------------


def grid_features(clips: torch.Tensor) -> torch.Tensor:
    """Live random-encoder features of `clips` already on the backbone's grid: positions map one to one."""
    return resize_grid(RandomEncoder().encode_video(clips), GRID)


def repa_loss(objective: TrainingObjective, clips: torch.Tensor, features: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        return objective(clips, None, fixed_generator(), encoder_features=features)["repa"].item()


def perturbed(features: torch.Tensor, frames, positions: torch.Tensor | None = None) -> torch.Tensor:
    """`features` with new values at the given frames (and, per clip, spatial positions of the grid)."""
    changed = rearrange(features.clone(), "b t h w e -> b t (h w) e")
    for b in range(changed.shape[0]):
        where = slice(None) if positions is None else positions[b]
        changed[b, frames, where] = torch.randn_like(changed[b, frames, where]) * 5
    return rearrange(changed, "b t (h w) e -> b t h w e", h=GRID)


def test_masked_history_tokens_are_aligned_only_where_they_exist(clips):
    video, _ = clips
    config = repa_config("history", "mimo.mask_ratio=0.5")
    objective = repa_objective(config).eval()
    features = grid_features(video)
    mask = build_ctf_batch(video, None, config, 0, fixed_generator(), GRID).mask
    dropped = [mask.dropped[b].nonzero().flatten() for b in range(len(video))]
    history = slice(0, NUM_FRAMES - 1)
    base = repa_loss(objective, video, features)
    assert repa_loss(objective, video, perturbed(features, history, dropped)) == pytest.approx(base, abs=1e-6)
    assert repa_loss(objective, video, perturbed(features, NUM_FRAMES - 1)) == pytest.approx(base, abs=1e-6)
    assert abs(repa_loss(objective, video, perturbed(features, history, mask.keep)) - base) > 1e-3


def test_future_tokens_are_aligned_to_the_clean_features_of_the_generated_frames_only(clips):
    video, _ = clips
    config = repa_config("future", *NO_MIMO)
    objective = repa_objective(config).eval()
    features = grid_features(video)
    base = repa_loss(objective, video, features)
    context = slice(0, config.context_frames)
    assert repa_loss(objective, video, perturbed(features, context)) == pytest.approx(base, abs=1e-6)
    assert abs(repa_loss(objective, video, perturbed(features, NUM_FRAMES - 1)) - base) > 1e-3


@pytest.mark.parametrize("mode", ["history", "future", "both"])
def test_training_with_each_mode_learns_to_align(mode):
    """On one batch the REPA loss must fall far below what the best constant projection reaches,
    -|mean of the normalised targets|: the projected tokens have to follow the frames' content.
    Random-pixel clips, so that the targets point every way (moving shapes are mostly background)."""
    video = torch.rand(2, NUM_FRAMES, 3, FRAME_SIZE, FRAME_SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    objective = repa_objective(repa_config(mode, *NO_MIMO, "repa.weight=1")).train()
    parameters = list(objective.parameters())
    assert all(p.requires_grad for p in parameters)
    assert not any(p is q for p in parameters for q in objective.encoder.parameters())
    optimizer = torch.optim.Adam(parameters, lr=2e-3)
    losses = []
    for _ in range(20):
        step = objective(video, None, fixed_generator())
        step["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(step["repa"].item())
    batch = build_ctf_batch(video, None, objective.config, 0, fixed_generator(), GRID)
    targets = rearrange(grid_features(video), "b t h w e -> b t (h w) e")
    frames = {"history": targets[:, :-1], "future": targets[:, batch.first_noisy :]}
    used = torch.cat([frames[m].flatten(0, 2) for m in frames if mode in (m, "both")])
    best_constant = -F.normalize(used, dim=-1).mean(dim=0).norm().item()
    assert losses[-1] < losses[0] - 0.3
    assert losses[-1] < best_constant - 0.3, (losses[-1], best_constant)


def test_mimo_with_repa_both_trains_all_three_losses(clips):
    video, _ = clips
    config = repa_config("both", "mimo.weight=0.5", "mimo.mask_ratio=0.5", "repa.weight=0.25")
    objective = repa_objective(config)
    losses = objective(video, None, fixed_generator())
    assert {"diffusion", "mask", "repa", "loss"} <= set(losses)
    expected = losses["diffusion"] + 0.5 * losses["mask"] + 0.25 * losses["repa"]
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    losses["loss"].backward()
    for head in (objective.decoder, objective.repa_projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_frozen_encoder_is_neither_trained_nor_checkpointed(clips, tmp_path):
    from mimo.train.trainer import Trainer

    config = repa_config(
        "both", "train.batch_size=2", "train.steps=2", "train.checkpoint_every=1", "train.tensorboard=false",
        "sample.steps=1", f"train.out_dir={tmp_path}", "data.num_clips=8",
    )  # fmt: skip
    trainer = Trainer(config)
    encoder = trainer.objective.encoder
    frozen = {name: p.clone() for name, p in encoder.named_parameters()}
    trainer.train()
    assert all(torch.equal(p, frozen[name]) for name, p in encoder.named_parameters())
    state = trainer.objective.state_dict()
    assert any(key.startswith("repa_projector.") for key in state)
    assert not any("encoder" in key for key in state)
    resumed = Trainer(config)
    assert resumed.resume() and resumed.step == 2
    for key, value in resumed.objective.state_dict().items():
        assert torch.equal(value, state[key]), key


# ----- cached encoder features --------------------------------------------------------------------


@pytest.mark.parametrize("grid", [None, GRID])
def test_cached_features_round_trip_and_give_the_live_encoders_loss(tmp_path, grid):
    dataset = MovingShapes(4, frame_size=FRAME_SIZE, num_frames=NUM_FRAMES, seed=0)
    out_dir = tmp_path / "features"
    extract_features(dataset, RandomEncoder(), out_dir, grid=grid, shard_size=3, batch_size=2,
                     storage_dtype=torch.float32, progress=False)  # fmt: skip
    paired = WithEncoderFeatures(dataset, out_dir, encoder="random")
    video = torch.stack([paired[i]["video"] for i in range(4)])
    cached = torch.stack([paired[i][ENCODER_FEATURES_KEY] for i in range(4)])
    live = RandomEncoder().encode_video(video)
    assert torch.allclose(cached, live if grid is None else resize_grid(live, grid), atol=1e-6)

    live_objective = repa_objective(repa_config("both"))
    cached_config = repa_config("both", f"repa.features_path={out_dir}")
    cached_objective = repa_objective(cached_config, feature_dim=cached_feature_dim(out_dir))
    assert cached_objective.encoder is None
    cached_objective.load_state_dict(live_objective.state_dict())  # the same checkpoint keys either way
    assert repa_loss(cached_objective, video, cached) == pytest.approx(repa_loss(live_objective, video), abs=1e-5)
    with pytest.raises(ValueError, match="features_path"):
        repa_loss(cached_objective, video)
    with pytest.raises(ValueError, match="holds features of encoder 'random'"):
        WithEncoderFeatures(dataset, out_dir, encoder="dinov2:vitb14")
    with pytest.raises(ValueError, match="clips"):
        WithEncoderFeatures(MovingShapes(3, FRAME_SIZE, NUM_FRAMES, 0), out_dir)


# ----- encoders -----------------------------------------------------------------------------------


class PatchMeanViT(nn.Module):
    """A stand-in timm ViT: one class token, then per 2×2 patch the mean of each channel, row-major."""

    num_prefix_tokens = 1

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        patches = rearrange(images, "b c (h p) (w q) -> b (h w) c (p q)", p=2, q=2).mean(dim=-1)
        return torch.cat([torch.full_like(patches[:, :1], 99.0), patches], dim=1)


def test_vit_adapter_returns_normalised_patch_tokens_in_grid_order_without_the_class_token():
    frames = torch.rand(2, 3, 8, 8) * 2 - 1
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    encoder = ViTEncoder(PatchMeanViT(), "timm:test", 3, image_size=8, num_prefix_tokens=1, mean=mean, std=std)
    grid = encoder(frames)
    assert grid.shape == (2, 4, 4, 3)
    images = ((frames + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for row, column in ((0, 0), (1, 3), (3, 2)):
        patch = images[:, :, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2]
        assert torch.allclose(grid[:, row, column], patch.mean(dim=(-1, -2)), atol=1e-5)
    assert not encoder.training and not encoder.train().training
    with pytest.raises(ValueError, match="latents"):
        encoder(torch.zeros(1, 4, 8, 8))


def test_random_encoder_is_the_same_frozen_network_everywhere():
    first, second = RandomEncoder(), RandomEncoder()
    frames = torch.rand(2, 3, FRAME_SIZE, FRAME_SIZE) * 2 - 1
    assert torch.equal(first(frames), second(frames))
    assert first(frames).shape == (2, FRAME_SIZE // 2, FRAME_SIZE // 2, first.feature_dim)
    assert not any(p.requires_grad for p in first.parameters())
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    build_encoder(repa_config("both").repa)
    assert torch.equal(torch.rand(3), before)  # building an encoder leaves the training RNG alone


def test_encoders_never_download_unless_asked_and_say_how_to_get_weights(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="encoder_path"):
        dinov2_encoder("vitb14", None)
    with pytest.raises(FileNotFoundError, match=r"dinov2_vitb14_pretrain\.pth"):
        dinov2_encoder("vitb14", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="vitb14"):
        dinov2_encoder("vitz99", None)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ImportError, match="pip install timm"):
        timm_encoder("vit_small_patch16_224", str(weights))


def test_config_rejects_repa_settings_that_cannot_run():
    with pytest.raises(ConfigError, match=r"repa\.encoder_path"):
        micro_config("repa.mode=history", "repa.encoder=dinov2:vitb14")
    with pytest.raises(ConfigError, match=r"repa\.encoder:"):
        micro_config("repa.encoder=dino")
    with pytest.raises(ConfigError, match=r"repa\.features_path"):
        micro_config(*REPA, "repa.mode=both", "data.dataset=latents", "data.path=x")
    micro_config("repa.mode=history", "repa.encoder=dinov2:vitb14", "repa.features_path=cache")


def test_paper_rows_are_configured_as_named():
    rows = {path.stem: load_config(path) for path in sorted(CONFIGS.glob("*.yaml"))}
    assert {name: (c.repa.mode, c.mimo.enabled, c.mimo.mask_ratio > 0) for name, c in rows.items()} == {
        "repa-history": ("history", False, False),
        "repa-future": ("future", False, False),
        "repa-both": ("both", False, False),
        "mimo-repa-both": ("both", True, True),
    }
    assert all(c.repa.encoder == "dinov2:vitb14" and c.repa.weight == 0.5 for c in rows.values())


def _timm():
    """timm, or a skip saying what is missing. timm imports torchvision, and PyPI has only CUDA builds of it: beside
    the CPU torch of scripts/setup.sh (PyPI only) torchvision fails to load, so neither is in the dev extra."""
    try:
        import timm
    except ImportError:
        pytest.skip(
            "timm is not installed (not in the dev extra: it needs torchvision, and PyPI's torchvision wheels are CUDA "
            f"builds that do not load beside the CPU torch {torch.__version__}): pip install timm with the torchvision "
            "built for this torch (CPU: https://download.pytorch.org/whl/cpu)"
        )
    except RuntimeError as error:  # torchvision's operators do not register against this torch build
        pytest.skip(
            f"timm's torchvision does not load beside torch {torch.__version__} ({error}): install the torchvision "
            "built for it (CPU torch: from https://download.pytorch.org/whl/cpu, which is not PyPI)"
        )
    return timm


def test_timm_dinov2_loads_metas_checkpoint_format(tmp_path):
    """Meta's DINOv2 checkpoint (mask token, 37×37 positions) loads into timm's DINOv2 at another size."""
    timm = _timm()
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    state = {**source.state_dict(), "mask_token": torch.zeros(1, source.embed_dim)}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    encoder = dinov2_encoder("vits14", str(path), image_size=28)
    assert torch.equal(encoder.vit.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert encoder(torch.zeros(2, 3, 16, 16)).shape == (2, 2, 2, source.embed_dim)
