"""FVD of a set of videos against itself is ~0 and grows with added noise: the sanity curve of the I3D port.

    python benchmarks/fvd_noise.py [--videos 48] [--noise 0 0.05 0.1 0.2 0.4]

Real set: built-in moving-shapes clips (16 frames, 64 px, upsampled to 224 px by the I3D protocol).
Each noisy set is the *same* clips plus Gaussian noise of the given std (pixels in [-1, 1], clipped),
so the curve isolates the metric's response to degradation. A second curve uses held-out clips of
another seed with the same noise, so the value at 0 shows the sampling floor of FVD at this set size.
Writes fvd_noise.json and fvd_noise.png with the machine they ran on to --out (default runs/bench-results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from harness import CpuShare, default_results_dir, machine_info
from mimo.data import stack_clips
from mimo.data.media import plot_curves
from mimo.data.synthetic import MovingShapes
from mimo.metrics.frechet import frechet_distance_from_statistics
from mimo.metrics.fvd import compute_fvd, extract_feature_statistics
from mimo.metrics.i3d import load_i3d


def clips(count: int, seed: int) -> torch.Tensor:
    dataset = MovingShapes(count, frame_size=64, num_frames=16, seed=seed)
    return stack_clips(dataset, count)["video"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.4])
    parser.add_argument(
        "--out", type=Path, default=default_results_dir(), help="results folder (published: benchmarks/results)"
    )
    args = parser.parse_args()
    share = CpuShare()
    extractor = load_i3d()
    real, other = clips(args.videos, seed=0), clips(args.videos, seed=1)
    real_stats = extract_feature_statistics(real, extractor, description="real")
    generator = torch.Generator().manual_seed(0)
    same, held_out = [], []
    for std in args.noise:
        noise = torch.randn(real.shape, generator=generator) * std
        same_stats = extract_feature_statistics((real + noise).clamp(-1, 1), extractor, description=f"same+{std}")
        other_stats = extract_feature_statistics((other + noise).clamp(-1, 1), extractor, description=f"other+{std}")
        same.append(frechet_distance_from_statistics(real_stats, same_stats))
        held_out.append(frechet_distance_from_statistics(real_stats, other_stats))
        print(json.dumps({"noise_std": std, "fvd_same_clips": same[-1], "fvd_other_clips": held_out[-1]}), flush=True)
    assert compute_fvd(real_stats, real_stats) < 1e-6, "a set against itself must give 0"
    payload = {
        "machine": machine_info(torch.device("cpu")),
        "timing": share.report(),
        "videos": args.videos,
        "noise_std": args.noise,
        "fvd_same_clips_plus_noise": same,
        "fvd_other_clips_plus_noise": held_out,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fvd_noise.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot_curves(
        {"same clips + noise": (args.noise, same), "other clips + noise": (args.noise, held_out)},
        args.out / "fvd_noise.png",
        xlabel="noise std (pixels in [-1, 1])",
        ylabel="FVD (I3D, Kinetics-400)",
        title=f"FVD against noise, {args.videos} videos of 16 frames",
        log_y=False,
    )


if __name__ == "__main__":
    main()
