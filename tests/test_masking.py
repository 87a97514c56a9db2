"""Tube masks (VideoMAE) and what the backbone does with them: one set of spatial positions is dropped
from every history frame of a clip, the dropped tokens leave the sequence, the kept ones keep their
true (frame, row, column), and the noisy frames are never masked."""

from __future__ import annotations

import pytest
import torch

from mimo.config import load_config
from mimo.models.dit import FrameCausalDiT
from mimo.models.layers import token_positions
from mimo.objectives.masking import kept_count, tube_mask

pytestmark = pytest.mark.usefixtures("single_thread")

POSITIONS = 16  # a 4×4 grid of patches: the micro fixtures' 16×16 frames with 4×4 patches
PATCH = 4


@pytest.mark.parametrize(("ratio", "kept"), [(0.0, 16), (0.25, 12), (0.5, 8), (0.75, 4), (0.99, 1)])
def test_kept_count_is_the_rounded_complement_of_the_ratio_and_never_zero(ratio, kept):
    assert kept_count(POSITIONS, ratio) == kept


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_a_ratio_outside_zero_to_one_is_rejected(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        tube_mask(2, POSITIONS, ratio)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_every_clip_keeps_the_same_number_of_distinct_sorted_positions_and_drops_the_rest(ratio):
    mask = tube_mask(8, POSITIONS, ratio, torch.Generator().manual_seed(0))
    kept = kept_count(POSITIONS, ratio)
    assert mask.keep.shape == (8, kept) and mask.num_kept == kept
    assert (mask.keep.diff(dim=1) > 0).all()  # ascending, hence distinct
    assert ((mask.keep >= 0) & (mask.keep < POSITIONS)).all()
    for keep, dropped in zip(mask.keep, mask.dropped, strict=True):
        expected = torch.ones(POSITIONS, dtype=torch.bool)
        expected[keep] = False
        assert torch.equal(dropped, expected)


def test_masks_differ_across_clips_and_are_reproducible_from_the_generator():
    first = tube_mask(8, POSITIONS, 0.5, torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in first.keep}) == 8
    again = tube_mask(8, POSITIONS, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(first.keep, again.keep)
    other = tube_mask(8, POSITIONS, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(first.keep, other.keep)


def test_every_position_is_dropped_with_probability_r():
    mask = tube_mask(4000, POSITIONS, 0.25, torch.Generator().manual_seed(0))
    frequency = mask.dropped.float().mean(dim=0)
    assert (frequency - 0.25).abs().max() < 0.03


def _forward(model: FrameCausalDiT, clean, noisy, keep, layers=(1, 2)):
    with torch.no_grad():
        return model(noisy, torch.full(noisy.shape[:2], 0.5), clean=clean, keep=keep, return_layers=layers)


def _patch_slices(position: int, grid: int) -> tuple[slice, slice]:
    row, col = divmod(position, grid)
    return slice(row * PATCH, (row + 1) * PATCH), slice(col * PATCH, (col + 1) * PATCH)


@pytest.fixture(scope="module")
def masked_setup(make_model, clips):
    model = make_model()
    video = clips[0]
    clean, noisy = video[:, :-1], torch.randn(video[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    mask = tube_mask(video.shape[0], model.tokens_per_frame, 0.5, torch.Generator().manual_seed(2))
    return model, clean, noisy, mask


def test_the_sequence_is_shorter_by_exactly_the_dropped_tokens_and_noisy_frames_are_whole(masked_setup):
    model, clean, noisy, mask = masked_setup
    full = _forward(model, clean, noisy, None)
    masked = _forward(model, clean, noisy, mask.keep)
    frames = clean.shape[1]
    dropped = int(mask.dropped[0].sum())
    assert (mask.dropped.sum(dim=1) == dropped).all()
    for layer in (1, 2):
        assert full.clean_hidden[layer].shape[1:3] == (frames, model.tokens_per_frame)
        assert masked.clean_hidden[layer].shape[1:3] == (frames, model.tokens_per_frame - dropped)
        assert masked.noisy_hidden[layer].shape == full.noisy_hidden[layer].shape
    assert masked.velocity.shape == noisy.shape


def test_a_dropped_position_is_dropped_from_every_history_frame(masked_setup):
    model, clean, noisy, mask = masked_setup
    base = _forward(model, clean, noisy, mask.keep)
    generator = torch.Generator().manual_seed(5)
    scrambled = clean.clone()
    for clip, dropped in enumerate(mask.dropped):
        for position in dropped.nonzero().flatten().tolist():
            rows, cols = _patch_slices(position, model.grid)
            scrambled[clip, :, :, rows, cols] = torch.rand(scrambled[clip, :, :, rows, cols].shape, generator=generator)
    after = _forward(model, scrambled, noisy, mask.keep)
    assert torch.equal(after.velocity, base.velocity)
    for layer in base.clean_hidden:
        assert torch.equal(after.clean_hidden[layer], base.clean_hidden[layer])
    # a kept position of one history frame is seen, so the check above could fail
    rows, cols = _patch_slices(int(mask.keep[0, 0]), model.grid)
    touched = clean.clone()
    touched[0, -1, :, rows, cols] += 0.5
    assert (_forward(model, touched, noisy, mask.keep).velocity[0, -1] - base.velocity[0, -1]).abs().max() > 1e-5


def test_keeping_every_position_is_the_unmasked_forward(masked_setup):
    model, clean, noisy, _ = masked_setup
    everything = torch.arange(model.tokens_per_frame).expand(clean.shape[0], -1)
    full, kept = _forward(model, clean, noisy, None), _forward(model, clean, noisy, everything)
    torch.testing.assert_close(kept.velocity, full.velocity, atol=1e-6, rtol=0)
    torch.testing.assert_close(kept.clean_hidden[2], full.clean_hidden[2], atol=1e-6, rtol=0)


def test_kept_tokens_carry_their_true_frame_row_and_column(masked_setup):
    model, _, _, mask = masked_setup
    frames = 3
    full = model.positions(2, frames, None, mask.keep.shape[0])
    kept = model.positions(2, frames, mask.keep, mask.keep.shape[0])
    grid = model.grid
    for clip, keep in enumerate(mask.keep):
        per_frame = full[clip].reshape(frames, grid * grid, 3)[:, keep]
        assert torch.equal(kept[clip].reshape(frames, len(keep), 3), per_frame)
        assert torch.equal(per_frame[..., 1] * grid + per_frame[..., 2], keep.expand(frames, -1))
    assert torch.equal(token_positions(mask.keep, grid, 2, frames), kept)


@pytest.mark.parametrize("rope", [True, False])
def test_a_masked_history_reads_like_the_crop_of_its_kept_block(rope, make_config, make_model, clips):
    """Keeping only the top-left 2×2 patches of a 4×4 grid must give the same clean hidden states as
    the same weights run on the cropped 8×8 frames, whose tokens sit at rows and columns 0..1: true
    positions, not the rank of a token among the kept ones."""
    config = make_config(f"model.rope={rope}")
    model = make_model(config)
    crop_config = load_config(None, ["model.preset=micro", "data.frame_size=8", f"model.rope={rope}"])
    cropped_model = FrameCausalDiT(crop_config.model, 3, 8)
    cropped_model.load_state_dict(model.state_dict())
    cropped_model.eval()
    clean = clips[0][:, :3]
    block = torch.tensor([0, 1, 4, 5]).expand(clean.shape[0], -1)
    masked = _forward(model, clean, torch.zeros_like(clean[:, :1]), block)
    cropped = _forward(cropped_model, clean[..., :8, :8], torch.zeros_like(clean[:, :1, :, :8, :8]), None)
    for layer in (1, 2):
        torch.testing.assert_close(masked.clean_hidden[layer], cropped.clean_hidden[layer], atol=1e-5, rtol=1e-5)
    # the same four patches spread to rows and columns {0, 2}: same content, other positions, other states
    spread = torch.zeros_like(clean)
    for source, target in zip((0, 1, 4, 5), (0, 2, 8, 10), strict=True):
        spread[(..., *_patch_slices(target, 4))] = clean[(..., *_patch_slices(source, 4))]
    scattered = torch.tensor([0, 2, 8, 10]).expand(clean.shape[0], -1)
    other = _forward(model, spread, torch.zeros_like(clean[:, :1]), scattered)
    assert (other.clean_hidden[2] - cropped.clean_hidden[2]).abs().max() > 1e-2
