"""Data-parallel training under torchrun (gloo on CPU) is the same training as one process accumulating.

Two ranks × batch B see the clips and randomness that one process with batch B and 2 accumulation
steps sees (global micro-batch r·A + m), so after the same number of steps the weights agree up to
float summation order, with DDP and with FSDP2; a two-rank checkpoint resumes in one process.

Run as a script under torchrun, this file is the worker of those tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from harness import flex_backward_on_cpu
from mimo.config import load_config
from mimo.data.order import ResumableShuffle
from mimo.train.checkpoint import find_checkpoint, load_tensors, read_state
from mimo.train.logger import read_metrics
from mimo.train.trainer import Trainer, micro_batch_index, train

BATCH = 2
MICRO = ("model.preset=micro", "data.frame_size=16", "model.patch_size=4", "data.num_frames=4")
RUN = (
    *MICRO,
    f"train.batch_size={BATCH}",
    "data.num_clips=10",  # not a multiple of the global batch (4): step 3 straddles two epochs
    "train.lr=1e-3",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.tensorboard=false",
    "sample.steps=1",
)
RANKS = 2
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"  # the harness, which lifts FlexAttention's CPU guard
WEIGHT_ATOL = 2e-6  # float summation order differs between layouts; one step moves weights by ~lr = 1e-3
FLEX_WEIGHT_ATOL = 1e-5  # and the attention kernel: Adam turns rounding in near-zero gradients into 1 % of a step
LOSS_RTOL = 1e-5
BF16_LOSS_RTOL = 0.05  # bf16 keeps 8 bits of mantissa


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one intra-op thread


def _config(out_dir: Path, *overrides: str):
    return load_config(None, [*RUN, f"train.out_dir={out_dir}", *overrides])


def test_rank_shards_are_the_micro_batches_of_one_process():
    accumulation, clips = 2, 12
    per_rank = BATCH * accumulation
    single = ResumableShuffle(clips, seed=3, start=5, clips_per_rank=per_rank * RANKS)
    ranks = [ResumableShuffle(clips, 3, 5, rank, RANKS, per_rank) for rank in range(RANKS)]
    stream, shards = iter(single), [iter(r) for r in ranks]
    for _ in range(4):  # steps, crossing epoch boundaries
        global_batch = [next(stream) for _ in range(per_rank * RANKS)]
        for rank, shard in enumerate(shards):
            mine = [next(shard) for _ in range(per_rank)]
            for micro in range(accumulation):
                index = micro_batch_index(rank, micro, accumulation)
                assert mine[micro * BATCH : (micro + 1) * BATCH] == global_batch[index * BATCH : (index + 1) * BATCH]


def test_stream_resumes_at_any_position_and_visits_every_clip_once_per_epoch():
    clips = 7
    whole = iter(ResumableShuffle(clips, seed=1))
    head = [next(whole) for _ in range(3 * clips)]
    assert all(sorted(head[e * clips : (e + 1) * clips]) == list(range(clips)) for e in range(3))
    resumed = iter(ResumableShuffle(clips, seed=1, start=10))
    assert [next(resumed) for _ in range(11)] == head[10:]


def _run_torchrun(out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(BENCHMARKS))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}"]
    done = subprocess.run([*command, __file__, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collectives = json.loads((out / "collectives.json").read_text())
    collectives["stopped"] = [json.loads((out / f"stopped_{rank}.json").read_text()) for rank in range(RANKS)]
    return collectives


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two-rank DDP and FSDP runs of 2 steps (one torchrun), and one process accumulating 2 micro-batches."""
    root = tmp_path_factory.mktemp("distributed")
    collectives = _run_torchrun(root)
    reference = train(_config(root / "reference", "train.grad_accumulation=2", "train.steps=4"))
    return {"root": root, "collectives": collectives, "reference": reference.run_dir}


def _tensors(run_dir: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors")


def _assert_same_weights(run_dir: Path, reference: Path, step: int, atol: float = WEIGHT_ATOL) -> None:
    for name in ("model", "ema"):
        ours, theirs = _tensors(run_dir, step, name), _tensors(reference, step, name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=atol, msg=f"{name} {key}")


def test_weights_move_far_more_than_the_tolerance(runs):
    """Guards the comparisons below against passing because nothing was trained."""
    before, after = _tensors(runs["reference"], 2, "model"), _tensors(runs["reference"], 4, "model")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 100 * WEIGHT_ATOL


@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "ddp-flex", "fsdp-flex"])
def test_two_ranks_match_one_process_with_the_same_global_batch(runs, parallel):
    """Also under block-sparse FlexAttention (`-flex`, torch's CPU guard lifted in the workers) against the
    one-process SDPA reference: what a multi-GPU run executes."""
    run_dir = runs["root"] / parallel
    _assert_same_weights(run_dir, runs["reference"], 2, FLEX_WEIGHT_ATOL if "flex" in parallel else WEIGHT_ATOL)
    state = read_state(find_checkpoint(run_dir))
    assert (state["world_size"], state["global_batch"], state["clips_seen"]) == (RANKS, 2 * BATCH, 4 * BATCH)
    ours, theirs = read_metrics(run_dir), read_metrics(runs["reference"])[:2]
    for a, b in zip(ours, theirs, strict=True):  # losses are averaged over ranks before logging
        for key in ("loss", "diffusion", "mask", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL)
    assert (run_dir / "samples" / "step_00000002.gif").is_file()


def test_fsdp_in_bf16_gathers_bf16_weights_and_trains_like_fp32(runs):
    """MixedPrecisionPolicy (bf16 all-gather and compute, fp32 reduce-scatter): the first step's losses
    agree with the fp32 run to bf16's precision, and the checkpoint keeps fp32 weights."""
    bf16, fp32 = read_metrics(runs["root"] / "fsdp-bf16")[0], read_metrics(runs["root"] / "fsdp")[0]
    for key in ("loss", "diffusion", "mask"):
        assert bf16[key] == pytest.approx(fp32[key], rel=BF16_LOSS_RTOL)
    assert bf16["mask"] != fp32["mask"]  # bf16 did run (an adaLN-Zero model's first diffusion loss is exact)
    assert all(t.dtype == torch.float32 for t in _tensors(runs["root"] / "fsdp-bf16", 1, "model").values())


def test_two_rank_checkpoint_resumes_in_one_process(runs):
    run_dir = runs["root"] / "ddp"
    result = train(_config(run_dir, "train.grad_accumulation=2", "train.steps=4"))
    assert result.step == 4
    _assert_same_weights(run_dir, runs["reference"], 4)


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(runs):
    assert runs["collectives"]["stopped"] == [[2.0, 1.0], [2.0, 1.0]]  # (step, interrupted) of each rank
    assert find_checkpoint(runs["root"] / "signal").name == "step_00000002"


def test_metrics_reductions_over_ranks(runs):
    collectives = runs["collectives"]
    assert collectives["mean"] == {"a": 0.5, "b": 3.0}
    assert collectives["any"] == [True, False]


def _signal_one_rank(out: Path, rank: int) -> list[float]:
    """SIGTERM reaches rank 1 only, during step 2: both ranks must still stop after the same step."""
    trainer = Trainer(_config(out, "train.steps=50", "train.checkpoint_every=0"))
    step = trainer.train_step

    def signalled(batches):
        if rank == 1 and trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(batches)

    trainer.train_step = signalled
    result = trainer.train()
    return [float(result.step), float(result.interrupted)]


def _worker(out: Path) -> None:
    """Under torchrun: DDP for 2 steps; FSDP for 1 step, resumed for 1 more; both again under FlexAttention; a
    signal; the reduction helpers."""
    from mimo.train.distributed import any_rank, mean_over_ranks

    dist.init_process_group("gloo")  # kept across the runs; train() leaves a group it did not create
    rank = dist.get_rank()
    train(_config(out / "ddp", "train.parallel=ddp", "train.steps=2"))
    for steps in (1, 2):
        train(_config(out / "fsdp", "train.parallel=fsdp", f"train.steps={steps}"))
    train(_config(out / "fsdp-bf16", "train.parallel=fsdp", "train.precision=bf16", "train.steps=1"))
    with flex_backward_on_cpu():
        train(_config(out / "ddp-flex", "train.parallel=ddp", "train.steps=2", "model.attention=flex"))
        for steps in (1, 2):
            train(_config(out / "fsdp-flex", "train.parallel=fsdp", f"train.steps={steps}", "model.attention=flex"))
    (out / f"stopped_{rank}.json").write_text(json.dumps(_signal_one_rank(out / "signal", rank)))
    mean = mean_over_ranks({"a": float(rank), "b": 3.0})
    flags = [any_rank(rank == 1), any_rank(False)]
    if rank == 0:
        results = {"mean": mean, "any": flags}
        (out / "collectives.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
