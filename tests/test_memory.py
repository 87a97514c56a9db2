"""The memory census counts a training step without running it: every GPU preset fits in 80 GB per GPU
and says so in its comment, and on a CPU the census agrees with what a real forward keeps alive."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from torch._subclasses.fake_tensor import FakeTensor

from harness import run_benchmark
from mimo.config import PRECISIONS, load_config
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective
from mimo.train.memory import GB, GPU_MEMORY_GB, saved_activations, training_memory

REPO = Path(__file__).resolve().parents[1]
GPU_PRESETS = [
    *(f"configs/ucf101/{task}-{size}.yaml" for task in ("uncond", "cond") for size in ("B", "L", "XL")),
    *(f"configs/kinetics600/prediction-{size}.yaml" for size in ("B", "L", "XL")),
    "configs/bench/convergence-gpu.yaml",
]
SMALL_CPU_STEP = (
    "model.preset=tiny",
    "data.frame_size=32",
    "model.patch_size=2",
    "data.num_frames=6",
    "train.batch_size=4",
    "model.attention=sdpa",
)
RSS_AGREEMENT = 0.25  # census within 25 % of the resident memory a real forward adds (measured: 2 %)

RSS_OF_A_FORWARD = """
import ctypes, gc, sys, torch
from mimo.config import load_config
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective

def resident():
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))

config = load_config(None, sys.argv[1:])
torch.manual_seed(0)
objective = TrainingObjective(config, build_backbone(config)).train()
video = torch.rand(config.train.batch_size, config.data.num_frames, 3, 32, 32) * 2 - 1
gc.collect()
before = resident()
losses = objective(video, None, torch.Generator().manual_seed(0))
print(resident() - before)
"""


def test_every_gpu_preset_fits_in_80_gb_per_gpu_and_states_its_figure(tmp_path):
    payload = run_benchmark("memory", [*(str(REPO / p) for p in GPU_PRESETS), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "memory.json").read_text())["results"] == payload["results"]
    for path, row in payload["results"].items():
        assert row["fits_80gb"] and row["peak_gb"] < GPU_MEMORY_GB, (path, row)
        comment = re.search(r"Memory census \(`mimo bench memory`\):[\s#]+(\d+) GB per GPU", Path(path).read_text())
        assert comment is not None, f"{path} does not state its memory census in a comment"
        assert int(comment.group(1)) == round(row["peak_gb"]), (path, row["peak_gb"])


def test_census_of_fake_tensors_equals_the_saved_tensors_of_a_real_forward():
    config = load_config(None, list(SMALL_CPU_STEP))
    fake, real = saved_activations(config), saved_activations(config, fake=False)
    assert fake.by_block == real.by_block and fake.largest == real.largest
    assert len(fake.by_block) == config.model.size()[0] + 1  # every block and the rest


def test_census_agrees_with_the_resident_memory_a_real_forward_adds():
    config = load_config(None, list(SMALL_CPU_STEP))
    census = sum(saved_activations(config).by_block.values())
    measured = int(
        subprocess.run(
            [sys.executable, "-c", RSS_OF_A_FORWARD, *SMALL_CPU_STEP],
            capture_output=True,
            text=True,
            check=True,
            env={"OMP_NUM_THREADS": "1", "PATH": ""},
        ).stdout
    )
    assert abs(census - measured) < RSS_AGREEMENT * measured, (census / GB, measured / GB)


def test_checkpointing_and_fsdp_shrink_the_census():
    config = load_config(REPO / "configs/ucf101/uncond-XL.yaml", ["train.batch_size=2"])
    plain = training_memory(config, world_size=1)
    sharded = training_memory(config, world_size=8)
    assert sharded.static < plain.static / 4 and sharded.fsdp_buffers > 0
    overrides = ["train.batch_size=2", "train.activation_checkpointing=true"]
    checkpointed = training_memory(load_config(REPO / "configs/ucf101/uncond-XL.yaml", overrides), world_size=8)
    assert checkpointed.activations < sharded.activations / 3


def test_bf16_autocast_saves_less_than_fp32():
    fp32, bf16 = (training_memory(load_config(None, [*SMALL_CPU_STEP, f"train.precision={p}"])) for p in PRECISIONS)
    assert bf16.activations < 0.75 * fp32.activations


def test_census_leaves_no_fake_tensor_behind_for_real_runs():
    config = load_config(None, list(SMALL_CPU_STEP))
    training_memory(config)
    layout = TrainingObjective(config, build_backbone(config)).layout()
    assert not isinstance(layout.dense_mask(), FakeTensor)
