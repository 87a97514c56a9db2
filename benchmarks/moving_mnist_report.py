"""Moving MNIST on a CPU beside the literature: the table of finished runs' `mimo eval` results.

    python benchmarks/moving_mnist_report.py runs/mnist-cpu-baseline runs/mnist-cpu-mimo

Reads each run's eval/eval.json (written by `mimo eval RUN`) and writes results/moving_mnist_cpu.{json,md}
and the last run's sample GIF beside them. The published rows are the standard protocol's (64x64, two digits,
10 -> 10, the 10,000 test sequences) as SimVP (Gao et al., CVPR 2022, Table 2) tabulates them; the rows run
here say their own frame size, digits and frames, and what separates the two (steps, model size, budget).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from harness import BENCHMARKS_DIR, machine_info, training_wall_seconds
from mimo.train.checkpoint import find_trained_checkpoint, load_trained_model, read_state

# Per predicted frame, on the standard test set: MSE summed over the 64x64 pixels in [0, 1], SSIM.
PUBLISHED = {
    "ConvLSTM (Shi et al. 2015)": {"mse": 103.3, "ssim": 0.707},
    "PredRNN (Wang et al. 2017)": {"mse": 56.8, "ssim": 0.867},
    "SimVP (Gao et al. 2022)": {"mse": 23.8, "ssim": 0.948},
}
COLUMNS = {"mse": ".1f", "ssim": ".3f", "psnr": ".2f", "fvd": ".0f"}  # and how each is printed


def run_row(run: Path) -> dict:
    """A finished run's evaluated metrics and what it cost."""
    results = json.loads((run / "eval" / "eval.json").read_text())
    model, config = load_trained_model(run)
    return {
        "run": str(run),
        "steps": read_state(find_trained_checkpoint(run))["step"],
        "train_wall_seconds": training_wall_seconds(run),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "setting": f"{config.data.frame_size}x{config.data.frame_size}, {config.data.num_digits} digit(s), "
        f"{config.context_frames} -> {config.data.num_frames - config.context_frames}",
        "metrics": {name: results["metrics"][name]["mean"] for name in COLUMNS if name in results["metrics"]},
        "copy_last": {name: results["copy_last"][name] for name in COLUMNS if name in results["copy_last"]},
        "num_videos": results["num_videos"],
        "samples_gif": results.get("samples_gif"),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Moving MNIST on a CPU (`configs/moving_mnist/cpu.yaml`)",
        "",
        "Per predicted frame, averaged over frames and clips: MSE summed over the frame's pixels in [0, 1] (the "
        "literature's convention), SSIM, PSNR (dB), FVD (I3D, frames upsampled to 224 px). A 32x32 frame has a "
        "quarter of the 64x64 frame's pixels, so its MSE is not comparable with the published rows: they are "
        "there for the protocol, not as a ranking.",
        "",
        "| model | setting | parameters | steps | train wall (min) | MSE | SSIM | PSNR | FVD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(metrics: dict) -> str:
        return " | ".join(format(metrics[name], spec) if name in metrics else "" for name, spec in COLUMNS.items())

    for row in rows:
        lines.append(
            f"| {row['run']} | {row['setting']}, {row['num_videos']} held-out clips | "
            f"{row['parameters'] / 1e6:.1f} M | {row['steps']} | {row['train_wall_seconds'] / 60:.0f} | "
            f"{cells(row['metrics'])} |"
        )
    copy_last = rows[0]["copy_last"]
    lines.append(f"| copy-last (the last given frame repeated) | {rows[0]['setting']} | | | | {cells(copy_last)} |")
    for name, metrics in PUBLISHED.items():
        lines.append(f"| {name} | 64x64, 2 digits, 10 -> 10, 10,000 test sequences | | | | {cells(metrics)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="evaluated runs (mimo eval RUN)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_DIR / "results")
    parser.add_argument("--name", default="moving_mnist_cpu")
    args = parser.parse_args()
    rows = [run_row(run) for run in args.runs]
    report = {"rows": rows, "published": PUBLISHED, "machine": machine_info(torch.device("cpu"))}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(rows))
    if rows[-1]["samples_gif"]:
        shutil.copy(rows[-1]["samples_gif"], args.out / f"{args.name}.gif")
    print(markdown(rows))


if __name__ == "__main__":
    main()
