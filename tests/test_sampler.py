"""KV-cached sampling must give the frames of uncached sampling (which re-runs the whole history at
every ODE step through the training-time `forward`) for the same seed."""

from __future__ import annotations

import pytest
import torch

from mimo.config import SampleConfig
from mimo.diffusion.sampler import inference, sample_video

pytestmark = pytest.mark.usefixtures("single_thread")

BATCH = 2
STEPS = 3
CACHE_ATOL = 1e-4  # float32: the two paths sum attention in different orders

CASES = {
    "euler-context": dict(num_frames=4, context=2, solver="euler"),
    "heun-context": dict(num_frames=4, context=2, solver="heun"),
    "euler-unconditional-from-scratch": dict(num_frames=3, context=0, solver="euler"),
    "class-conditional-cfg": dict(num_frames=4, context=1, solver="heun", classes=3, cfg_scale=2.0),
    "window-longer-than-training": dict(num_frames=7, context=2, solver="euler", window=2),
    "window-clean-timestep-no-rope": dict(
        num_frames=6,
        context=1,
        solver="heun",
        window=3,
        overrides=("model.clean_conditioning=clean_timestep", "model.rope=false"),
    ),
    "window-block-sparse-flex-attention": dict(
        num_frames=6, context=1, solver="euler", window=3, overrides=("model.attention=flex",)
    ),
    "window-noised-history": dict(
        num_frames=6,
        context=2,
        solver="euler",
        window=3,
        history_noise=0.2,
        overrides=("diffusion.history_noise_max=0.3",),
    ),
    "window-history-guidance": dict(
        num_frames=6,
        context=1,
        solver="heun",
        window=3,
        history_noise=0.1,
        history_guidance=1.5,
        overrides=("diffusion.history_noise_max=0.3", "diffusion.history_dropout=0.1"),
    ),
    "class-conditional-history-guidance": dict(
        num_frames=4,
        context=1,
        solver="euler",
        classes=3,
        history_guidance=2.0,
        overrides=("diffusion.history_dropout=0.1",),
    ),
}
BF16_ATOL = 0.1  # bf16 keeps 8 bits of mantissa; a few ODE steps of a micro model stay this close to fp32


def _sample(model, clips, case: dict, use_cache: bool, seed: int = 0, precision: str = "auto") -> torch.Tensor:
    video, labels = clips
    context = video[:BATCH, : case["context"]] if case["context"] else None
    options = SampleConfig(
        steps=STEPS,
        solver=case["solver"],
        cfg_scale=case.get("cfg_scale", 1.0),
        window=case.get("window"),
        use_cache=use_cache,
        precision=precision,
        history_noise=case.get("history_noise", 0.0),
        history_guidance=case.get("history_guidance", 1.0),
    )
    return sample_video(
        model,
        case["num_frames"],
        options,
        context=context,
        labels=labels[:BATCH] % case["classes"] if case.get("classes") else None,
        batch_size=BATCH,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("name", CASES)
def test_cached_sampling_equals_uncached_sampling(name, clips, make_config, make_model):
    case = CASES[name]
    model = make_model(make_config(*case.get("overrides", ())), num_classes=case.get("classes", 0))
    cached = _sample(model, clips, case, use_cache=True)
    uncached = _sample(model, clips, case, use_cache=False)
    assert cached.shape == (BATCH, case["num_frames"], 3, 16, 16)
    torch.testing.assert_close(cached, uncached, atol=CACHE_ATOL, rtol=0)
    context = case["context"]
    assert torch.equal(cached[:, :context], clips[0][:BATCH, :context])
    assert torch.isfinite(cached).all()


def test_generated_frames_depend_on_the_seed_and_the_history(clips, make_model):
    case = CASES["euler-context"]
    model = make_model()
    first = _sample(model, clips, case, use_cache=True, seed=0)
    assert torch.equal(first, _sample(model, clips, case, use_cache=True, seed=0))
    assert (first[:, 2:] - _sample(model, clips, case, use_cache=True, seed=1)[:, 2:]).abs().max() > 1e-3
    # same noise, one clip's context changed: only that clip's generated frames change
    video, labels = clips
    same = _sample(model, (video[[0, 0]], labels), case, use_cache=True)
    changed = _sample(model, (video[[0, 1]], labels), case, use_cache=True)
    torch.testing.assert_close(changed[0], same[0], atol=CACHE_ATOL, rtol=0)
    assert (changed[1, 2:] - same[1, 2:]).abs().max() > 1e-3


def test_sliding_window_limits_what_long_generation_attends_to(clips, make_model):
    model = make_model()
    case = dict(num_frames=6, context=2, solver="euler")
    whole = _sample(model, clips, case, use_cache=True)
    windowed = _sample(model, clips, {**case, "window": 1}, use_cache=True)
    # frame 2 sees frames 0 and 1 without a window and only frame 1 with it, so it must differ
    assert (whole[:, 2] - windowed[:, 2]).abs().max() > 1e-4
    wide = _sample(model, clips, {**case, "window": 6}, use_cache=True)
    torch.testing.assert_close(wide, whole, atol=CACHE_ATOL, rtol=0)


def test_bf16_sampling_runs_and_stays_close_to_fp32(clips, make_model):
    case = CASES["window-longer-than-training"]
    model = make_model()
    fp32 = _sample(model, clips, case, use_cache=True, precision="fp32")
    bf16 = _sample(model, clips, case, use_cache=True, precision="bf16")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32)  # autocast did run in bf16
    torch.testing.assert_close(bf16, fp32, atol=BF16_ATOL, rtol=0)


def test_sampling_keeps_the_residual_stream_in_fp32_under_bf16_autocast(clips, make_model):
    """Upcasting the tokens after the embedder halves bf16's velocity error (benchmarks/bf16_residual.py);
    training keeps them bf16 (docs/distributed.md says why)."""
    model, frames = make_model(), clips[0][:1]
    with inference(torch.device("cpu"), "bf16"):
        assert model.embed(frames, 0)[0].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.embed(frames, 0)[0].dtype == torch.bfloat16
