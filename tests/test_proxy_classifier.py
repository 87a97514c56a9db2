from __future__ import annotations

import pytest
import torch

from mimo.data.synthetic import MovingShapes
from mimo.metrics import proxy_classifier
from mimo.metrics.proxy_classifier import (
    ProxyClassifierConfig,
    load_proxy_classifier,
    proxy_frechet_distance,
)

TINY = ProxyClassifierConfig(frame_size=16, num_frames=4, width=8, steps=4, batch_size=8, validation_clips=16)


def _videos(count: int, seed: int = 0) -> torch.Tensor:
    dataset = MovingShapes(count, frame_size=16, num_frames=4, seed=seed)
    return torch.stack([dataset[i]["video"] for i in range(count)])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache directory for the module, so the tiny classifier is trained once."""
    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("mimo-cache")
        patch.setenv("MIMO_CACHE", str(directory))
        yield directory


@pytest.fixture(scope="module")
def trained(cache):
    return load_proxy_classifier(TINY, progress=False)


def test_classifier_is_trained_once_then_loaded_from_the_cache(cache, trained, monkeypatch):
    assert len(list(cache.glob("proxy-classifier-*.safetensors"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(proxy_classifier, "train_proxy_classifier", no_training)
    loaded = load_proxy_classifier(TINY, progress=False)
    assert loaded.validation_accuracy == trained.validation_accuracy
    videos = _videos(3)
    torch.testing.assert_close(loaded.features(videos), trained.features(videos))


def test_cache_key_follows_every_setting():
    assert TINY.cache_key() != ProxyClassifierConfig(**{**TINY.__dict__, "seed": 1}).cache_key()
    assert TINY.cache_key() != ProxyClassifierConfig(**{**TINY.__dict__, "frame_size": 32}).cache_key()


def test_missing_classifier_without_training_is_an_error(cache):
    with pytest.raises(FileNotFoundError, match="train_if_missing"):
        load_proxy_classifier(ProxyClassifierConfig(**{**TINY.__dict__, "seed": 5}), train_if_missing=False)


def test_proxy_distance_is_zero_on_the_same_set_and_grows_with_noise(trained):
    classifier = trained
    assert classifier.features(_videos(2)).shape == (2, classifier.feature_dim)
    videos = _videos(40)
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(0))
    distances = [
        proxy_frechet_distance(videos, videos + level * noise, classifier=classifier, progress=False, method="eigh")
        for level in (0.0, 0.3, 1.0)
    ]
    assert abs(distances[0]) < 1e-6 * max(distances[2], 1.0)
    assert distances[0] < distances[1] < distances[2]
