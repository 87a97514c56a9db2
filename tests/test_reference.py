"""The reference model shipped with mimo: its weights are the ones its card describes, it samples with no
training and no download, and its autoregressive samples beat repeating the last frame on clips it never saw.

The quality test is the end-to-end check of the model, the KV cache and the sampler together: a bug in any of
them that the unit tests miss makes the objects fade or drift, and copy-last wins."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors import safe_open

from mimo.cli import main
from mimo.data import stack_clips
from mimo.data.synthetic import MovingShapes
from mimo.evaluation.motion import copy_last_scores, motion_scores
from mimo.evaluation.protocols import EVAL_SEED
from mimo.train.checkpoint import REFERENCE_MODEL, load_trained_model, reference_model

pytestmark = pytest.mark.usefixtures("single_thread")

QUALITY_SEED = 2026  # clips of a seed that neither training (data.seed 0) nor the card (EVAL_SEED) used
QUALITY_CLIPS = 16
MAX_BYTES = 8_000_000  # the budget for package data


def test_the_shipped_weights_are_the_ones_the_card_describes():
    folder = reference_model()
    card = json.loads((folder / "card.json").read_text())
    weights = folder / card["weights"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["weights_sha256"]
    assert weights.stat().st_size == card["weights_bytes"] <= MAX_BYTES
    with safe_open(str(weights), "pt") as tensors:
        assert {str(tensors.get_slice(name).get_dtype()) for name in tensors.keys()} == {"F16"}  # noqa: SIM118
    assert card["clip_seed"] == EVAL_SEED and card["metrics"]["ar_px"] < card["copy_last"]["ar_px"]


def test_the_reference_model_beats_copy_last_on_clips_it_never_saw():
    model, config = load_trained_model(REFERENCE_MODEL)
    assert config.data.seed != QUALITY_SEED != EVAL_SEED
    dataset = MovingShapes(
        QUALITY_CLIPS, config.data.frame_size, 2 * config.data.num_frames, QUALITY_SEED, config.data.max_objects
    )
    clips = stack_clips(dataset, QUALITY_CLIPS)
    model_scores = motion_scores(model, config, clips, teacher_forced_at=())  # the default sampler, as shipped
    copy_last = copy_last_scores(config, clips)
    for metric in ("ar_px", "ar_lost", "ar2_px", "ar2_lost"):  # the training length and twice it
        assert model_scores[metric] < copy_last[metric], (metric, model_scores, copy_last)


def test_mimo_sample_reference_writes_videos_without_training(tmp_path):
    out = tmp_path / "samples"
    assert main(["sample", REFERENCE_MODEL, "--frames", "12", "--num-videos", "2", "--out", str(out)]) == 0
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (2, 12, 3, 16, 16) and np.isfinite(samples).all()
    assert (out / "grid.gif").is_file()
    assert not list(reference_model().glob("samples*"))  # nothing written into the package
