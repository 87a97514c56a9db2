"""Is video decoding fast enough that a training step never waits for it?

Writes synthetic videos shaped like the paper's data, reads random clips through
`VideoFolderDataset` with 0 and 2 DataLoader workers, and compares clips/s with what training
consumes (batch size / step time). Profiles:
  ucf101-like    MPEG-4 Part 2 in AVI, 320x240, 25 fps (the format UCF-101 ships in)
  kinetics-like  H.264 in MP4, 640x360, 25 fps, keyframe every 2 s (typical YouTube encodes)
The videos carry a moving texture plus noise so the codecs do real work.

The default budget, 32 clips per 0.25 s step, is an assumption for one GPU training a B-size model
on 16-frame 128 px clips; pass the trainer's measured numbers with --batch-size/--step-seconds.

    python benchmarks/bench_decode.py [--videos 12] [--clips 96]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from mimo.data.media import write_video
from mimo.data.video_folder import ClipSampling, VideoFolderDataset, folder_records

PROFILES = {
    "ucf101-like": {"codec": "mpeg4", "suffix": ".avi", "width": 320, "height": 240, "gop": 12},
    "kinetics-like": {"codec": "libx264", "suffix": ".mp4", "width": 640, "height": 360, "gop": 50},
}
FPS = 25


def synthetic_video(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a texture drifting 2 px per frame, plus per-frame noise."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 8 + 1, (width + 2 * num_frames) // 8 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(8, axis=0).repeat(8, axis=1)[:height]
    frames = np.stack([texture[:, 2 * t : 2 * t + width] for t in range(num_frames)]).astype(np.int16)
    frames += rng.integers(-6, 7, frames.shape, dtype=np.int16)
    return frames.clip(0, 255).astype(np.uint8)


def clips_per_second(dataset: VideoFolderDataset, num_clips: int, workers: int, batch: int = 8) -> dict[str, float]:
    """Throughput after the first batch (worker start-up is reported apart).

    With no workers, the CPU time per clip is reported too: unlike wall time it does not depend
    on other processes sharing the cores, so it gives the clips/s one free core sustains.
    """
    sampler = RandomSampler(dataset, replacement=True, num_samples=num_clips)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first, first_cpu = time.perf_counter(), time.process_time()
    counted = sum(len(b["label"]) for b in batches)
    end, end_cpu = time.perf_counter(), time.process_time()
    result = {"clips_per_s": round(counted / (end - first), 1), "startup_s": round(first - start, 2)}
    if workers == 0:
        result["cpu_ms_per_clip"] = round(1000 * (end_cpu - first_cpu) / counted, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--video-frames", type=int, default=100)
    parser.add_argument("--clips", type=int, default=96, help="clips read per measurement")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts measured besides 0")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per training step (one GPU)")
    parser.add_argument("--step-seconds", type=float, default=0.25, help="time of one training step")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as DataLoader workers do; else the 0-worker run spends CPU on idle OpenMP threads

    clips = ClipSampling(num_frames=args.num_frames, frame_stride=args.frame_stride, size=args.size)
    needed = args.batch_size / args.step_seconds
    load_before = round(os.getloadavg()[0], 2)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, profile in PROFILES.items():
            root = Path(folder) / name
            root.mkdir()
            for i in range(args.videos):
                frames = synthetic_video(args.video_frames, profile["height"], profile["width"], seed=i)
                write_video(root / f"{i}{profile['suffix']}", frames, FPS, profile["codec"], profile["gop"])
            dataset = VideoFolderDataset(folder_records(root), clips)
            by_workers = {str(w): clips_per_second(dataset, args.clips, w) for w in sorted({0, *args.workers})}
            cpu_ms = by_workers["0"]["cpu_ms_per_clip"]
            results[name] = {
                **{key: profile[key] for key in ("codec", "width", "height", "gop")},
                "workers": by_workers,
                "cpu_ms_per_clip": cpu_ms,
                "clips_per_s_per_core": round(1000 / cpu_ms, 1),
                "cores_needed": math.ceil(needed * cpu_ms / 1000),
            }
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "load_average_1min_before": load_before,
                "clip": {"num_frames": args.num_frames, "frame_stride": args.frame_stride, "size": args.size},
                "budget": {
                    "batch_size": args.batch_size,
                    "step_seconds": args.step_seconds,
                    "clips_per_s_needed": round(needed, 1),
                },
                "profiles": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
