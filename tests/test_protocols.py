"""The presets state their protocol: which videos train, which form FVD's real set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mimo.config import load_config
from mimo.data.real_set import evaluation_videos, same_videos, training_videos

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_PRESETS = sorted(
    path for folder in ("ucf101", "kinetics600", "eval") for path in (ROOT / "configs" / folder).glob("*.yaml")
)


# Lists of real videos that no run trains on: they are only ever named by eval.videos.
EVALUATION_VIDEOS = {"pixels-test.yaml"}


@pytest.fixture(autouse=True)
def at_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # presets name other presets relative to the repository root, as data.path


@pytest.mark.parametrize("preset", REAL_DATA_PRESETS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_real_data_preset_says_its_protocol_in_its_first_line(preset: Path) -> None:
    assert preset.read_text().startswith("# Protocol:")


def test_prediction_presets_evaluate_on_other_videos_than_they_train_on() -> None:
    checked = []
    for preset in REAL_DATA_PRESETS:
        config = load_config(preset)
        if config.train.task != "prediction" or preset.name in EVALUATION_VIDEOS:
            continue
        train, real = training_videos(config), evaluation_videos(config)
        assert train is not None, f"{preset}: data.videos must name the videos its latents are encoded from"
        assert not same_videos(train, real), f"{preset} evaluates on the videos it trains on ({real.path})"
        assert (train.annotations, real.annotations) == (
            "data/kinetics600/train.csv",
            "data/kinetics600/test.csv",
        )
        checked.append(preset.name)
    assert {"pixels.yaml", "prediction-B.yaml", "prediction-XL.yaml", "k600-prediction.yaml"} <= set(checked)


def test_a_prediction_preset_evaluated_on_its_training_videos_is_caught() -> None:
    config = load_config(ROOT / "configs/kinetics600/prediction-B.yaml")
    leaked = replace(config, eval=replace(config.eval, videos=config.data.videos))
    assert same_videos(training_videos(leaked), evaluation_videos(leaked))


def test_ucf101_presets_take_the_real_set_from_all_their_training_videos_as_far() -> None:
    for name in ("uncond-B", "uncond-XL", "cond-B", "cond-XL"):
        config = load_config(ROOT / f"configs/ucf101/{name}.yaml")
        real = evaluation_videos(config)
        assert same_videos(training_videos(config), real)
        assert (real.dataset, real.frame_stride, real.frame_size) == ("class_folders", 3, 256)  # all 13,320 videos
