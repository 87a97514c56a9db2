"""One prepared GPU check (at most 8 minutes on one H100/H200): the figures issue 14 needs from a device.

    python benchmarks/gpu_check.py                      # on a GPU: writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny  # every part for real at tiny shapes (~30 s), see below

(a) attention forward + backward, dense-mask SDPA against block-sparse FlexAttention, at 16 frames x 256
    tokens and 64 frames x 128 tokens (clean + noisy CTF sequences, DiT-B heads);
(b) one training step of configs/ucf101/uncond-B.yaml at its batch per GPU, compile off and on, with
    torch.cuda.max_memory_allocated beside the memory census;
(c) KV-cached sampling, seconds per frame, in bf16 and fp32;
(d) MFU of (b), executed and useful FLOPs against the datasheet bf16 peak and a measured GEMM peak.
Each part is skipped (and says so) once the time budget is spent, so the JSON is always written.

On a CPU every part runs the code a GPU runs, with two stand-ins: FlexAttention's backward in (a) runs with
torch's CPU guard lifted (harness.flex_backward_on_cpu: its reference math, not a kernel), and the compiled
step of (b) uses the aot_eager backend (dynamo's graph capture and AOT autograd, without inductor's C++ build,
which takes ~2 minutes on a CPU). The figures of a CPU run mean nothing; that it ran end to end does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from harness import flex_backward_on_cpu
from mimo.config import Config, SampleConfig, load_config, with_overrides
from mimo.devices import datasheet_bf16_peak
from mimo.diffusion.sampler import sample_video
from mimo.models import build_backbone
from mimo.models.attention import FrameLayout, attend, uses_flex
from mimo.train.distributed import transformer_blocks
from mimo.train.memory import GB, training_memory
from mimo.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "ucf101" / "uncond-B.yaml"
BUDGET_S = 8 * 60
HEADS, HEAD_DIM = 12, 64  # DiT-B
ATTENTION_SHAPES = {"16x256": (16, 256, 4), "64x128": (64, 128, 1)}  # frames, tokens per frame, batch
GEMM_SIZE = 8192
SAMPLING = {"frames": 4, "context": 1, "steps": 50, "batch": 8}
CPU_COMPILE_BACKEND = "aot_eager"  # inductor would build C++ for ~2 minutes (measured: 116 s, tiny preset)
TINY = {
    "attention": {"4x16": (4, 16, 1)},
    "preset": ["model.preset=micro", "data.frame_size=8", "model.patch_size=2", "data.num_frames=4"],
    "gemm": 256,
    "sampling": {"frames": 3, "context": 1, "steps": 2, "batch": 2},
    "repeats": 1,
}


class RandomClips(Dataset):
    """Clips of the preset's shape (the check needs no dataset on disk; the cost does not depend on the data)."""

    def __init__(self, config: Config, count: int):
        data = config.data
        generator = torch.Generator().manual_seed(0)
        shape = (count, data.num_frames, data.channels, data.frame_size, data.frame_size)
        self.videos = torch.randn(shape, generator=generator).clamp(-3, 3)
        self.labels = torch.randint(0, max(1, data.num_classes), (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"video": self.videos[index], "label": self.labels[index]}


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: compilation, kernel selection, allocator
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_check(device: torch.device, shapes: dict, repeats: int) -> dict[str, Any]:
    """(a) forward + backward of one attention call, dense-mask SDPA against block-sparse FlexAttention."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {}
    for name, (frames, tokens, batch) in shapes.items():
        layout = FrameLayout(frames - 1, tokens, frames, tokens, 0)
        shape = (batch, HEADS, layout.length, HEAD_DIM)
        qkv = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
        row: dict[str, Any] = {"tokens": layout.length, "batch": batch}
        masks = {"sdpa_dense_mask": layout.dense_mask(device), "flex_block_mask": layout.block_mask(device)}
        for kind, mask in masks.items():

            def call(mask=mask, qkv=qkv) -> None:
                attend(*qkv, mask).sum().backward()

            with flex_backward_on_cpu() if device.type == "cpu" else contextlib.nullcontext():
                row[f"{kind}_ms"] = round(1000 * _median_seconds(call, device, repeats), 3)
        row["speedup"] = round(row["sdpa_dense_mask_ms"] / row["flex_block_mask_ms"], 2)
        out[name] = row
    return out


def training_check(config: Config, device: torch.device, compile_: bool, repeats: int, scratch: Path) -> dict[str, Any]:
    """(b) one optimiser step of the preset at its batch per GPU (all its accumulation micro-steps)."""
    train = config.train
    overrides = [
        f"train.compile={str(compile_ and device.type == 'cuda').lower()}",
        f"train.out_dir={scratch}",
        "train.tensorboard=false",
        "data.num_workers=0",  # clips already in memory
    ]
    run = with_overrides(config, overrides)
    clips_per_step = train.batch_size * train.grad_accumulation
    trainer = Trainer(run, dataset=RandomClips(run, clips_per_step))  # the data stream cycles over them
    if compile_ and device.type != "cuda":  # the blocks train.compile compiles, with a backend a CPU builds fast
        for block in transformer_blocks(trainer.objective):
            block.compile(backend=CPU_COMPILE_BACKEND)
    step = functools.partial(trainer.train_step, trainer.batches())

    started = time.perf_counter()
    step()  # warm-up (and compilation)
    first_step_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _median_seconds(step, device, repeats)
    row = {"compile": compile_, "first_step_s": round(first_step_s, 2), "step_s": round(seconds, 4)}
    if device.type == "cuda":
        row["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 2)
    flops = trainer.objective.training_flops(train.batch_size)
    micro_steps = train.grad_accumulation
    row["attention"] = "flex" if uses_flex(run.model.attention, device) else "sdpa"
    row["executed_tflop"] = round(micro_steps * flops.executed(row["attention"] == "flex") / 1e12, 3)
    row["useful_tflop"] = round(micro_steps * flops.useful / 1e12, 3)
    del trainer, step  # the compiled run that follows needs the memory
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def gemm_peak(device: torch.device, size: int, repeats: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return 2 * size**3 / _median_seconds(lambda: a @ b, device, repeats)


def sampling_check(config: Config, device: torch.device, settings: dict, repeats: int) -> dict[str, Any]:
    """(c) KV-cached sampling in bf16 and fp32: seconds per generated frame (untrained weights: same cost)."""
    torch.manual_seed(0)
    model = build_backbone(config).to(device).eval()
    size = config.data.frame_size
    context = torch.randn(settings["batch"], settings["context"], config.data.channels, size, size, device=device)
    generated = settings["frames"] - settings["context"]
    out = {}
    for precision in ("bf16", "fp32"):

        def sample(precision=precision) -> None:
            options = SampleConfig(steps=settings["steps"], precision=precision)
            generator = torch.Generator().manual_seed(0)
            sample_video(model, settings["frames"], options, context=context, generator=generator)

        seconds = _median_seconds(sample, device, repeats)
        out[precision] = {"seconds_per_frame": round(seconds / generated, 4), "batch": settings["batch"]}
    out["bf16_speedup"] = round(out["fp32"]["seconds_per_frame"] / out["bf16"]["seconds_per_frame"], 2)
    out.update(ode_steps=settings["steps"], context_frames=settings["context"], generated_frames=generated)
    return out


def mfu_row(step: dict[str, Any], gemm_peak: float, datasheet: float | None) -> dict[str, Any]:
    """(d) executed and useful FLOP/s of a timed step, against the datasheet bf16 peak (MFU) and the GEMM peak."""
    executed, useful = (step[key] * 1e12 / step["step_s"] for key in ("executed_tflop", "useful_tflop"))
    row = {
        "compile": step["compile"],
        "executed_tflops": round(executed / 1e12, 2),
        "useful_tflops": round(useful / 1e12, 2),
    }
    if datasheet is not None:
        row.update(mfu_executed=round(executed / datasheet, 4), mfu_useful=round(useful / datasheet, 4))
    return row | {"useful_of_gemm_peak": round(useful / gemm_peak, 4)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: every part runs, figures mean nothing")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    args = parser.parse_args(argv)
    tiny, device = args.tiny, torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --tiny on a CPU, or on a GPU machine")
    repeats = TINY["repeats"] if tiny else args.repeats
    config = load_config(PRESET, TINY["preset"] if tiny else [])
    budget = Budget(args.budget_s)
    scratch = Path(tempfile.mkdtemp(prefix="mimo-gpu-check-"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tiny": tiny,
        "preset": str(PRESET.relative_to(REPO)),
        "batch_per_gpu": f"{config.train.batch_size} x {config.train.grad_accumulation} accumulation",
        "memory_census_gb": round(training_memory(config).peak / GB, 1),
    }
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("attention", lambda: attention_check(device, TINY["attention"] if tiny else ATTENTION_SHAPES, repeats)),
        ("training_step", lambda: training_check(config, device, False, repeats, scratch)),
        ("training_step_compiled", lambda: training_check(config, device, True, repeats, scratch)),
        ("sampling", lambda: sampling_check(config, device, TINY["sampling"] if tiny else SAMPLING, repeats)),
    ]
    for key, run in parts:
        report[key] = run() if budget.left() > 0 else {"skipped": f"the {args.budget_s:.0f} s budget was spent"}
    steps = [report[key] for key in ("training_step", "training_step_compiled") if "step_s" in report.get(key, {})]
    gemm = gemm_peak(device, TINY["gemm"] if tiny else GEMM_SIZE, repeats)
    datasheet = datasheet_bf16_peak(name)
    report["mfu"] = {
        "gemm_peak_tflops": round(gemm / 1e12, 2),
        "datasheet_bf16_tflops": None if datasheet is None else datasheet / 1e12,
        "by_step": [mfu_row(row, gemm, datasheet) for row in steps],
    }
    report["wall_s"] = round(args.budget_s - budget.left(), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_check{'' if device.type == 'cuda' else '-' + device.type}{'-tiny' if tiny else ''}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
