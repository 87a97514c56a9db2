"""`mimo eval` / `mimo probe` glue, on a micro run trained for two steps (no pretrained network needed)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from conftest import micro_config
from mimo.cli import main
from mimo.evaluation.evaluate import probe_run
from mimo.evaluation.protocols import balanced_indices, history_features
from mimo.train.checkpoint import load_trained_model
from mimo.train.trainer import train


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = micro_config("train.steps=2", f"train.out_dir={out}", "train.tensorboard=false", "sample.steps=2")
    train(config)
    return out


def test_balanced_indices_take_classes_in_turn():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    chosen = balanced_indices(labels, 9)
    assert Counter(labels[chosen].tolist()) == {0: 3, 1: 3, 2: 3}
    assert len(set(chosen)) == 9
    # a class that runs out leaves its share to the others
    assert Counter(labels[balanced_indices(labels, 15)].tolist()) == {0: 6, 1: 3, 2: 6}


def test_eval_reports_each_metric_per_seed_with_mean_and_std(micro_run, tmp_path):
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            str(micro_run),
            "--out",
            str(out),
            "eval.num_videos=4",
            "eval.seeds=0,1",
            "eval.metrics=trajectory,psnr,ssim",
            "sample.steps=2",
        ]
    )
    assert code == 0
    results = json.loads((out / "eval.json").read_text())
    for metric in ("trajectory", "psnr", "ssim"):
        values = results["metrics"][metric]
        assert len(values["per_seed"]) == 2
        assert values["mean"] == pytest.approx(sum(values["per_seed"]) / 2)
    # different seeds draw different noise, so the two samples differ
    assert results["metrics"]["psnr"]["per_seed"][0] != results["metrics"]["psnr"]["per_seed"][1]
    assert (out / "samples.gif").is_file() and (out / "trajectory_error.png").is_file()
    assert "| trajectory |" in (out / "eval.md").read_text()
    assert results["protocol"]["num_frames"] == 4 and results["protocol"]["sampling_seeds"] == [0, 1]


def test_history_features_ignore_the_dummy_noisy_frame(micro_run):
    model, config = load_trained_model(micro_run)
    video = torch.rand(2, config.data.num_frames, 3, 16, 16) * 2 - 1
    features = history_features(model, video)
    assert set(features) == set(range(1, model.depth + 1))
    assert features[1].shape == (2, config.data.num_frames, model.width)
    # the clean tokens never see noisy ones: running with a different dummy frame changes nothing
    out = model(torch.randn(2, 1, 3, 16, 16), torch.rand(2, 1), clean=video, return_layers=(model.depth,))
    pooled = out.clean_hidden[model.depth].mean(dim=2)
    torch.testing.assert_close(pooled, features[model.depth])


def test_probe_against_itself_gives_cknna_one_at_the_last_layer(micro_run, tmp_path):
    results = probe_run(micro_run, ["eval.probe_clips=48"], reference=micro_run, out_dir=tmp_path)
    model, _ = load_trained_model(micro_run)
    last = results["per_layer"][str(model.depth)]
    assert last["cknna"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= last["accuracy"] <= 1.0
    assert (tmp_path / "probe.png").is_file() and (tmp_path / "probe.json").is_file()


def test_eval_rejects_an_unknown_metric_naming_the_key(micro_run, tmp_path, capsys):
    code = main(["eval", str(micro_run), "--out", str(tmp_path), "eval.metrics=bogus"])
    assert code == 2
    assert "eval.metrics" in capsys.readouterr().err
