"""Bad input at every entry point ends in one line that names what was wrong and a non-zero exit, and
changes no file that was there before (docs/faults.md lists these cases and what the user sees).

The table drives `mimo` in-process (`mimo.cli.main`) against one trained micro run, its export and a
few broken copies; two cases go through a subprocess, as a shell would run them. Further tests cover
what is not a refusal: interrupted runs exit with 128 + the signal, long work is announced before it
starts, outputs go where `--help` says. A second table calls the library with bad input: each call
raises a `MimoError` whose message is one line, and changes no file either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import mimo.apps.sample
import mimo.train.trainer
from mimo.apps.sample import export_inference_checkpoint, sample_from_checkpoint
from mimo.cli import main
from mimo.config import SampleConfig, load_config
from mimo.data.media import to_uint8, write_video
from mimo.data.synthetic import MovingShapes
from mimo.diffusion.sampler import sample_video
from mimo.errors import ArgumentError, CheckpointError, ConfigError, InputError, MimoError, NonFiniteValuesError
from mimo.evaluation.evaluate import evaluate_run
from mimo.metrics.frechet import frechet_distance
from mimo.metrics.i3d_weights import I3D_CACHE_FILE
from mimo.models import build_backbone
from mimo.train.checkpoint import find_checkpoint, load_trained_model
from mimo.train.trainer import train

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one intra-op thread

REPO_ROOT = Path(__file__).resolve().parents[1]
MICRO = ("model.preset=micro", "data.frame_size=16", "model.patch_size=4", "data.num_frames=4")
RUN = (*MICRO, "train.batch_size=2", "data.num_clips=8", "train.tensorboard=false", "sample.steps=1")
FEW_CLIPS = 4  # in the encoded dataset that is too small for the requests below
FVD = "--i3d {ws}/fvd/features.pt --frames 4 --resolution 16"  # a stand-in extractor: the I3D is not offline


class StandInI3D(torch.nn.Module):
    """Called as StyleGAN-V's TorchScript I3D is, on (B, 3, T, 224, 224) clips: 6 features per clip."""

    def __init__(self):
        super().__init__()
        self.projection = torch.nn.Linear(3, 6)

    def forward(self, clips: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True):
        return self.projection(clips.mean(dim=(2, 3, 4)))


def _fvd_inputs(folder: Path) -> None:
    """The extractor, and sets of videos good and bad in every way `mimo fvd` reads them."""
    folder.mkdir()
    torch.jit.script(StandInI3D()).save(str(folder / "features.pt"))
    videos = np.random.default_rng(0).uniform(-1, 1, (6, 4, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "good.npz", videos=videos)
    np.savez(folder / "nan.npz", videos=videos * np.nan)
    np.savez(folder / "one.npz", videos=videos[:1])
    (folder / "random.npz").write_bytes(os.urandom(512))
    (folder / "random.safetensors").write_bytes(os.urandom(512))
    (folder / "random.json").write_text("{}")


def _export_with_final_weights(source: Path, out: Path, value: float) -> None:
    """A copy of an export whose final layer's weights are all `value` (NaN, or finite but overflowing)."""
    shutil.copytree(source, out)
    weights = load_file(out / "ema.safetensors")
    weights["final.linear.weight"] = torch.full_like(weights["final.linear.weight"], value)
    save_file(weights, out / "ema.safetensors")


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: what "no file was changed" compares."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A trained run, its export, copies missing their weights, configs and data that are wrong in some way."""
    root = tmp_path_factory.mktemp("faults")
    assert main(["train", *RUN, "train.steps=2", f"train.out_dir={root / 'run'}", "train.sample_at_end=false"]) == 0
    assert main(["export", str(root / "run"), str(root / "export")]) == 0
    for name, missing in (("no_ema", "ema.safetensors"), ("no_raw", "model.safetensors")):
        shutil.copytree(root / "run", root / name)
        (find_checkpoint(root / name) / missing).unlink()
    (root / "a.yaml").write_text("base: b.yaml\n")
    (root / "b.yaml").write_text("base: a.yaml\n")
    (root / "numeric_base.yaml").write_text("base: 3\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "a_file").write_text("not a folder\n")
    (root / "not_a_tarball.tar.gz").write_text("not an archive\n")
    bad_videos = root / "bad_videos"
    bad_videos.mkdir()
    for index in range(4):
        (bad_videos / f"clip_{index}.mp4").write_bytes(os.urandom(256))
    few_clips = [f"data.num_clips={FEW_CLIPS}", *MICRO[1:], "--autoencoder", "identity", "--out", root / "few_clips"]
    assert main(["data", "encode", *map(str, few_clips)]) == 0
    shapes = MovingShapes(FEW_CLIPS, frame_size=16, num_frames=4, seed=5)  # FVD's real set: video files
    (root / "few_videos").mkdir()
    for index in range(FEW_CLIPS):
        write_video(root / "few_videos" / f"clip_{index}.mp4", to_uint8(shapes[index]["video"]))
    few_videos = {"dataset": "video_folder", "path": str(root / "few_videos"), "frame_size": 16, "num_frames": 4}
    (root / "few_videos.yaml").write_text(yaml.safe_dump({"data": few_videos}))
    _fvd_inputs(root / "fvd")
    _export_with_final_weights(root / "export", root / "nan_export", torch.nan)
    _export_with_final_weights(root / "export", root / "overflowing_export", 3e38)  # finite, but the output is not
    (root / "scalar_section.yaml").write_text("train: 5\n")
    (root / "cache").mkdir()
    (root / "cache" / I3D_CACHE_FILE).write_bytes(b"")  # "cached": a --source that does not exist is still refused
    wide = [*RUN, "data.frame_size=32", "train.steps=1", "train.sample_at_end=false", f"train.out_dir={root / 'wide'}"]
    assert main(["train", *wide]) == 0
    return root


@dataclass(frozen=True)
class Case:
    """`mimo ARGV` ({ws} is the workspace) ends with exit `code` and a last line containing `message`."""

    argv: str
    message: str
    code: int = 2


NO_CUDA = "no CUDA device" if not torch.cuda.is_available() else None
CLI_CASES = {
    # loaders never return an untrained model
    "sample-an-export-without-ema": Case("sample {ws}/export --no-ema", "an exported model holds only the EMA"),
    "sample-a-checkpoint-without-ema-weights": Case("sample {ws}/no_ema", "has no ema.safetensors"),
    "sample-raw-weights-that-are-missing": Case("sample {ws}/no_raw --no-ema", "has no model.safetensors"),
    "sample-a-folder-that-does-not-exist": Case("sample {ws}/nowhere", "does not exist"),
    "sample-a-folder-without-checkpoint": Case("sample {ws}/bad_videos", "holds no checkpoint"),
    # 0 is a value, not "unset"
    "train-depth-0": Case("train model.depth=0 train.out_dir={ws}/new_run", "model.depth: must be positive"),
    "train-decoder-width-0": Case("train mimo.decoder_width=0 train.out_dir={ws}/new_run", "mimo.decoder_width"),
    "sample-0-frames": Case("sample {ws}/run --frames 0", "sample.num_frames: must exceed the 2 context frames"),
    "sample-0-videos": Case("sample {ws}/run --num-videos 0", "sample.num_videos: must be at least 1"),
    "sample-negative-videos": Case("sample {ws}/run --num-videos -1", "sample.num_videos: must be at least 1"),
    # overrides at sample/eval/probe time: applied fully or refused by name
    "sample-a-wider-model": Case("sample {ws}/run model.width=128", "model.width=128 cannot be applied"),
    "eval-a-deeper-model": Case("eval {ws}/run model.depth=3", "model.depth=3 cannot be applied"),
    "probe-another-objective": Case("probe {ws}/run mimo.weight=0", "mimo.weight=0.0 cannot be applied"),
    "sample-another-frame-size": Case("sample {ws}/run data.frame_size=32", "data.frame_size=32 cannot be applied"),
    "sample-with-an-eval-setting": Case("sample {ws}/run eval.seeds=1", "eval.seeds has no effect here"),
    "probe-with-a-sampling-setting": Case("probe {ws}/run sample.steps=3", "sample.steps has no effect here"),
    # nothing on disk damaged: a refused resume, an export over a checkpoint
    "resume-with-another-model": Case(
        "train " + " ".join(RUN) + " train.steps=3 model.width=32 train.out_dir={ws}/run",
        "was saved from a different model or config",
    ),
    "start-over-in-a-run-folder": Case(
        "train " + " ".join(RUN) + " train.resume=false train.out_dir={ws}/run", "train.resume=false: "
    ),
    "export-into-a-checkpoint": Case(
        "export {ws}/run {ws}/run/checkpoints/step_00000002", "already exists and is not an empty folder"
    ),
    "export-into-a-run": Case("export {ws}/run {ws}/export", "already exists and is not an empty folder"),
    "sample-to-a-file": Case("sample {ws}/run --out {ws}/a_file", "is a file; give another --out"),
    # every error a user can cause is one line
    "base-cycle": Case("train {ws}/a.yaml", "its base: chain is a cycle"),
    "base-not-a-file-name": Case("train {ws}/numeric_base.yaml", "base: must name a YAML file"),
    "config-that-is-a-folder": Case("train {ws}/bad_videos", "is a folder; give one of its YAML files"),
    "binary-config": Case("train {ws}/binary.yaml", "is not valid YAML"),
    "override-that-is-not-yaml": Case("train train.out_dir=[", "train.out_dir: '[' is not valid YAML"),
    "encode-without-vae": Case("data encode data.num_clips=2 --out {ws}/latents", "--vae FOLDER is needed"),
    "encode-an-unknown-autoencoder": Case(
        "data encode --autoencoder zz --vae x --out {ws}/latents", "unknown autoencoder 'zz'"
    ),
    "encode-0-per-shard": Case("data encode --shard-size 0 --out {ws}/latents", "expected a positive integer"),
    "encode-into-latents-of-other-settings": Case(
        "data encode data.num_clips=4 "
        + " ".join(MICRO[1:])
        + " data.seed=9 --autoencoder identity --out {ws}/few_clips",
        "holds latents encoded with other settings (dataset differ",
    ),
    "built-in-videos-too-small": Case(
        "train model.preset=micro data.frame_size=8 train.out_dir={ws}/new_run", "data.frame_size: the built-in videos"
    ),
    "too-many-bad-videos": Case(
        "train " + " ".join(RUN) + " data.dataset=video_folder data.path={ws}/bad_videos data.num_workers=1 "
        "train.out_dir={ws}/new_run",
        "the data is probably wrong",
    ),
    "sample-more-videos-than-clips": Case(
        "sample {ws}/run data.dataset=latents data.path={ws}/few_clips --num-videos 8",
        f"sample.num_videos: the evaluation split has {FEW_CLIPS} clips, fewer than the 8",
    ),
    "eval-more-videos-than-clips": Case(
        "eval {ws}/run eval.videos={ws}/few_videos.yaml eval.num_videos=8",
        f"eval.num_videos: the evaluation data has {FEW_CLIPS} clips, fewer than the 8 requested",
    ),
    "probe-more-clips-than-there-are": Case(
        "probe {ws}/run data.dataset=latents data.path={ws}/few_clips eval.probe_clips=16",
        "eval.probe_clips: the evaluation data has",
    ),
    "probe-a-reference-that-does-not-exist": Case("probe {ws}/run --reference {ws}/nowhere", "does not exist"),
    "eval-on-a-device-torch-does-not-know": Case("eval {ws}/run --device banana", "is not a torch device"),
    "fetch-i3d-from-a-file-that-is-no-archive": Case(
        "weights fetch i3d --force --source {ws}/not_a_tarball.tar.gz", "is not a .tar.gz archive"
    ),
    "demo-without-training": Case("demo --steps 0 --out {ws}/demo", "train.steps: the demo measures a trained model"),
    # non-finite values: refused in one line, never a hang in the matrix square root, never a file of NaN frames
    "fvd-of-nan-videos": Case("fvd {ws}/fvd/good.npz {ws}/fvd/nan.npz " + FVD, "6 of 6 videos hold NaN or infinite"),
    "sample-a-model-of-nan-weights": Case("sample {ws}/nan_export", "holds NaN or infinite weights"),
    "sample-a-model-whose-output-overflows": Case(
        "sample {ws}/overflowing_export --num-videos 1", "overflowing_export: 1 of 1 sampled videos hold NaN"
    ),
    "eval-a-model-whose-output-overflows": Case(
        "eval {ws}/overflowing_export eval.metrics=psnr eval.num_videos=2 eval.seeds=0", "sampled videos hold NaN"
    ),
    # every option and file of mimo fvd, before any feature is computed
    "fvd-0-frames": Case("fvd {ws}/fvd/good.npz {ws}/fvd/good.npz " + FVD + " --frames 0", "(--frames) must be at"),
    "fvd-0-resolution": Case("fvd {ws}/fvd/good.npz {ws}/fvd/good.npz " + FVD + " --resolution 0", "(--resolution)"),
    "fvd-0-stride": Case("fvd {ws}/fvd/good.npz {ws}/fvd/good.npz " + FVD + " --stride 0", "(--stride) must be"),
    "fvd-0-per-batch": Case("fvd {ws}/fvd/good.npz {ws}/fvd/good.npz " + FVD + " --batch-size 0", "(--batch-size)"),
    "fvd-of-one-video": Case("fvd {ws}/fvd/good.npz {ws}/fvd/one.npz " + FVD, "holds 1 video(s); FVD fits a covar"),
    "fvd-of-random-bytes": Case("fvd {ws}/fvd/good.npz {ws}/fvd/random.npz " + FVD, "is not an .npz archive"),
    "fvd-of-random-statistics": Case("fvd {ws}/fvd/random.safetensors {ws}/fvd/good.npz " + FVD, "is not FVD stat"),
    "fvd-of-a-set-that-does-not-exist": Case("fvd {ws}/fvd/good.npz {ws}/fvd/nowhere.npz " + FVD, "is neither a"),
    "fvd-out-that-cannot-be-written": Case(
        "fvd {ws}/fvd/good.npz {ws}/fvd/good.npz " + FVD + " --out {ws}/a_file/fvd.json", "--out {ws}/a_file/fvd.json"
    ),
    "sample-a-context-that-is-no-video": Case("sample {ws}/run --context {ws}/a_file", "is not a video that can be"),
    "sample-several-continuations": Case(
        "sample {ws}/run --context {ws}/a_file --num-videos 4", "--num-videos does not apply to --context"
    ),
    # silently wrong before
    "train-a-tail-as-long-as-the-run": Case(
        "train mimo.unmasked_tail_steps=5 train.steps=3 train.out_dir={ws}/new_run", "leave no masked step"
    ),
    "init-from-into-another-run": Case(
        "train " + " ".join(RUN) + " train.steps=3 train.init_from={ws}/wide train.out_dir={ws}/run",
        "already holds a run",
    ),
    "train-mlp-ratio-0": Case("train model.mlp_ratio=0 train.out_dir={ws}/new_run", "model.mlp_ratio: the MLP"),
    "train-negative-mlp-ratio": Case("train model.mlp_ratio=-1 train.out_dir={ws}/new_run", "model.mlp_ratio"),
    "section-given-as-a-number": Case("train {ws}/scalar_section.yaml", "section 'train' must be a mapping"),
    "fetch-i3d-from-a-source-that-does-not-exist": Case(
        "weights fetch i3d --source {ws}/nowhere.tar.gz", "nowhere.tar.gz does not exist"
    ),
    # misleading before
    "probe-fewer-clips-than-a-probe-needs": Case(
        "probe {ws}/run data.dataset=latents data.path={ws}/few_clips", "eval.probe_clips must be 16 or more"
    ),
    "probe-a-reference-of-another-frame-size": Case(
        "probe {ws}/run --reference {ws}/wide", "CKNNA compares features of the same clips"
    ),
}
if NO_CUDA:
    CLI_CASES["eval-on-cuda-without-one"] = Case("eval {ws}/run --device cuda", NO_CUDA)
    CLI_CASES["train-flex-attention-on-a-cpu"] = Case(
        "train " + " ".join(RUN) + " model.attention=flex train.out_dir={ws}/new_run", "flex cannot train on cpu"
    )


def run_mimo(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `mimo ARGV` run in-process (argparse's usage errors included)."""
    try:
        code = main(argv)
    except SystemExit as error:  # a usage error: argparse prints the usage, then one error line
        code = error.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_bad_input_ends_in_one_line_naming_the_fix_and_changes_no_file(case, workspace, capsys, monkeypatch):
    monkeypatch.setenv("MIMO_CACHE", str(workspace / "cache"))
    monkeypatch.chdir(workspace)
    before = _files(workspace)
    code, lines = run_mimo(case.argv.format(ws=workspace).split(), capsys)
    assert code == case.code
    assert lines[-1].startswith("mimo ") and ": error: " in lines[-1]
    assert case.message.format(ws=workspace) in lines[-1]
    assert not any("Traceback" in line for line in lines)
    after = _files(workspace)
    assert {name: after.get(name) for name in before} == before


SUBPROCESS_CASES = {  # as a shell runs them: the exit status and stderr the user sees, nothing else
    "base-cycle": Case("train {ws}/a.yaml", "its base: chain is a cycle"),
    "encode-without-vae": Case("data encode data.num_clips=2 --out {ws}/latents", "--vae FOLDER is needed"),
}


@pytest.mark.parametrize("case", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_bad_input_in_a_shell_prints_exactly_one_line(case, workspace):
    command = [sys.executable, "-m", "mimo.cli", *case.argv.format(ws=workspace).split()]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == case.code
    assert len(result.stderr.strip().splitlines()) == 1 and case.message in result.stderr
    assert result.stdout == ""


# ----- what is not a refusal ---------------------------------------------------------------------------
def test_eval_seeds_given_as_one_number_is_a_seed():
    assert load_config(None, ["eval.seeds=3"]).eval.seed_list() == [3]


def test_zero_is_a_value_and_null_is_the_preset():
    assert load_config(None, ["model.depth=null"]).model.size() == (4, 128, 4)  # the tiny preset
    with pytest.raises(ConfigError, match=r"model\.heads: must be positive"):
        load_config(None, ["model.heads=0"])


class CtrlCAtTheSecondClip(torch.utils.data.Dataset):
    """A dataset whose second clip comes with a Ctrl-C: to the process reading it and, read by a DataLoader
    worker, to its parent as well (a terminal signals every process of the group)."""

    def __init__(self, dataset):
        self.dataset, self.items, self.reader = dataset, 0, os.getpid()

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.items += 1
        if self.items == 2:
            if os.getpid() != self.reader:  # a worker
                os.kill(self.reader, signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return self.dataset[index]


@pytest.fixture
def ctrl_c_at_the_second_clip(monkeypatch):
    build_dataset = mimo.train.trainer.build_dataset
    interrupting = lambda *args, **kwargs: CtrlCAtTheSecondClip(build_dataset(*args, **kwargs))  # noqa: E731
    monkeypatch.setattr(mimo.train.trainer, "build_dataset", interrupting)


def _ctrl_c_while_saving(monkeypatch, presses: int) -> None:
    """Ctrl-C pressed `presses` times while the checkpoint is written."""
    save_checkpoint = mimo.train.trainer.save_checkpoint

    def interrupted_save(*args, **kwargs):
        for _ in range(presses):
            signal.raise_signal(signal.SIGINT)
        return save_checkpoint(*args, **kwargs)

    monkeypatch.setattr(mimo.train.trainer, "save_checkpoint", interrupted_save)


@pytest.mark.usefixtures("ctrl_c_at_the_second_clip")
def test_an_interrupted_training_saves_and_exits_130_so_a_following_command_does_not_run(tmp_path, capsys):
    code, lines = run_mimo(["train", *RUN, "train.steps=100", f"train.out_dir={tmp_path}"], capsys)
    assert code == 128 + signal.SIGINT
    assert "interrupted at step 1, checkpoint saved" in lines[-1] and "resume with `mimo train" in lines[-1]
    assert find_checkpoint(tmp_path).name == "step_00000001"


@pytest.mark.usefixtures("ctrl_c_at_the_second_clip")
def test_a_second_ctrl_c_during_the_save_says_it_finishes_the_save_and_the_checkpoint_is_written(
    tmp_path, monkeypatch, capsys
):
    _ctrl_c_while_saving(monkeypatch, presses=1)
    assert main(["train", *RUN, "train.steps=100", f"train.out_dir={tmp_path}"]) == 128 + signal.SIGINT
    shown = capsys.readouterr()
    assert "interrupted at step 1, checkpoint saved" in shown.err.strip().splitlines()[-1]
    assert "received again: finishing the step and its checkpoint" in shown.out
    assert find_checkpoint(tmp_path).name == "step_00000001"


@pytest.mark.usefixtures("ctrl_c_at_the_second_clip")
def test_a_third_ctrl_c_aborts_and_says_which_steps_are_lost(tmp_path, monkeypatch, capsys):
    _ctrl_c_while_saving(monkeypatch, presses=2)
    assert main(["train", *RUN, "train.steps=100", f"train.out_dir={tmp_path}"]) == 128 + signal.SIGINT
    shown = capsys.readouterr()
    assert shown.err.strip().splitlines()[-1] == "mimo train: interrupted"
    assert "aborting without a checkpoint; all its steps are lost" in shown.out
    assert find_checkpoint(tmp_path) is None


@pytest.mark.usefixtures("ctrl_c_at_the_second_clip")
def test_a_ctrl_c_is_reported_once_not_once_per_dataloader_worker(tmp_path, capfd):
    code = main(["train", *RUN, "data.num_workers=1", "train.steps=100", f"train.out_dir={tmp_path}"])
    assert code == 128 + signal.SIGINT
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count("received: saving a checkpoint") == 1
    assert find_checkpoint(tmp_path) is not None


def test_data_check_of_a_two_class_folder_expects_no_class_count_it_was_not_given(tmp_path, capsys):
    shapes = MovingShapes(2, frame_size=16, num_frames=4)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_video(tmp_path / name / "clip.mp4", to_uint8(shapes[0]["video"]))
    assert main(["data", "check", "data.dataset=class_folders", f"data.path={tmp_path}", "data.num_frames=4"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "OK"


def test_sample_video_takes_numpy_integers_as_counts(pixel_model):
    context = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    options = SampleConfig(steps=np.int64(1))
    assert sample_video(pixel_model, np.int64(3), options, context=context).shape == (1, 3, 3, 16, 16)


def test_training_a_finished_run_again_says_there_is_nothing_to_train(workspace, tmp_path, capsys):
    run = shutil.copytree(workspace / "run", tmp_path / "run")
    assert main(["train", *RUN, "train.steps=1", f"train.out_dir={run}", "train.sample_at_end=false"]) == 0
    assert f"{run} is at step 2 already (train.steps=1): nothing to train" in capsys.readouterr().out


def test_max_seconds_says_that_it_ended_the_run(tmp_path, capsys):
    assert main(["train", *RUN, "train.steps=1000", "train.max_seconds=0.001", f"train.out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "train.max_seconds=0.001 reached: stopped at step 1 of 1000, checkpoint saved" in out


def test_sampling_announces_its_cost_before_it_starts(workspace, monkeypatch, capsys):
    def user_presses_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mimo.apps.sample, "sample_for_task", user_presses_ctrl_c)
    code, lines = run_mimo(["sample", str(workspace / "run"), "--frames", "100000", "--num-videos", "1"], capsys)
    assert code == 130 and lines[-1] == "mimo sample: interrupted"
    announced = [line for line in lines if line.startswith("sampling: 1 videos × 99998 frames × (1 steps + 3 clean")]
    assert len(announced) == 1 and " model calls (" in announced[0] and ": about " in announced[0]
    assert not (workspace / "run" / "samples_cli").exists()


def test_samples_at_the_end_of_training_are_announced_and_can_be_turned_off(tmp_path, capsys):
    assert main(["train", *RUN, "train.steps=1", f"train.out_dir={tmp_path / 'on'}"]) == 0
    assert "samples at the end of training (train.sample_at_end=false skips them)" in capsys.readouterr().out
    assert (tmp_path / "on" / "samples" / "step_00000001.gif").is_file()
    assert main(["train", *RUN, "train.steps=1", f"train.out_dir={tmp_path / 'off'}", "train.sample_at_end=false"]) == 0
    assert not (tmp_path / "off" / "samples").exists()


def test_sampling_an_export_writes_beside_it_and_never_into_the_source_run(workspace, tmp_path, capsys):
    export = shutil.copytree(workspace / "export", tmp_path / "export")
    source_run = _files(workspace / "run")
    assert main(["sample", str(export), "--num-videos", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"samples in {export / 'samples_cli'}"
    assert (export / "samples_cli" / "samples.npz").is_file()
    assert _files(workspace / "run") == source_run


def test_sampling_a_checkpoint_folder_writes_under_its_run(workspace, tmp_path, capsys):
    run = shutil.copytree(workspace / "run", tmp_path / "run")
    assert main(["sample", str(find_checkpoint(run)), "--num-videos", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"samples in {run / 'samples_cli'}"


def test_probe_prints_every_layer_and_where_it_wrote(workspace, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", str(workspace / "run"), "--reference", str(workspace / "run"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    depth = load_trained_model(workspace / "run")[0].depth
    assert [line.split()[0] for line in lines[2 : 2 + depth]] == [str(layer) for layer in range(1, depth + 1)]
    assert lines[-1] == f"probe.json, probe.md and probe.png in {out}"
    assert (out / "probe.json").is_file()


def test_bench_help_is_the_benchmarks_own(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "step", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "usage: mimo bench step" in shown and "--ratios" in shown  # the step benchmark's own options


def test_benchmarks_write_outside_the_tracked_files_unless_told():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from harness import default_results_dir
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    results = default_results_dir().relative_to(REPO_ROOT)
    assert results.parts[0] == "runs" and "runs/" in (REPO_ROOT / ".gitignore").read_text().split()


# ----- the library -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pixel_model():
    torch.manual_seed(0)
    return build_backbone(load_config(None, list(MICRO))).eval()


ONE_STEP = SampleConfig(steps=1, cfg_scale=1.0)


def _sample_with(make_context, batch_size: int | None = None, **options):
    """A call of sample_video on a pixel model with a context of two frames made by `make_context`."""

    def call(workspace: Path, model) -> None:
        context = torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        settings = SampleConfig(**{"steps": 1, "cfg_scale": 1.0, **options})
        sample_video(model, 3, settings, context=make_context(context), batch_size=batch_size)

    return call


def _forward_with(**inputs):
    """A call of FrameCausalDiT.forward on one noisy frame (and one clean one), with `inputs` added."""

    def call(workspace: Path, model) -> None:
        frames = torch.zeros(1, 1, 3, 16, 16)
        options = {"noise_level": torch.full((1, 1), 0.5), "clean": frames, **inputs}
        model(frames, **options)

    return call


def _class_conditional_model():
    return build_backbone(load_config(None, [*MICRO, "train.task=class_conditional"])).eval()


def _overflowing(model):
    """`model` with finite final weights so large that its velocities are not finite."""
    with torch.no_grad():
        model.final.linear.weight.fill_(3e38)
    return model


def _train_on_clips_of(num_frames: int):
    def call(workspace: Path, model) -> None:
        config = load_config(None, [*RUN, "train.steps=1", f"train.out_dir={workspace / 'new_run'}"])
        train(config, dataset=MovingShapes(4, frame_size=16, num_frames=num_frames))

    return call


FEW = ("data.dataset=latents", "data.path={ws}/few_clips")
LIBRARY_CASES = {  # id: (call(workspace, model), the error, a part of its one-line message)
    "context-in-0-255": (_sample_with(lambda c: (c + 1) * 127.5), InputError, "(pixels in [0, 255]: x / 127.5 - 1)"),
    "context-in-0-2": (_sample_with(lambda c: c + 1), InputError, "the model expects [-1, 1]"),
    "context-float64": (_sample_with(torch.Tensor.double), InputError, "context has dtype torch.float64, the model's"),
    "context-half": (_sample_with(torch.Tensor.half), InputError, "pass context.to(torch.float32)"),
    "context-nan": (_sample_with(lambda c: c * torch.nan), InputError, "context contains NaN"),
    "unknown-solver": (_sample_with(lambda c: c, solver="rk4"), InputError, "unknown solver 'rk4'"),
    "raw-weights-of-an-export": (
        lambda ws, model: load_trained_model(ws / "export", use_ema=False),
        CheckpointError,
        "an exported model holds only the EMA weights",
    ),
    "ema-weights-missing": (lambda ws, model: load_trained_model(ws / "no_ema"), CheckpointError, "ema.safetensors"),
    "no-checkpoint": (lambda ws, model: load_trained_model(ws / "bad_videos"), CheckpointError, "holds no checkpoint"),
    "sample-a-wider-model": (
        lambda ws, model: sample_from_checkpoint(ws / "run", overrides=["model.width=128"]),
        ConfigError,
        "model.width=128 cannot be applied",
    ),
    "evaluate-more-videos-than-clips": (
        lambda ws, model: evaluate_run(ws / "run", [f"eval.videos={ws / 'few_videos.yaml'}", "eval.num_videos=8"]),
        ConfigError,
        f"eval.num_videos: the evaluation data has {FEW_CLIPS} clips",
    ),
    "export-over-a-checkpoint": (
        lambda ws, model: export_inference_checkpoint(ws / "run", find_checkpoint(ws / "run")),
        ArgumentError,
        "already exists and is not an empty folder",
    ),
    "train-on-clips-of-another-length": (_train_on_clips_of(5), InputError, "set data.num_frames=5"),
    "batch-size-other-than-the-context": (_sample_with(lambda c: c, batch_size=3), InputError, "give only one"),
    "negative-cfg-scale": (_sample_with(lambda c: c, cfg_scale=-1.0), InputError, "cfg_scale must be 0 or more"),
    "labels-one-past-the-classes": (
        lambda ws, model: sample_video(_class_conditional_model(), 3, ONE_STEP, labels=torch.tensor([8])),
        InputError,
        "labels must be class ids in 0..7",
    ),
    "labels-for-an-unconditional-model": (
        _forward_with(labels=torch.zeros(1, dtype=torch.long)),
        InputError,
        "this model is unconditional",
    ),
    "nan-noise-level": (_forward_with(noise_level=torch.full((1, 1), torch.nan)), InputError, "noise_level contains"),
    "keep-outside-a-frame": (_forward_with(keep=torch.tensor([[0, 99]])), InputError, "a frame has positions 0..15"),
    "a-layer-that-does-not-exist": (_forward_with(return_layers=(9,)), InputError, "layers [9] do not exist"),
    "samples-that-overflow": (
        lambda ws, model: sample_video(
            _overflowing(build_backbone(load_config(None, list(MICRO)))), 3, ONE_STEP, batch_size=1
        ),
        NonFiniteValuesError,
        "1 of 1 sampled videos hold NaN or infinite values",
    ),
    "nan-statistics": (
        lambda ws, model: frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2)),
        NonFiniteValuesError,
        "the first covariance holds NaN",
    ),
}


@pytest.mark.parametrize(("call", "error", "message"), LIBRARY_CASES.values(), ids=LIBRARY_CASES.keys())
def test_bad_input_to_the_library_raises_a_mimo_error_naming_the_fix(workspace, pixel_model, call, error, message):
    before = _files(workspace)
    with pytest.raises(error) as raised:
        call(workspace, pixel_model)
    assert isinstance(raised.value, MimoError)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    after = _files(workspace)
    assert {name: after.get(name) for name in before} == before


def test_sample_video_takes_a_good_context(pixel_model):
    context = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    assert sample_video(pixel_model, 3, ONE_STEP, context=context).shape == (1, 3, 3, 16, 16)
