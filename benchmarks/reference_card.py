"""Ship the reference model: a finished run's EMA backbone in float16 as package data, measured, with its card.

    mimo train configs/reference/demo-guidance.yaml   # both phases (demo.yaml first), resumable
    python benchmarks/reference_card.py runs/reference-guidance --commit COMMIT_THAT_TRAINED_IT \
        --set sample.history_guidance=W          # W chosen on validation clips (benchmarks/results/README.md)

Run it from the folder `mimo train` ran in: the card credits every phase (train.init_from, followed back), whose
relative run folders are read from there.

Writes src/mimo/reference/ (ema.safetensors, state.json, card.json, CARD.md): the weights as shipped are what is
measured (float16, loaded back into float32), on `--clips` held-out clips of the evaluation seed at the training
length and at twice it (sliding window), autoregressive and teacher-forced, against repeating the last frame.
`mimo sample reference` then samples from it with no training and no download; tests/test_reference.py checks
the card's hash, that the shipped model has learned the motion, and that it reproduces the card's scores on
the clips of CHECK_SEED (any bug in the model, the cache or the sampler moves them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from harness import machine_info, training_wall_seconds
from mimo.apps.sample import export_inference_checkpoint
from mimo.config import Config, from_dict, with_sampling_overrides
from mimo.evaluation.motion import copy_last_scores, motion_scores, real_frame_scores
from mimo.evaluation.protocols import EVAL_SEED, held_out_clips
from mimo.train.checkpoint import find_trained_checkpoint, load_trained_model, read_state
from mimo.train.init_from import lineage
from mimo.train.logger import read_metrics

PACKAGE_FOLDER = Path(__file__).resolve().parents[1] / "src" / "mimo" / "reference"
WEIGHTS = "ema.safetensors"
CHECK_SEED = 2026  # the clips tests/test_reference.py samples: a seed neither training (0) nor the card used
CHECK_CLIPS = 16


def check_clips(config: Config) -> dict[str, torch.Tensor]:
    """The held-out clips of the quality test in CI, twice the training length."""
    return held_out_clips(config, 2 * config.data.num_frames, CHECK_CLIPS, CHECK_SEED)


def verdict(metrics: dict[str, float], copy_last: dict[str, float], length: int) -> str:
    """Whether the autoregressive samples beat repeating the last frame, metric by metric, in words."""
    parts = []
    for key, what in (("ar_px", "trajectory error"), ("ar_lost", "objects lost")):
        for suffix, frames in (("", length), ("2", 2 * length)):
            name = key.replace("ar", f"ar{suffix}", 1)
            beats = "beats" if metrics[name] < copy_last[name] else "does not beat"
            parts.append(f"{what} to frame {frames}: {beats} copy-last ({metrics[name]} vs {copy_last[name]})")
    return "Autoregressive samples against copy-last: " + "; ".join(parts) + "."


def card_markdown(card: dict) -> str:
    metrics, copy, real = card["metrics"], card["copy_last"], card["real_frames"]
    rows = [
        ("trajectory error, autoregressive (px)", "ar_px", "ar2_px"),
        ("objects lost, autoregressive", "ar_lost", "ar2_lost"),
        ("trajectory error, teacher-forced (px)", "tf_px", "tf2_px"),
        ("objects lost, teacher-forced", "tf_lost", "tf2_lost"),
    ]
    lines = [
        "# The reference model",
        "",
        f"A tiny frame-causal DiT trained by mimo on the built-in moving shapes ({card['config_summary']}). "
        "Sample from it with `mimo sample reference --frames 32`.",
        "",
        f"- command: `{card['command']}` at commit {card['commit']}",
        f"- steps: {' + '.join(map(str, card['steps'].values()))} ({', '.join(card['steps'])}); training wall "
        f"time: {sum(card['train_wall_seconds'].values()) / 60:.0f} min ({card['machine']['cpu']}, "
        f"{card['machine']['cores']} cores, 1 torch thread, shared with other work)",
        f"- weights: {card['weights']} (float16, {card['weights_bytes'] / 1e6:.1f} MB), "
        f"sha256 {card['weights_sha256']}",
        f"- measured on {card['clips']} held-out clips (seed {card['clip_seed']}, never trained on), "
        f"{card['sampler']}, as shipped (float16 weights):",
        "",
        f"| metric | {card['length']} frames | {2 * card['length']} frames | copy-last ({card['length']}) | "
        f"copy-last ({2 * card['length']}) | real frames ({card['length']}) | real frames ({2 * card['length']}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, a, b in rows:
        kind = a.rsplit("_", 1)[1]  # px or lost: the predictors without a model are scored as rollouts
        baselines = [copy[f"ar_{kind}"], copy[f"ar2_{kind}"], real[f"ar_{kind}"], real[f"ar2_{kind}"]]
        lines.append(f"| {label} | {metrics[a]} | {metrics[b]} | " + " | ".join(map(str, baselines)) + " |")
    lines += ["", card["verdict"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the finished reference run (train.out_dir)")
    parser.add_argument("--commit", required=True, help="the commit the run was trained at")
    parser.add_argument(
        "--command",
        default="mimo train configs/reference/demo-guidance.yaml",
    )
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--out", type=Path, default=PACKAGE_FOLDER)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="sample.KEY=VALUE",
        help="the shipped model's default sampler (chosen on validation clips, not the card's)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = find_trained_checkpoint(args.run)
    phases = lineage(args.run)
    with tempfile.TemporaryDirectory() as staging:
        exported = export_inference_checkpoint(checkpoint, Path(staging) / "export", half=True)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(exported, args.out)
    state_path = args.out / "state.json"
    shipped = json.loads(state_path.read_text())
    shipped["exported_from"] = args.command  # not this machine's path
    sampler = with_sampling_overrides(from_dict(shipped["config"]), args.set, ("sample.",))
    shipped["config"] = sampler.to_dict()
    state_path.write_text(json.dumps(shipped, indent=1))
    model, config = load_trained_model(args.out)
    clips = held_out_clips(config, 2 * config.data.num_frames, args.clips)
    metrics = motion_scores(model, config, clips)
    copy_last = copy_last_scores(config, clips)
    weights = args.out / WEIGHTS
    logged = read_metrics(args.run)
    sample = config.sample
    card = {
        "command": args.command,
        "commit": args.commit,
        "steps": {str(phase): read_state(find_trained_checkpoint(phase))["step"] for phase in phases},
        "final_losses": {key: logged[-1][key] for key in ("diffusion", "loss") if key in logged[-1]},
        "train_wall_seconds": {str(phase): training_wall_seconds(phase) for phase in phases},
        "machine": machine_info(torch.device("cpu")),
        "config_summary": f"{config.model.preset} preset, {config.data.frame_size}×{config.data.frame_size} px, "
        f"patch {config.model.patch_size}, {config.data.num_frames} frames with {config.context_frames} given",
        "length": config.data.num_frames,
        "clips": args.clips,
        "clip_seed": EVAL_SEED,
        "sampler": f"{sample.steps} {sample.solver} steps, history noise {sample.history_noise}, "
        f"history guidance {sample.history_guidance}",
        "metrics": metrics,
        "copy_last": copy_last,
        "real_frames": real_frame_scores(config, clips),
        "verdict": verdict(metrics, copy_last, config.data.num_frames),
        # what tests/test_reference.py recomputes in CI: the shipped model must reproduce it
        "check": {
            "seed": CHECK_SEED,
            "clips": CHECK_CLIPS,
            "metrics": motion_scores(model, config, check_clips(config)),
        },
        "weights": WEIGHTS,
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "exported_at_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (args.out / "CARD.md").write_text(card_markdown(card))
    print((args.out / "CARD.md").read_text())


if __name__ == "__main__":
    main()
