"""What one `mimo` process on a GPU runs in sequence, run here under FlexAttention (`model.attention=flex`, the
CUDA default): training with periodic samples longer than the clips (the sliding window), and evaluation
followed by training initialised from the evaluated run. Each sampling step builds masks under
inference_mode that the training after it saves for backward."""

from __future__ import annotations

import json

import pytest

from conftest import MICRO
from mimo.cli import main
from mimo.train.logger import read_metrics

RUN = (*MICRO, "model.attention=flex", "train.batch_size=2", "data.num_clips=4", "train.tensorboard=false")
SAMPLE = ("sample.steps=1", "train.log_every=1")

pytestmark = pytest.mark.usefixtures("single_thread", "fresh_masks", "flex_backward_on_cpu")


def test_train_with_periodic_long_samples_under_flex(tmp_path):
    """sample.num_frames past data.num_frames: the window slides and the cache is refilled between steps."""
    code = main(["train", *RUN, *SAMPLE, "train.steps=3", "train.sample_every=1", "sample.num_frames=6",
                 f"train.out_dir={tmp_path}"])  # fmt: skip
    assert code == 0
    assert sorted(path.name for path in (tmp_path / "samples").glob("*.gif"))[:3] == [
        f"step_{step:08d}.gif" for step in (1, 2, 3)
    ]
    assert [record["step"] for record in read_metrics(tmp_path)] == [1, 2, 3]


def test_eval_then_training_initialised_from_the_run_under_flex(tmp_path):
    """The evaluation's long videos refill the cache with FrameLayout(T-1, N) first; the MiMo decoder trains on it."""
    first, second = tmp_path / "baseline", tmp_path / "mimo"
    assert main(["train", *RUN, *SAMPLE, "train.steps=1", "mimo.weight=0", "mimo.mask_ratio=0",
                 "train.sample_at_end=false", f"train.out_dir={first}"]) == 0  # fmt: skip
    assert main(["eval", str(first), "--out", str(tmp_path / "eval"), "eval.num_videos=2", "eval.metrics=psnr",
                 "eval.num_frames=6", "sample.steps=1"]) == 0  # fmt: skip
    assert main(["train", *RUN, *SAMPLE, "train.steps=1", f"train.init_from={first}", "train.sample_at_end=false",
                 f"train.out_dir={second}"]) == 0  # fmt: skip
    assert "psnr" in json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert read_metrics(second)[0]["mask"] > 0
