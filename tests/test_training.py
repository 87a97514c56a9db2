"""Training is a pure function of (config, step): a resumed run repeats the uninterrupted one exactly,
and the switches that trade memory or speed for nothing else (activation checkpointing) change nothing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml

from conftest import MICRO_RUN
from mimo.config import load_config
from mimo.errors import ConfigError
from mimo.train.checkpoint import find_checkpoint, load_tensors, read_state
from mimo.train.init_from import lineage
from mimo.train.logger import read_metrics
from mimo.train.trainer import COSINE_FLOOR, Trainer, lr_factor, train

RUN = MICRO_RUN
LOSS_KEYS = ("loss", "diffusion", "mask", "grad_norm")


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one intra-op thread


def run_config(out_dir: Path, *overrides: str):
    return load_config(None, [*RUN, f"train.out_dir={out_dir}", *overrides])


def _losses(run_dir: Path) -> list[dict[str, float]]:
    return [{k: r[k] for k in (*LOSS_KEYS, "step") if k in r} for r in read_metrics(run_dir)]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = find_checkpoint(run_dir)
    return {**load_tensors(checkpoint / "model.safetensors"), **load_tensors(checkpoint / "ema.safetensors")}


@pytest.mark.parametrize(
    "overrides",
    [
        ("mimo.weight=0",),
        (),
        ("train.grad_accumulation=2", "train.task=class_conditional"),
        ("diffusion.own_history=0.5", "diffusion.history_noise_max=0.3"),
    ],
    ids=["ctf-baseline", "mimo", "mimo-accumulation-classes", "own-noised-history"],
)
def test_resumed_run_repeats_the_uninterrupted_losses_exactly(tmp_path, overrides):
    straight = train(run_config(tmp_path / "straight", "train.steps=4", *overrides))
    first = train(run_config(tmp_path / "split", "train.steps=2", *overrides))
    assert first.step == 2
    resumed = train(run_config(tmp_path / "split", "train.steps=4", *overrides))
    assert resumed.step == straight.step == 4
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
    assert [r["step"] for r in _losses(tmp_path / "split")] == [1, 2, 3, 4]
    ours, theirs = _weights(tmp_path / "split"), _weights(tmp_path / "straight")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_finished_run_is_not_trained_or_saved_again(tmp_path):
    train(run_config(tmp_path, "train.steps=2"))
    saved = find_checkpoint(tmp_path)
    stamp = (saved / "model.safetensors").stat().st_mtime_ns
    again = train(run_config(tmp_path, "train.steps=2"))
    assert again.step == 2 and again.checkpoint == saved
    assert (saved / "model.safetensors").stat().st_mtime_ns == stamp


def test_resuming_with_another_split_of_the_global_batch_continues_the_data_stream(tmp_path):
    """4 clips per step as 2 × 2 accumulated, resumed as 1 × 4: the next step gets the same clips."""
    train(run_config(tmp_path, "train.steps=1", "train.grad_accumulation=2"))
    assert read_state(find_checkpoint(tmp_path))["clips_seen"] == 4
    accumulated = Trainer(run_config(tmp_path, "train.grad_accumulation=2"))
    accumulated.resume()
    batches = accumulated.batches()
    expected = torch.cat([next(batches)["video"] for _ in range(2)])
    whole = Trainer(run_config(tmp_path, "train.batch_size=4"))
    assert not torch.equal(next(whole.batches())["video"], expected)  # a fresh run starts elsewhere
    whole.resume()
    assert torch.equal(next(whole.batches())["video"], expected)


def test_activation_checkpointing_changes_memory_not_the_step(tmp_path):
    flags = ("false", "true")
    trainers = [Trainer(run_config(tmp_path / flag, f"train.activation_checkpointing={flag}")) for flag in flags]
    steps = [t.train_step(t.batches()) for t in trainers]
    assert steps[0] == steps[1]
    plain, recomputed = (dict(t.objective.named_parameters()) for t in trainers)
    assert all(torch.equal(plain[k], recomputed[k]) for k in plain)


@pytest.mark.parametrize("overrides", [("mimo.weight=0",), ()], ids=["ctf-baseline", "mimo"])
def test_bf16_autocast_step_stays_close_to_fp32(tmp_path, overrides):
    trainers = {p: Trainer(run_config(tmp_path / p, f"train.precision={p}", *overrides)) for p in ("fp32", "bf16")}
    steps = {p: t.train_step(t.batches()) for p, t in trainers.items()}
    for key in ("loss", "grad_norm"):
        assert steps["bf16"][key] == pytest.approx(steps["fp32"][key], rel=0.05)
    assert steps["bf16"]["grad_norm"] != steps["fp32"]["grad_norm"]  # autocast did compute in bf16


def test_a_time_budget_stops_training_with_a_checkpoint_that_resumes(tmp_path):
    stopped = train(run_config(tmp_path, "train.steps=50", "train.max_seconds=1e-6"))
    assert stopped.step == 1 and not stopped.interrupted  # the budget is checked after each step
    assert read_state(find_checkpoint(tmp_path))["step"] == 1
    resumed = train(run_config(tmp_path, "train.steps=3"))
    assert resumed.step == 3


def write_preset(path: Path, out_dir: Path, steps: int, init_from: str | None = None, **train_keys) -> Path:
    """A YAML preset of the micro run (the phases of a recipe like configs/reference/)."""
    keys = dict(arg.split("=", 1) for arg in RUN)
    sections: dict[str, dict] = {}
    for key, value in {**keys, "train.out_dir": str(out_dir), "train.steps": steps, **train_keys}.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = yaml.safe_load(str(value))
    if init_from:
        sections["train"]["init_from"] = init_from
    path.write_text(yaml.safe_dump(sections))
    return path


def test_init_from_a_preset_trains_it_first_then_starts_from_its_weights(tmp_path):
    write_preset(tmp_path / "first.yaml", tmp_path / "first", steps=2)
    second = write_preset(tmp_path / "second.yaml", tmp_path / "second", 1, "first.yaml", **{"train.lr": 1e-12})
    result = train(load_config(second))  # init_from is read beside the file that names it
    assert result.step == 1 and read_state(find_checkpoint(tmp_path / "first"))["step"] == 2
    assert lineage(tmp_path / "second") == [tmp_path / "first", tmp_path / "second"]  # what the card credits
    first_weights, second_weights = _weights(tmp_path / "first"), _weights(tmp_path / "second")
    for key, value in first_weights.items():
        if key.startswith("backbone."):  # a learning rate of 1e-12 leaves the weights it started from
            torch.testing.assert_close(second_weights[key], value, rtol=0, atol=1e-6)
    first_saved = find_checkpoint(tmp_path / "first") / "model.safetensors"
    stamp = first_saved.stat().st_mtime_ns
    again = train(load_config(second, ["train.steps=2"]))  # the finished first phase is not trained again
    assert again.step == 2 and first_saved.stat().st_mtime_ns == stamp


def test_an_unfinished_first_phase_stops_the_recipe_there(tmp_path):
    write_preset(tmp_path / "first.yaml", tmp_path / "first", 50, **{"train.max_seconds": 1e-6})
    stopped = train(load_config(write_preset(tmp_path / "second.yaml", tmp_path / "second", 1, "first.yaml")))
    assert stopped.out_of_time and stopped.run_dir == tmp_path / "first" and stopped.step == 1
    assert not (tmp_path / "second").exists()


def test_a_chain_of_presets_that_comes_back_to_its_folder_is_refused(tmp_path):
    write_preset(tmp_path / "a.yaml", tmp_path / "a", 1, "b.yaml")
    write_preset(tmp_path / "b.yaml", tmp_path / "b", 1, "a.yaml")
    with pytest.raises(ConfigError, match="earlier in this chain"):
        train(load_config(tmp_path / "a.yaml"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    write_preset(tmp_path / "c.yaml", tmp_path / "c", 1, "missing.yaml")
    with pytest.raises(ConfigError, match=r"train\.init_from=.*missing\.yaml: config file .* not found"):
        train(load_config(tmp_path / "c.yaml"))


def test_cosine_schedule_warms_up_then_decays_to_a_tenth_at_the_last_step():
    train = load_config(None, ["train.lr_schedule=cosine", "train.warmup_steps=10", "train.steps=110"]).train
    factors = [lr_factor(step, train) for step in range(111)]
    assert factors[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert factors[110] == pytest.approx(COSINE_FLOOR)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    constant = load_config(None, ["train.warmup_steps=10", "train.steps=110"]).train
    assert [lr_factor(step, constant) for step in range(10, 111)] == [1.0] * 101


def test_the_optimizer_steps_at_the_scheduled_learning_rate(tmp_path):
    config = run_config(tmp_path / "run", "train.steps=4", "train.lr_schedule=cosine", "train.sample_at_end=false")
    train(config)
    logged = [record["lr"] for record in read_metrics(tmp_path / "run")]
    assert logged == pytest.approx([1e-3 * lr_factor(step, config.train) for step in range(4)])
