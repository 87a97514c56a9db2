"""What an fp32 residual stream buys under bf16 autocast: the velocity's distance from fp32, and a step's time.

Under autocast the patch embedding returns bf16 and nothing upcasts, so the whole residual stream (every
block's input, each residual sum) is bf16. Upcasting the tokens after the embedder keeps it fp32 while the
matmuls stay bf16. Sampling does so (FrameCausalDiT.embed, under inference_mode); this measures both ways on
a random model (adaLN-Zero and output layers randomised, so every block contributes) on a training sequence:
the relative L2 distance of the velocity from fp32's, and the time of a training step (forward + backward).

    python benchmarks/bf16_residual.py > benchmarks/results/bf16_residual.json   # 12 layers, width 192
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from datetime import UTC, datetime

import torch

from mimo.config import load_config
from mimo.models import build_backbone
from mimo.objectives.masking import tube_mask

SEED = 0
RANDOM_STD = 0.02  # the scale of the other weights at initialisation (DiT's)


def random_model(depth: int, width: int, heads: int, frame_size: int) -> torch.nn.Module:
    """A backbone whose all-zero parameters (adaLN-Zero gates, output layer, biases) are random too."""
    config = load_config(None, [f"model.depth={depth}", f"model.width={width}", f"model.heads={heads}",
                                f"data.frame_size={frame_size}", "model.attention=sdpa"])  # fmt: skip
    torch.manual_seed(SEED)
    model = build_backbone(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, RANDOM_STD)
    return model


def upcast_tokens(module: torch.nn.Module, inputs: tuple, tokens: torch.Tensor) -> torch.Tensor:
    """Forward hook on the patch embedding: its output in fp32 (what sampling does, here in training too)."""
    return tokens.float()


def velocity(model, batch: dict, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        return model(**batch).velocity.float()


def step_seconds(model, batch: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**batch).velocity.float().square().mean().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = random_model(args.depth, args.width, args.heads, args.frame_size)
    generator = torch.Generator().manual_seed(SEED)
    video = torch.rand(args.batch, args.frames, 3, args.frame_size, args.frame_size, generator=generator) * 2 - 1
    keep = tube_mask(args.batch, model.tokens_per_frame, args.mask_ratio, generator).keep
    noise_level = torch.rand(args.batch, args.frames - 1, generator=generator)
    batch = {"noisy": video[:, 1:], "noise_level": noise_level, "clean": video[:, :-1], "noisy_start": 1, "keep": keep}
    with torch.no_grad():
        reference = velocity(model, batch, bf16=False)
        bf16 = velocity(model, batch, bf16=True)
        handle = model.patch_embed.register_forward_hook(upcast_tokens)
        upcast = velocity(model, batch, bf16=True)
        handle.remove()
    model.train()
    plain_s = step_seconds(model, batch, args.repeats)
    handle = model.patch_embed.register_forward_hook(upcast_tokens)
    upcast_s = step_seconds(model, batch, args.repeats)
    handle.remove()

    def distance(v: torch.Tensor) -> float:
        return round(float((v - reference).norm() / reference.norm()), 5)

    print(json.dumps({
        "model": {"depth": args.depth, "width": args.width, "heads": args.heads, "tokens_per_frame":
                  model.tokens_per_frame, "frames": args.frames, "batch": args.batch, "mask_ratio": args.mask_ratio},
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "velocity_relative_l2_vs_fp32": {"bf16_residual": distance(bf16), "fp32_residual": distance(upcast)},
        "training_step_s_cpu_bf16_autocast": {"bf16_residual": round(plain_s, 4), "fp32_residual": round(upcast_s, 4)},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
