"""Configuration: every impossible value is rejected before work starts, naming the key; YAML files
inherit from a `base:` file; command-line overrides come last."""

from __future__ import annotations

import re

import pytest

from mimo.config import Config, ConfigError, load_config, validate, with_overrides
from mimo.options import check_options

REJECTED = {
    "patch size not dividing the frame": (["data.frame_size=30", "model.patch_size=4"], "model.patch_size"),
    "unknown preset": (["model.preset=huge"], "model.preset"),
    "unknown task": (["train.task=inpainting"], "train.task"),
    "negative training steps": (["train.steps=-1"], "train.steps"),
    "negative warm-up steps": (["train.warmup_steps=-5"], "train.warmup_steps"),
    "zero sampling steps": (["sample.steps=0"], "sample.steps"),
    "unknown solver": (["sample.solver=rk4"], "sample.solver"),
    "context as long as the clip": (["data.num_frames=8", "train.context_frames=8"], "train.context_frames"),
    "context longer than the clip": (["data.num_frames=8", "train.context_frames=9"], "train.context_frames"),
    "no context for prediction": (["train.context_frames=0"], "train.context_frames"),
    "mask ratio of one": (["mimo.mask_ratio=1.0"], "mimo.mask_ratio"),
    "negative mask ratio": (["mimo.mask_ratio=-0.1"], "mimo.mask_ratio"),
    "decoder layer zero": (["mimo.decoder_layer=0"], "mimo.decoder_layer"),
    "decoder layer past the depth": (["model.preset=micro", "mimo.decoder_layer=3"], "mimo.decoder_layer"),
    "empty mask loss": (["mimo.mask_ratio=0", "mimo.weight=0.5"], "mimo.mask_ratio"),
    "unknown targets": (["mimo.targets=previous"], "mimo.targets"),
    "unknown clean conditioning": (["model.clean_conditioning=film"], "model.clean_conditioning"),
    "heads not dividing the width": (["model.width=100", "model.heads=3"], "model.width"),
    "no objects": (["data.max_objects=0"], "data.max_objects"),
    "more objects than colours": (["data.max_objects=9"], "data.max_objects"),
    "unknown key": (["model.dropout=0.1"], "model.dropout"),
    "unknown section": (["optimizer.lr=0.1"], "optimizer"),
}


@pytest.mark.parametrize("name", REJECTED)
def test_impossible_values_are_rejected_with_a_message_naming_the_key(name):
    overrides, key = REJECTED[name]
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_options(load_config(None, overrides))  # names and bounds that code above config.py holds


@pytest.mark.parametrize("override", ["train.steps", "steps=3", "=3", "train.steps:3"])
def test_overrides_of_the_wrong_form_are_rejected_with_the_expected_form(override):
    with pytest.raises(ConfigError, match=re.escape("section.key=value")):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.steps=abc", "train.steps"), ("train.steps=1.5", "train.steps"), ("model.rope=maybe", "model.rope")],
)
def test_values_of_the_wrong_type_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


@pytest.mark.parametrize(("override", "value"), [("train.lr=1e-3", 1e-3), ("train.lr=0.003", 3e-3)])
def test_learning_rates_in_scientific_notation_are_numbers(override, value):
    assert load_config(None, [override]).train.lr == pytest.approx(value)


def test_defaults_and_the_edges_of_valid_ranges_are_accepted():
    validate(Config())
    load_config(None, ["mimo.mask_ratio=0", "mimo.weight=0"])  # the CTF baseline
    load_config(None, ["mimo.mask_ratio=0", "mimo.loss_on=all"])
    load_config(None, ["mimo.mask_ratio=0.99"])
    load_config(None, ["model.preset=micro", "mimo.decoder_layer=1"])
    load_config(None, ["model.preset=micro", "mimo.decoder_layer=2"])
    load_config(None, ["data.num_frames=8", "train.context_frames=7"])
    # a context length is only a constraint for the prediction task
    load_config(None, ["train.task=unconditional", "train.context_frames=99"])
    assert load_config(None, ["train.task=unconditional"]).context_frames == 0


def test_overrides_are_typed_and_leave_the_original_untouched():
    config = load_config(None, ["train.steps=7", "model.rope=false", "sample.window=3"])
    assert (config.train.steps, config.model.rope, config.sample.window) == (7, False, 3)
    changed = with_overrides(config, ["train.steps=9"])
    assert changed.train.steps == 9 and config.train.steps == 7
    assert changed.model.rope is False
    with pytest.raises(ConfigError, match=re.escape("train.steps")):
        with_overrides(config, ["train.steps=-2"])


def test_yaml_base_files_are_inherited_and_overridden(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  preset: micro\ntrain:\n  steps: 10\n  batch_size: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  steps: 20\nmimo:\n  weight: 0\n")
    nested = tmp_path / "ablations"
    nested.mkdir()
    (nested / "grandchild.yaml").write_text("base: ../child.yaml\nmimo:\n  mask_ratio: 0.25\n")
    config = load_config(nested / "grandchild.yaml")
    assert config.model.preset == "micro"  # from the base, two levels up
    assert config.train.batch_size == 3  # sibling keys of an overridden section survive
    assert config.train.steps == 20  # the child wins over its base
    assert (config.mimo.weight, config.mimo.mask_ratio) == (0, 0.25)
    assert config.mimo.targets == "current+next"  # untouched keys keep their defaults
    assert load_config(nested / "grandchild.yaml", ["train.steps=30"]).train.steps == 30


def test_yaml_values_are_validated_and_unknown_keys_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  task: prediction\n  context_frames: 8\ndata:\n  num_frames: 8\n")
    with pytest.raises(ConfigError, match=re.escape("train.context_frames")):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("train:\n  stpes: 8\n")
    with pytest.raises(ConfigError, match=re.escape("train.stpes")):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
