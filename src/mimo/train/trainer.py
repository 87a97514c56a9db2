"""The training loop: CTF + MiMo objective, AdamW, EMA, exact resume, logs, sample GIFs, safe stops.

Every random choice of a step (noise levels, noise, label dropout, tube mask) comes from a
generator seeded by (seed, step, rank, micro-step), and the data order is a function of the
step, so a resumed run repeats the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mimo.config import Config, from_dict
from mimo.data import build_dataset
from mimo.data.order import ResumableShuffle
from mimo.diffusion.sampler import sample_for_task
from mimo.media import plot_curves, save_gif, video_grid
from mimo.models import build_backbone
from mimo.models.dit import FrameCausalDiT
from mimo.objectives.objective import TrainingObjective
from mimo.train.checkpoint import (
    check_compatible,
    find_checkpoint,
    load_module,
    load_tensors,
    optimizer_from_tensors,
    read_state,
    save_checkpoint,
)
from mimo.train.distributed import DistInfo, barrier, init_distributed
from mimo.train.ema import EMA
from mimo.train.logger import MetricsLogger, read_metrics

SAMPLE_VIDEOS = 4  # clips shown in the periodic sample GIFs


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the last checkpoint on disk is still good."""


def step_generator(seed: int, step: int, rank: int = 0, micro: int = 0) -> torch.Generator:
    """The CPU generator of one micro-step: a function of its coordinates, so resuming needs no RNG state."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 4099 + rank) * 64 + micro)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: dict[str, float]
    checkpoint: Path | None
    interrupted: bool = False
    seconds: float = 0.0


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


class Trainer:
    def __init__(self, config: Config, dist: DistInfo | None = None, dataset: Dataset | None = None):
        self.config = config
        self.dist = dist or init_distributed()
        self.run_dir = Path(config.train.out_dir)
        self.device = self.dist.device
        torch.manual_seed(config.train.seed)  # initial weights
        self.backbone = build_backbone(config).to(self.device)
        self.backbone.activation_checkpointing = config.train.activation_checkpointing
        self.objective = TrainingObjective(config, self.backbone).to(self.device)
        self.ema = EMA(self.backbone, config.train.ema_decay, config.train.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.objective.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
        self.dataset = dataset if dataset is not None else build_dataset(config.data, "train")
        self.step = 0
        self.stop_requested = False
        self.logger = MetricsLogger(self.run_dir, self.dist.is_main, config.train.tensorboard)

    # ----- state -------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint on rank 0 (the others wait), never with non-finite weights."""
        path = None
        if self.dist.is_main:
            params = list(self.objective.parameters())
            if not all(torch.isfinite(p).all() for p in params):
                raise NonFiniteLossError(f"refusing to checkpoint non-finite weights at step {self.step}")
            path = save_checkpoint(
                self.run_dir,
                self.step,
                {"model": self.objective.state_dict(), "ema": self.ema.module.state_dict()},
                self.optimizer,
                {"config": self.config.to_dict(), "world_size": self.dist.world_size},
                keep=self.config.train.keep_checkpoints,
            )
        barrier()
        return path

    def resume(self) -> bool:
        checkpoint = find_checkpoint(self.run_dir)
        if checkpoint is None:
            return False
        state = read_state(checkpoint)
        load_module(self.objective, checkpoint, "model")
        load_module(self.ema.module, checkpoint, "ema")
        optimizer_state = optimizer_from_tensors(load_tensors(checkpoint / "optimizer.safetensors"), state["optimizer"])
        self.optimizer.load_state_dict(optimizer_state)
        self.step = int(state["step"])
        self.logger.truncate_after(self.step)
        if self.dist.is_main:
            tqdm.write(f"resumed from {checkpoint} at step {self.step}")
        return True

    # ----- data --------------------------------------------------------------------------------
    def batches(self):
        train = self.config.train
        per_rank_position = self.step * train.batch_size * train.grad_accumulation
        sampler = ResumableShuffle(
            len(self.dataset), self.config.data.seed, per_rank_position, self.dist.rank, self.dist.world_size
        )
        loader = DataLoader(
            self.dataset,
            batch_size=train.batch_size,
            sampler=sampler,
            num_workers=self.config.data.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.config.data.num_workers > 0,
        )
        return iter(loader)

    # ----- the loop ----------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM ask for a checkpoint at the next step boundary instead of killing the run."""

        def request_stop(signum, frame):
            self.stop_requested = True
            tqdm.write(f"signal {signum} received: saving a checkpoint at the end of this step")

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
                previous[sig] = signal.signal(sig, request_stop)
        return previous

    def train_step(self, batches) -> dict[str, float] | None:
        """One optimiser step over grad_accumulation micro-batches; None when a non-finite step was skipped."""
        train = self.config.train
        self.objective.train()
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr * _lr_factor(self.step, train.warmup_steps)
        totals: dict[str, float] = {}
        for micro in range(train.grad_accumulation):
            batch = next(batches)
            video = batch["video"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device) if "label" in batch else None
            generator = step_generator(train.seed, self.step, self.dist.rank, micro)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16"):
                losses = self.objective(video, labels, generator)
            (losses["loss"] / train.grad_accumulation).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.item() / train.grad_accumulation
        grad_norm = nn.utils.clip_grad_norm_(
            self.objective.parameters(), train.grad_clip if train.grad_clip > 0 else math.inf
        ).item()
        if not all(math.isfinite(v) for v in totals.values()) or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            message = f"non-finite loss or gradient at step {self.step}: {totals}, grad norm {grad_norm}"
            if train.on_nonfinite == "stop":
                raise NonFiniteLossError(message + "; the last checkpoint is intact (train.on_nonfinite=skip skips)")
            tqdm.write("skipping: " + message)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.backbone, self.step)
        return dict(totals, grad_norm=grad_norm)

    def train(self) -> TrainResult:
        config, train = self.config, self.config.train
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if train.resume:
            self.resume()
        previous_handlers = self._install_signal_handlers()
        batches = self.batches()
        checkpoint, last, interval = None, {}, {}
        started = time.perf_counter()
        clips_per_step = train.batch_size * train.grad_accumulation * self.dist.world_size
        bar = tqdm(total=train.steps, initial=self.step, disable=not self.dist.is_main, desc="train", unit="step")
        tick = time.perf_counter()
        try:
            while self.step < train.steps and not self.stop_requested:
                losses = self.train_step(batches)
                self.step += 1
                bar.update(1)
                if losses is None:
                    continue
                last = losses
                for name, value in losses.items():
                    interval.setdefault(name, []).append(value)
                if train.log_every and self.step % train.log_every == 0:
                    elapsed = time.perf_counter() - tick
                    values = {name: sum(v) / len(v) for name, v in interval.items()}
                    values["lr"] = self.optimizer.param_groups[0]["lr"]
                    values["clips_per_second"] = clips_per_step * len(interval["loss"]) / max(elapsed, 1e-9)
                    self.logger.log(self.step, values)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "diffusion", "mask")})
                    interval, tick = {}, time.perf_counter()
                if train.sample_every and self.step % train.sample_every == 0:
                    self.write_samples()
                if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                    checkpoint = self.save()
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        interrupted = self.stop_requested
        if self.step > 0 and (checkpoint is None or checkpoint.name != f"step_{self.step:08d}"):
            checkpoint = self.save()
        if not interrupted and self.dist.is_main and self.step > 0:
            self.write_samples()
            self.plot_losses()
        self.logger.close()
        return TrainResult(self.run_dir, self.step, last, checkpoint, interrupted, time.perf_counter() - started)

    # ----- pictures ----------------------------------------------------------------------------
    def write_samples(self) -> Path | None:
        """GIF of held-out clips (top row) and EMA samples with the same context or labels (bottom row)."""
        if not self.dist.is_main:
            return None
        eval_set = build_dataset(self.config.data, "eval", num_clips=SAMPLE_VIDEOS)
        items = [eval_set[i] for i in range(SAMPLE_VIDEOS)]
        video = torch.stack([item["video"] for item in items]).to(self.device)
        labels = torch.stack([item["label"] for item in items]).to(self.device)
        samples = sample_for_task(self.ema.module, self.config, video, labels, torch.Generator().manual_seed(0))
        path = self.run_dir / "samples" / f"step_{self.step:08d}.gif"
        if self.config.data.channels in (1, 3):
            save_gif(video_grid([video.cpu(), samples.cpu()], upscale=2), path)
        return path

    def plot_losses(self) -> Path | None:
        records = read_metrics(self.run_dir)
        if not records:
            return None
        curves = {}
        for name in ("loss", "diffusion", "mask"):
            points = [(r["step"], r[name]) for r in records if name in r]
            if points:
                curves[name] = tuple(zip(*points, strict=True))
        return plot_curves(curves, self.run_dir / "loss.png", title="training loss")


def train(config: Config, dataset: Dataset | None = None) -> TrainResult:
    """Train as `config` says (a library entry point: the CLI and notebooks call this)."""
    return Trainer(config, dataset=dataset).train()


def load_trained_model(path: str | Path, use_ema: bool = True, device: str = "cpu") -> tuple[FrameCausalDiT, Config]:
    """The backbone of a run folder, checkpoint or exported model, in eval mode, and its config."""
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint found at {path}; give a run folder (out_dir) or a checkpoint folder")
    state = read_state(checkpoint)
    config = from_dict(state["config"])
    model = build_backbone(config)
    if (checkpoint / "ema.safetensors").is_file() and use_ema:
        load_module(model, checkpoint, "ema")
    elif (checkpoint / "model.safetensors").is_file():
        tensors = load_tensors(checkpoint / "model.safetensors")
        backbone = {k.removeprefix("backbone."): v for k, v in tensors.items() if not k.startswith("decoder.")}
        check_compatible(model, backbone, checkpoint / "model.safetensors")
        model.load_state_dict(backbone)
    return model.to(device).eval(), config
