"""The frame-causal rules as a FlexAttention BlockMask: the same mask as the dense reference, tile by
tile, and the same outputs as dense-mask SDPA wherever FlexAttention runs (on a CPU: its eager path)."""

from __future__ import annotations

import pytest
import torch

from mimo.models.attention import (
    FrameLayout,
    KVCache,
    RotaryEmbedding3D,
    apply_rotary,
    attend,
    frame_causal_mask,
)
from mimo.models.flops import attention_flops
from mimo.objectives.masking import kept_count, tube_mask

pytestmark = pytest.mark.usefixtures("single_thread")

FLOAT32_ATOL = 1e-5  # float32: the two kernels sum the softmax in different orders

LAYOUTS = {
    # CTF training sequence: T-1 clean frames, T-k noisy frames starting at frame k
    "baseline-16-tokens": (FrameLayout(7, 16, 6, 16, 2), 16),
    "mimo-r0.25-kept-12": (FrameLayout(7, kept_count(16, 0.25), 8, 16, 0), 16),
    "mimo-r0.75-kept-4": (FrameLayout(7, kept_count(16, 0.75), 8, 16, 0), 16),
    "odd-token-counts": (FrameLayout(5, 5, 4, 9, 1), 8),
    "noisy-beside-own-clean-copy": (FrameLayout(4, 6, 4, 6, 0), 8),
    "history-only-decoder": (FrameLayout(6, 16), 16),
    "one-noisy-frame-no-history": (FrameLayout(0, 16, 1, 16, 3), 16),
}


def _reference(layout: FrameLayout) -> torch.Tensor:
    """The dense mask built token by token from the per-token description, without FrameLayout's masks."""
    frame = [f for f in range(layout.clean_frames) for _ in range(layout.clean_per_frame)]
    frame += [layout.noisy_offset + f for f in range(layout.noisy_frames) for _ in range(layout.noisy_per_frame)]
    frame = torch.tensor(frame, dtype=torch.long)
    clean = torch.arange(layout.length) < layout.num_clean
    return frame_causal_mask(frame, clean, frame, clean)


def _expanded(layout: FrameLayout, block_size: int) -> torch.Tensor:
    """What a BlockMask lets attention compute, token by token: full tiles entirely, partial tiles where
    its mask_mod allows, every other tile nothing."""
    block_mask = layout.block_mask("cpu", block_size)
    tiles = block_mask.kv_num_blocks.shape[-1]
    dense = torch.zeros(tiles * block_size, tiles * block_size, dtype=torch.bool)
    index = torch.arange(tiles * block_size)
    for q_tile in range(tiles):
        rows = slice(q_tile * block_size, (q_tile + 1) * block_size)
        for i in range(int(block_mask.kv_num_blocks[0, 0, q_tile])):
            k_tile = int(block_mask.kv_indices[0, 0, q_tile, i])
            cols = slice(k_tile * block_size, (k_tile + 1) * block_size)
            dense[rows, cols] = block_mask.mask_mod(0, 0, index[rows, None], index[None, cols])
        for i in range(int(block_mask.full_kv_num_blocks[0, 0, q_tile])):
            k_tile = int(block_mask.full_kv_indices[0, 0, q_tile, i])
            dense[rows, k_tile * block_size : (k_tile + 1) * block_size] = True
    return dense[: layout.length, : layout.length]


def _expanded_tiles(layout: FrameLayout, block_size: int) -> int:
    """Token pairs inside the tiles the BlockMask computes (partial or full)."""
    block_mask = layout.block_mask("cpu", block_size)
    tiles = block_mask.to_dense()[0, 0]  # (q tiles, kv tiles): partial or full
    rows = torch.tensor([min(block_size, layout.length - i * block_size) for i in range(tiles.shape[0])])
    return int((rows[:, None] * rows[None, :] * tiles).sum())


@pytest.mark.parametrize("name", LAYOUTS)
def test_block_mask_expanded_to_tokens_equals_the_dense_frame_causal_mask(name):
    layout, block_size = LAYOUTS[name]
    reference = _reference(layout)
    assert torch.equal(layout.dense_mask(), reference)
    assert torch.equal(_expanded(layout, block_size), reference)


def test_block_mask_skips_the_tiles_the_rules_mask_out():
    layout = FrameLayout(15, 16, 16, 16, 0)  # the UCF layout in miniature: one tile per frame
    block_mask = layout.block_mask("cpu", 16)
    tiles = block_mask.kv_num_blocks.shape[-1]
    computed = int(block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum())
    assert int(block_mask.kv_num_blocks.sum()) == 0  # tile = frame: every computed tile is fully allowed
    assert computed == int(layout.dense_mask().sum()) // 16**2  # exactly the allowed tiles
    assert computed < 0.3 * tiles**2  # (N + 1) / 4N of the matrix, as in the issue


def test_masks_are_built_once_per_layout():
    layout = FrameLayout(3, 5, 2, 7, 1)
    assert layout.dense_mask() is FrameLayout(3, 5, 2, 7, 1).dense_mask()
    assert layout.block_mask("cpu", 8) is FrameLayout(3, 5, 2, 7, 1).block_mask("cpu", 8)


def _qkv(layout: FrameLayout, requires_grad: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, layout.length, 8)
    return [torch.randn(shape, generator=generator).requires_grad_(requires_grad) for _ in range(3)]


@pytest.mark.parametrize("name", ["mimo-r0.25-kept-12", "odd-token-counts", "history-only-decoder"])
def test_flex_attention_equals_dense_mask_sdpa(name):
    layout, block_size = LAYOUTS[name]
    q, k, v = _qkv(layout)
    dense = attend(q, k, v, layout.dense_mask())
    torch.testing.assert_close(attend(q, k, v, layout.block_mask("cpu", block_size)), dense, atol=FLOAT32_ATOL, rtol=0)


FLOAT64_ATOL = 1e-12


def test_flex_attention_gradients_equal_dense_mask_sdpa_gradients(flex_backward_on_cpu):
    layout = FrameLayout(7, kept_count(64, 0.25), 8, 64, 0)  # 48 kept tokens a frame in 128-token tiles: partial
    q, k, v = (x.double().requires_grad_() for x in _qkv(layout))
    dense = attend(q, k, v, layout.dense_mask())
    dense_grads = torch.autograd.grad(dense.square().sum(), (q, k, v))
    flex = attend(q, k, v, layout.block_mask())
    flex_grads = torch.autograd.grad(flex.square().sum(), (q, k, v))
    torch.testing.assert_close(flex, dense, atol=FLOAT64_ATOL, rtol=0)
    for got, expected in zip(flex_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=FLOAT64_ATOL, rtol=0)


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_flex_model_equals_sdpa_model(ratio, make_config, make_model, clips):
    video = clips[0][:2]
    outputs = {}
    for attention in ("sdpa", "flex"):
        model = make_model(make_config(f"model.attention={attention}"), num_classes=0)
        keep = tube_mask(2, model.tokens_per_frame, ratio, torch.Generator().manual_seed(0)).keep if ratio else None
        noise_level = torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = model(video[:, 1:], noise_level, clean=video[:, :-1], noisy_start=1, keep=keep, return_layers=(1,))
        outputs[attention] = out
    flex, sdpa = outputs["flex"], outputs["sdpa"]
    torch.testing.assert_close(flex.velocity, sdpa.velocity, atol=FLOAT32_ATOL, rtol=0)
    torch.testing.assert_close(flex.clean_hidden[1], sdpa.clean_hidden[1], atol=FLOAT32_ATOL, rtol=0)


def test_static_cache_writes_in_place_and_reads_a_view():
    cache = KVCache(depth=1, tokens_per_frame=2, capacity=2)
    first = torch.randn(1, 1, 2, 4)
    keys, _ = cache.extend(0, first, first)
    storage = cache.keys[0].data_ptr()
    cache.advance(1)
    second = torch.randn(1, 1, 2, 4)
    keys, _ = cache.extend(0, second, second)  # a frame being denoised: written, not committed
    assert keys.data_ptr() == storage and keys.shape[2] == 4
    assert torch.equal(keys, torch.cat([first, second], dim=2))
    third = torch.randn(1, 1, 2, 4)
    keys, _ = cache.extend(0, third, third)  # the next step overwrites the uncommitted frame
    assert torch.equal(keys, torch.cat([first, third], dim=2)) and cache.keys[0].data_ptr() == storage
    cache.advance(1)
    with pytest.raises(ValueError, match="clear it"):
        cache.extend(0, torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4))


@pytest.mark.parametrize("name", ["baseline-16-tokens", "mimo-r0.25-kept-12", "odd-token-counts"])
def test_attention_flops_count_allowed_pairs_and_computed_tiles(name):
    layout, block_size = LAYOUTS[name]
    flops = attention_flops(layout, batch=2, heads=3, head_dim=8, block_size=block_size)
    per_pair = flops.attention_dense / layout.length**2
    assert flops.attention_useful == pytest.approx(per_pair * int(_reference(layout).sum()), rel=1e-9)
    assert flops.attention_block_sparse == pytest.approx(per_pair * int(_expanded_tiles(layout, block_size)), rel=1e-9)
    assert flops.attention_useful <= flops.attention_block_sparse < flops.attention_dense


def test_ucf_layout_allows_about_a_quarter_of_the_attention_matrix():
    noisy = 16
    flops = attention_flops(FrameLayout(noisy - 1, 256, noisy, 256, 0), batch=1, heads=1, head_dim=64)
    allowed = flops.attention_useful / flops.attention_dense
    assert allowed == pytest.approx((noisy + 1) / (4 * noisy), abs=0.01)  # (N + 1) / 4N, as in the issue
    assert flops.attention_block_sparse == flops.attention_useful  # 256 tokens per frame: whole tiles


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_a_block_compiles_into_one_graph(attention, make_config, make_model):
    """The GPU presets compile every block: a graph break would cost speed silently."""
    import torch._dynamo as dynamo

    from mimo.models.dit import PerGroup

    model = make_model(make_config(f"model.attention={attention}", "model.clean_conditioning=clean_timestep"))
    model.requires_grad_(attention == "sdpa")  # compiling FlexAttention's CPU backward needs the GPU kernels
    layout = FrameLayout(3, 12, 4, 16, 0)
    x = torch.randn(2, layout.length, model.width)
    rope = model.rope(torch.zeros(2, layout.length, 3, dtype=torch.long))
    cond = PerGroup(clean=torch.randn(2, 3, model.width), noisy=torch.randn(2, 4, model.width))
    explained = dynamo.explain(model.blocks[0])(x, layout, cond, rope, layout.mask(attention, torch.device("cpu")))
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_rotary_rotates_each_pair_by_its_angle_like_a_complex_product():
    head_dim = 12
    rope = RotaryEmbedding3D(head_dim)
    positions = torch.randint(0, 9, (2, 5, 3))
    x = torch.randn(2, 3, 5, head_dim)
    frame, row, col = (positions[..., axis, None].double() for axis in range(3))
    angles = torch.cat([frame * rope.inv_freq_frame, row * rope.inv_freq_row, col * rope.inv_freq_col], dim=-1)
    reference = (
        torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
        * torch.polar(torch.ones_like(angles), angles)[:, None]
    )
    expected = torch.view_as_real(reference).flatten(-2).float()
    torch.testing.assert_close(apply_rotary(x, *rope(positions)), expected, atol=FLOAT32_ATOL, rtol=0)


def test_rotary_attention_scores_depend_on_position_offsets_only():
    rope = RotaryEmbedding3D(12)
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)
    at = torch.tensor([[[3, 1, 2]]]), torch.tensor([[[1, 4, 0]]])
    shift = torch.tensor([5, 2, 7])
    score = (apply_rotary(q, *rope(at[0])) * apply_rotary(k, *rope(at[1]))).sum()
    shifted = (apply_rotary(q, *rope(at[0] + shift)) * apply_rotary(k, *rope(at[1] + shift))).sum()
    torch.testing.assert_close(shifted, score, atol=FLOAT32_ATOL, rtol=0)


def test_training_with_flex_attention_on_a_cpu_says_what_to_do():
    layout = FrameLayout(2, 4, 2, 4, 0)
    q, k, v = _qkv(layout, requires_grad=True)
    with pytest.raises(ValueError, match=r"model\.attention=auto"):
        attend(q, k, v, layout.block_mask("cpu", 8))
