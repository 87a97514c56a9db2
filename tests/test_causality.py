"""Frame causality of Complete Teacher Forcing, tested by perturbation rather than by reading the mask.

A sequence holds clean copies and noisy copies of frames 0..T-1 (same positions). Rules:
a clean frame i depends on clean frames <= i only; a noisy frame i depends on clean frames < i
(never its own clean copy) and on itself. Every check also asserts that something *does* change,
so a model that ignored its inputs could not pass.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mimo.models.attention import frame_causal_mask
from mimo.objectives.masking import tube_mask

pytestmark = pytest.mark.usefixtures("single_thread")

FRAMES = 4
BATCH = 2
NUM_CLASSES = 3
DTYPE = torch.float32  # float64 would be cleaner but NoiseLevelEmbedder casts its features to float32
EXACT = 0.0  # masked-out keys contribute exact zeros, so unaffected outputs are bitwise equal
CHANGED = 1e-6

VARIANTS = [
    pytest.param((conditioning, rope, masked), id=f"{conditioning}-rope={rope}-masked={masked}")
    for conditioning in ("independent_ln", "clean_timestep")
    for rope in (True, False)
    for masked in (False, True)
]


@torch.no_grad()
def _run(model, noisy, clean, keep, noise_level, labels):
    out = model(noisy, noise_level, labels, clean=clean, clean_start=0, noisy_start=0, keep=keep, return_layers=(1, 2))
    return {
        "velocity": out.velocity,
        **{f"clean_hidden_{layer}": h for layer, h in out.clean_hidden.items()},
        **{f"noisy_hidden_{layer}": h for layer, h in out.noisy_hidden.items()},
    }


def _max_change(before: torch.Tensor, after: torch.Tensor, frames: slice) -> float:
    return (before[:, frames] - after[:, frames]).abs().max().item() if before[:, frames].numel() else 0.0


@pytest.fixture(scope="module", params=VARIANTS)
def setup(request, make_config, make_model):
    conditioning, rope, masked = request.param
    config = make_config(f"model.clean_conditioning={conditioning}", f"model.rope={rope}")
    model = make_model(config, num_classes=NUM_CLASSES, dtype=DTYPE)
    assert model.depth == 2
    generator = torch.Generator().manual_seed(1)
    shape = (BATCH, FRAMES, model.channels, model.grid * model.patch_size, model.grid * model.patch_size)
    clean = torch.rand(shape, generator=generator, dtype=DTYPE) * 2 - 1
    noisy = torch.randn(shape, generator=generator, dtype=DTYPE)
    noise_level = torch.rand(BATCH, FRAMES, generator=generator, dtype=DTYPE)
    labels = torch.tensor([0, 2])
    keep = tube_mask(BATCH, model.tokens_per_frame, 0.5, generator).keep if masked else None
    inputs = {"noisy": noisy, "clean": clean, "keep": keep, "noise_level": noise_level, "labels": labels}
    return model, inputs, _run(model, **inputs)


def _perturbed(inputs: dict, name: str, frame: int) -> dict:
    changed = dict(inputs)
    tensor = inputs[name].clone()
    noise = torch.randn(tensor[:, frame].shape, generator=torch.Generator().manual_seed(7), dtype=tensor.dtype)
    tensor[:, frame] += noise if name != "noise_level" else noise.abs().clamp(max=0.5) * 0.5
    changed[name] = tensor
    return changed


def test_changing_clean_frame_k_leaves_all_earlier_outputs_and_noisy_frame_k_unchanged(setup):
    model, inputs, base = setup
    for frame in range(FRAMES):
        _check_clean_perturbation(model, inputs, base, frame)


def _check_clean_perturbation(model, inputs, base, frame):
    after = _run(model, **_perturbed(inputs, "clean", frame))
    for name in base:
        # noisy frame k must not see its own clean copy: unchanged up to and including k
        unchanged = slice(0, frame) if name.startswith("clean") else slice(0, frame + 1)
        assert _max_change(base[name], after[name], unchanged) <= EXACT, f"{name} of frames {unchanged} changed"
    assert _max_change(base["clean_hidden_1"], after["clean_hidden_1"], slice(frame, frame + 1)) > CHANGED
    if frame + 1 < FRAMES:  # later noisy frames do read this clean frame, so the test can fail
        assert _max_change(base["velocity"], after["velocity"], slice(frame + 1, FRAMES)) > CHANGED
        assert _max_change(base["clean_hidden_2"], after["clean_hidden_2"], slice(frame + 1, FRAMES)) > CHANGED


def test_changing_noisy_frame_k_changes_only_noisy_frame_k(setup):
    model, inputs, base = setup
    for frame, name in itertools.product(range(FRAMES), ("noisy", "noise_level")):
        after = _run(model, **_perturbed(inputs, name, frame))
        for key in base:
            others = [t for t in range(FRAMES) if key.startswith("clean") or t != frame]
            change = (base[key][:, others] - after[key][:, others]).abs().max().item()
            assert change <= EXACT, f"changing {name} of frame {frame} changed {key} of frames {others}"
        assert _max_change(base["velocity"], after["velocity"], slice(frame, frame + 1)) > CHANGED


def test_clean_tokens_never_depend_on_noisy_tokens(setup):
    model, inputs, base = setup
    changed = dict(inputs)
    generator = torch.Generator().manual_seed(3)
    changed["noisy"] = torch.randn(inputs["noisy"].shape, generator=generator, dtype=DTYPE)
    changed["noise_level"] = torch.rand(inputs["noise_level"].shape, generator=generator, dtype=DTYPE)
    after = _run(model, **changed)
    for key in base:
        if key.startswith("clean"):
            torch.testing.assert_close(after[key], base[key], atol=EXACT, rtol=0)
    assert (after["velocity"] - base["velocity"]).abs().max() > CHANGED
    # and the clean states equal those of a sequence that has no noisy frame to speak of
    with torch.no_grad():
        alone = model(
            inputs["noisy"][:, :1],
            inputs["noise_level"][:, :1],
            inputs["labels"],
            clean=inputs["clean"],
            noisy_start=FRAMES,
            keep=inputs["keep"],
            return_layers=(1, 2),
        )
    for layer, hidden in alone.clean_hidden.items():
        torch.testing.assert_close(hidden, base[f"clean_hidden_{layer}"], atol=1e-10, rtol=0)


def test_masked_history_has_exactly_the_kept_clean_tokens(setup):
    model, inputs, base = setup
    expected = model.tokens_per_frame if inputs["keep"] is None else inputs["keep"].shape[1]
    assert base["clean_hidden_1"].shape == (BATCH, FRAMES, expected, model.width)
    assert base["noisy_hidden_1"].shape == (BATCH, FRAMES, model.tokens_per_frame, model.width)


def test_frame_causal_mask_on_a_hand_built_sequence():
    # two tokens per frame: clean frames 0, 1 then noisy frames 0, 1
    frame = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    clean = torch.tensor([True] * 4 + [False] * 4)
    c0, c1, n0, n1 = ([1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0], [0] * 6 + [1, 1])
    sees = {
        "clean 0": c0,  # itself only
        "clean 1": [a | b for a, b in zip(c0, c1, strict=True)],  # clean frames 0 and 1
        "noisy 0": n0,  # its own frame only, never its clean copy
        "noisy 1": [a | b for a, b in zip(c0, n1, strict=True)],  # earlier clean frame + itself
    }
    rows = [row for row in sees.values() for _ in range(2)]
    expected = torch.tensor(rows, dtype=torch.bool)
    assert torch.equal(frame_causal_mask(frame, clean, frame, clean), expected)


def test_frame_causal_mask_of_a_noisy_query_against_a_cache():
    # the cached sampler: one noisy frame 2 against clean frames 1, 2 and itself
    query_frame, query_clean = torch.tensor([2]), torch.tensor([False])
    key_frame = torch.tensor([1, 2, 2])
    key_clean = torch.tensor([True, True, False])
    assert frame_causal_mask(query_frame, query_clean, key_frame, key_clean).tolist() == [[True, False, True]]
