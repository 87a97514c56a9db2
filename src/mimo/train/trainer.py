"""The training loop: CTF + MiMo objective, AdamW, EMA, exact resume, logs, sample GIFs, safe stops.

Every random choice of a step (noise levels, noise, label dropout, tube mask) comes from a
generator seeded by (seed, step, global micro-batch), and the data order is a function of the
position in the clip stream, so a resumed run repeats the uninterrupted run's losses exactly, and
R ranks × A accumulation steps see the same clips and randomness as one process accumulating R·A.

Under torchrun the objective is wrapped in DDP (or sharded by FSDP2), gradients are reduced only
on the last micro-step, logged losses are averaged over ranks, and rank 0 alone writes logs,
samples and checkpoints (full tensors, gathered from all ranks) while the others wait.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mimo.config import Config, TrainConfig, with_overrides
from mimo.data import build_dataset, stack_clips
from mimo.data.encoder_features import ENCODER_FEATURES_KEY, WithEncoderFeatures, cached_feature_dim
from mimo.data.latents import latent_autoencoder
from mimo.data.media import plot_curves, save_gif, video_grid
from mimo.data.order import ResumableShuffle
from mimo.diffusion.cost import sampling_cost
from mimo.diffusion.sampler import sample_for_task
from mimo.errors import ConfigError, InputError, NonFiniteLossError
from mimo.models import build_backbone
from mimo.models.attention import check_flex_trains
from mimo.models.autoencoder import to_pixels
from mimo.models.checks import check_finite, check_frames, check_labels, check_pixel_values
from mimo.models.dit import FrameCausalDiT
from mimo.objectives.objective import TrainingObjective
from mimo.options import check_options
from mimo.train.checkpoint import (
    find_checkpoint,
    load_module,
    load_tensors,
    optimizer_from_tensors,
    read_state,
    save_checkpoint,
)
from mimo.train.distributed import (
    DistInfo,
    any_rank,
    barrier,
    clip_gradients,
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    init_distributed,
    is_initialized,
    is_sharded,
    load_full_optimizer_state,
    local_tensor,
    mean_over_ranks,
    shard_fully,
    shutdown_distributed,
    transformer_blocks,
    wrap_for_training,
)
from mimo.train.ema import EMA, warn_if_tail_is_outweighed
from mimo.train.init_from import has_finished, initialise_from_run, preset_to_train_first
from mimo.train.logger import MetricsLogger, read_metrics

SAMPLE_VIDEOS = 4  # clips shown in the periodic sample GIFs


def micro_batch_index(rank: int, micro: int, grad_accumulation: int) -> int:
    """Global index of a micro-batch within its step: rank r's micro-step m is r·A + m (see data.order)."""
    return rank * grad_accumulation + micro


def step_generator(seed: int, step: int, micro_batch: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one micro-batch, on the training device: a function of (seed, step, global micro-batch
    index), so resuming needs no RNG state and the randomness does not depend on how the batch is split over
    ranks (a CUDA generator's draws differ from a CPU one's, but repeat exactly on CUDA)."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 65_537 + micro_batch)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: dict[str, float]
    checkpoint: Path | None
    interrupted: bool = False
    seconds: float = 0.0
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)
    out_of_time: bool = False  # train.max_seconds ended the run before train.steps


COSINE_FLOOR = 0.1  # nanoGPT: the cosine schedule ends at a tenth of the peak rate


def lr_factor(step: int, train: TrainConfig) -> float:
    """The learning rate of `step` as a share of train.lr: linear warm-up, then constant or a cosine decay
    that reaches COSINE_FLOOR at train.steps."""
    warmup = train.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if train.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, train.steps - warmup))
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, config: Config, dist: DistInfo | None = None, dataset: Dataset | None = None):
        self.config = config
        train = config.train
        self.dist = dist or init_distributed()
        self.run_dir = Path(train.out_dir)
        self.device = self.dist.device
        check_flex_trains(config.model.attention, self.device)  # before any work: one line, not a traceback
        self.reported_failures: str | None = None  # the bad-video summary last printed
        torch.manual_seed(train.seed)  # initial weights, identical on every rank
        self.backbone = build_backbone(config).to(self.device)
        self.backbone.activation_checkpointing = train.activation_checkpointing
        features = config.repa.features_path if config.repa.mode != "none" else None
        feature_dim = cached_feature_dim(features) if features else None  # REPA's encoder replaced by its cache
        self.objective = TrainingObjective(config, self.backbone, feature_dim).to(self.device)
        self.ema = EMA(self.backbone, train.ema_decay, train.ema_warmup)  # before compile: a plain copy
        if self.dist.is_main:
            warn_if_tail_is_outweighed(config.mimo.unmasked_tail_steps, train.ema_decay)
        if train.compile:
            for block in transformer_blocks(self.objective):
                block.compile()
        self.model = wrap_for_training(self.objective, train.parallel, self.dist, train.precision)
        if is_sharded(self.objective):
            shard_fully(self.ema.module)  # same shards as the weights it averages
        self.optimizer = torch.optim.AdamW(  # after sharding: FSDP replaces the parameters
            self.objective.parameters(),
            lr=train.lr,
            weight_decay=train.weight_decay,
            fused=self.device.type == "cuda",  # one kernel for all parameters instead of a loop of small ones
        )
        if dataset is None:
            dataset = build_dataset(config.data, "train")
            if config.repa.mode != "none" and config.repa.features_path:
                dataset = WithEncoderFeatures(dataset, config.repa.features_path, config.repa.encoder)
        self.dataset = dataset
        self.step = 0
        self.clips_seen = 0  # position in the data stream (data.order)
        self.saved_step: int | None = None
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.logger = MetricsLogger(self.run_dir, self.dist.is_main, train.tensorboard)

    @property
    def global_batch(self) -> int:
        """Clips per optimiser step over all ranks: batch_size × grad_accumulation × world_size."""
        train = self.config.train
        return train.batch_size * train.grad_accumulation * self.dist.world_size

    # ----- state -------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint of full tensors gathered from all ranks, written by rank 0; never with non-finite weights.

        Every rank must call it (gathering is a collective); the others wait until the files are in place.
        """
        nonfinite = [name for name, p in self.objective.named_parameters() if not torch.isfinite(local_tensor(p)).all()]
        if any_rank(bool(nonfinite)):
            where = ", ".join(nonfinite[:5]) if nonfinite else "parameters held by another rank"
            raise NonFiniteLossError(
                f"refusing to checkpoint non-finite weights at step {self.step} ({where}); "
                "the last checkpoint is intact"
            )
        modules = {"model": full_model_state(self.objective), "ema": full_model_state(self.ema.module)}
        optimizer_state = full_optimizer_state(self.objective, self.optimizer)
        path = None
        if self.dist.is_main:
            state = {
                "config": self.config.to_dict(),
                "world_size": self.dist.world_size,
                "global_batch": self.global_batch,
                "clips_seen": self.clips_seen,
            }
            path = save_checkpoint(
                self.run_dir, self.step, modules, optimizer_state, state, keep=self.config.train.keep_checkpoints
            )
        self.saved_step = self.step
        barrier()
        return path

    def resume(self) -> Path | None:
        """Continue from the run folder's latest checkpoint, whatever world size or parallel mode wrote it."""
        checkpoint = find_checkpoint(self.run_dir)
        if checkpoint is None:
            return None
        state = read_state(checkpoint)
        load_module(self.objective, checkpoint, "model")
        load_module(self.ema.module, checkpoint, "ema")
        tensors = load_tensors(checkpoint / "optimizer.safetensors")
        load_full_optimizer_state(self.objective, self.optimizer, optimizer_from_tensors(tensors, state["optimizer"]))
        self.step = self.saved_step = int(state["step"])
        self.clips_seen = int(state["clips_seen"])
        self.logger.truncate_after(self.step)
        if self.dist.is_main:
            tqdm.write(f"resumed from {checkpoint} at step {self.step} ({self.clips_seen} clips seen)")
        return checkpoint

    # ----- data --------------------------------------------------------------------------------
    def batches(self):
        """This rank's micro-batches from the current stream position on (see data.order)."""
        train = self.config.train
        sampler = ResumableShuffle(
            len(self.dataset),
            self.config.data.seed,
            start=self.clips_seen,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            clips_per_rank=train.batch_size * train.grad_accumulation,
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

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Clips of the configured shape and range, labels in range: a clear error instead of a bad step."""
        data = self.config.data
        if not isinstance(batch, dict) or "video" not in batch:
            raise TypeError("dataset items must be dicts with a 'video' tensor (T, C, H, W) and a 'label'")
        video = batch["video"]
        check_frames("dataset clips", video, data.channels, data.frame_size)
        if video.shape[1] != data.num_frames:
            raise InputError(
                f"dataset clips have {video.shape[1]} frames, data.num_frames is {data.num_frames}: set "
                f"data.num_frames={video.shape[1]}, or give clips of {data.num_frames} frames"
            )
        if data.dataset == "latents":
            check_finite("dataset clips", video)
        else:
            check_pixel_values("dataset clips", video)
        if self.config.num_classes:
            check_labels(batch.get("label"), video.shape[0], self.config.num_classes, read_values=True)

    # ----- the loop ----------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM ask for a checkpoint at the next step boundary instead of killing the run; a second
        one is told the checkpoint is being finished; a third aborts, saying which steps are lost. They stay
        until the final checkpoint is on disk. DataLoader workers inherit them (fork) but stay silent: the
        terminal sends Ctrl-C to every process of the group, and one message per signal is enough."""
        trainer_pid = os.getpid()
        received = []

        def request_stop(signum, frame):
            if os.getpid() != trainer_pid:  # a DataLoader worker: the trainer stops it
                return
            received.append(signum)
            self.stop_requested, self.stop_signal = True, self.stop_signal or signum
            say = tqdm.write if self.dist.is_main else lambda message: None
            if len(received) == 1:
                say(f"signal {signum} received: saving a checkpoint at the end of this step")
            elif len(received) == 2:
                say(f"signal {signum} received again: finishing the step and its checkpoint (a third signal aborts)")
            else:
                lost = "all its steps" if self.saved_step is None else f"the steps after step {self.saved_step}"
                say(f"signal {signum} received a third time: aborting without a checkpoint; {lost} are lost")
                raise KeyboardInterrupt

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
                previous[sig] = signal.signal(sig, request_stop)
        return previous

    def train_step(self, batches) -> dict[str, float] | None:
        """One optimiser step over grad_accumulation micro-batches; None when a non-finite step was skipped."""
        train = self.config.train
        accumulation = train.grad_accumulation
        self.objective.train()
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(self.step, train)
        totals: dict[str, float] = {}
        masked = self.config.mimo.masked_at(self.step, train.steps)
        if not masked and self.config.mimo.masked_at(self.step - 1, train.steps) and self.dist.is_main:
            tqdm.write(
                f"unmasked fine-tuning (mimo.unmasked_tail_steps) from step {self.step}: full history, no L_mask"
            )
        for micro in range(accumulation):
            batch = next(batches)
            self.check_batch(batch)
            video = batch["video"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device) if "label" in batch else None
            features = batch.get(ENCODER_FEATURES_KEY)
            extra = () if features is None else (features.to(self.device, non_blocking=True),)
            micro_batch = micro_batch_index(self.dist.rank, micro, accumulation)
            generator = step_generator(train.seed, self.step, micro_batch, self.device)
            last = micro == accumulation - 1
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
            with gradient_sync(self.model, enabled=last), autocast:
                losses = self.model(video, labels, generator, *extra, masked=masked)
                (losses["loss"] / accumulation).backward()
            for name, value in losses.items():  # summed on the device: no host sync per micro-step
                totals[name] = totals.get(name, 0) + value.detach().float() / accumulation
        norm = clip_gradients(self.objective.parameters(), train.grad_clip)
        # the step's one host read: losses and gradient norm together (the non-finite check needs them)
        *values, grad_norm = torch.stack([*totals.values(), norm.to(self.device)]).tolist()
        totals = mean_over_ranks(dict(zip(totals, values, strict=True)))
        if not all(math.isfinite(v) for v in [*totals.values(), grad_norm]):
            self.optimizer.zero_grad(set_to_none=True)
            losses_text = ", ".join(f"{name} {value:.4g}" for name, value in totals.items())
            message = f"non-finite loss or gradient at step {self.step}: {losses_text}, grad norm {grad_norm:.4g}"
            if train.on_nonfinite == "stop":
                raise NonFiniteLossError(
                    message + "; the last checkpoint is intact (train.on_nonfinite=skip skips such steps)"
                )
            if self.dist.is_main:
                tqdm.write("skipping: " + message)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.backbone, self.step)
        return dict(totals, grad_norm=grad_norm, mask_ratio=self.config.mimo.mask_ratio if masked else 0.0)

    def _out_of_time(self, started: float) -> bool:
        """train.max_seconds spent (decided on rank 0's clock, so every rank stops at the same step)."""
        limit = self.config.train.max_seconds
        return limit is not None and any_rank(self.dist.is_main and time.perf_counter() - started > limit)

    def end_of_epoch(self) -> None:
        """Report videos that failed to decode this far (a dataset of files has `failures`) when that changed,
        and stop when too many did: the run never trains on silently empty data."""
        failures = getattr(self.dataset, "failures", None)
        if failures is None:
            return
        if self.dist.is_main and str(failures) != self.reported_failures:  # only news, not every epoch
            tqdm.write(f"epoch {self.clips_seen // len(self.dataset)} done: {failures}")
            self.reported_failures = str(failures)
        self.dataset.check_failures()

    def _refuse_another_run(self) -> None:
        """The run folder must hold this run or nothing: another run's checkpoints would mix with this one's."""
        train, existing = self.config.train, find_checkpoint(self.run_dir)
        if not train.resume and existing is not None:
            raise ConfigError(
                f"train.resume=false: {self.run_dir} already holds a run (checkpoint {existing}); "
                "give a new train.out_dir, or move that folder away to start over"
            )
        if train.init_from and existing is not None:
            started_from = read_state(existing)["config"]["train"].get("init_from")
            if started_from != train.init_from:  # resuming would ignore init_from, and config.yaml would claim it
                raise ConfigError(
                    f"train.init_from={train.init_from}: {self.run_dir} already holds a run (checkpoint {existing}, "
                    f"started from {started_from or 'scratch'}); give a new train.out_dir to start from it"
                )

    def _start(self) -> Path | None:
        """Resume the run (its latest checkpoint, returned) or start it, from train.init_from when given."""
        train = self.config.train
        checkpoint = self.resume() if train.resume else None  # refuses another model's checkpoint first
        if checkpoint is None and train.init_from:
            left = initialise_from_run(self.objective, self.ema.module, train.init_from)
            if self.dist.is_main:
                fresh = sorted({name.split(".")[0] for name in left})
                tqdm.write(f"initialised from {train.init_from}" + (f"; left new: {', '.join(fresh)}" if fresh else ""))
        if self.step >= train.steps and self.step > 0 and self.dist.is_main:
            tqdm.write(f"{self.run_dir} is at step {self.step} already (train.steps={train.steps}): nothing to train")
        return checkpoint

    def _finish(self, interrupted: bool, out_of_time: bool) -> None:
        """Say why training stopped early; after a run not interrupted, its samples and loss plot."""
        train = self.config.train
        if out_of_time and self.dist.is_main:
            tqdm.write(
                f"train.max_seconds={train.max_seconds:g} reached: stopped at step {self.step} of {train.steps}, "
                f"checkpoint saved; run the same command again to continue"
            )
        if not interrupted and self.step > 0:
            if train.sample_at_end:
                self.write_samples(announce=True)
            if self.dist.is_main:
                self.plot_losses()
        self.logger.close()

    def train(self) -> TrainResult:
        config, train = self.config, self.config.train
        self._refuse_another_run()
        checkpoint = self._start()
        previous_handlers = self._install_signal_handlers()
        batches = self.batches()
        last, interval = {}, {}
        started = time.perf_counter()
        bar = tqdm(total=train.steps, initial=self.step, disable=not self.dist.is_main, desc="train", unit="step")
        tick = time.perf_counter()
        out_of_time = False
        try:
            first_step = self.step
            while self.step < train.steps and not self.stop_requested:
                if self.step > first_step and self._out_of_time(started):
                    out_of_time = True
                    break
                losses = self.train_step(batches)
                if self.step == first_step and self.dist.is_main:  # its checks passed: now the run is this config's
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
                self.step += 1
                self.clips_seen += self.global_batch
                self.stop_requested = any_rank(self.stop_requested)  # every rank stops at the same step
                bar.update(1)
                if self.clips_seen // len(self.dataset) > (self.clips_seen - self.global_batch) // len(self.dataset):
                    self.end_of_epoch()
                if losses is None:
                    continue
                last = losses
                for name, value in losses.items():
                    interval.setdefault(name, []).append(value)
                if train.log_every and self.step % train.log_every == 0:
                    elapsed = time.perf_counter() - tick
                    values = {name: sum(v) / len(v) for name, v in interval.items()}
                    values["lr"] = self.optimizer.param_groups[0]["lr"]
                    values["clips_per_second"] = self.global_batch * len(interval["loss"]) / max(elapsed, 1e-9)
                    self.logger.log(self.step, values)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "diffusion", "mask")})
                    interval, tick = {}, time.perf_counter()
                if train.sample_every and self.step % train.sample_every == 0:
                    self.write_samples()
                if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                    checkpoint = self.save()
            if self.step > 0 and self.step != self.saved_step:  # under the handlers: a second Ctrl-C cannot stop it
                checkpoint = self.save()
            interrupted = self.stop_requested
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        if interrupted and self.stop_signal is None:  # stopped with the rank that received the signal
            self.stop_signal = signal.SIGTERM
        self._finish(interrupted, out_of_time)
        seconds = time.perf_counter() - started
        return TrainResult(
            self.run_dir, self.step, last, checkpoint, interrupted, seconds, self.stop_signal, out_of_time
        )

    # ----- pictures ----------------------------------------------------------------------------
    def sampling_model(self) -> FrameCausalDiT | None:
        """The EMA backbone as one plain module on rank 0 (gathered from its shards under FSDP); None elsewhere."""
        if not is_sharded(self.ema.module):
            return self.ema.module if self.dist.is_main else None
        tensors = full_model_state(self.ema.module)  # a collective: every rank takes part
        if not self.dist.is_main:
            return None
        model = build_backbone(self.config)
        model.load_state_dict(tensors)
        return model.to(self.device).eval()

    def write_samples(self, announce: bool = False) -> Path | None:
        """GIF of held-out clips (top row) and EMA samples with the same context or labels (bottom row);
        `announce`: print what it costs first (train.sample_at_end=false skips the one at the end)."""
        model = self.sampling_model()
        path = None
        if model is not None:
            eval_set = build_dataset(self.config.data, "eval", num_clips=SAMPLE_VIDEOS)
            clips = stack_clips(eval_set, min(SAMPLE_VIDEOS, len(eval_set)))
            if announce:
                cost = sampling_cost(model, self.config, len(clips["video"]))
                tqdm.write(cost.describe("samples at the end of training (train.sample_at_end=false skips them)"))
            video, labels = clips["video"].to(self.device), clips["label"].to(self.device)
            samples = sample_for_task(model, self.config, video, labels, torch.Generator().manual_seed(0))
            path = self.run_dir / "samples" / f"step_{self.step:08d}.gif"
            autoencoder = latent_autoencoder(self.config.data)  # latents: decoded to pixels
            real, samples = to_pixels(video.cpu(), autoencoder), to_pixels(samples.cpu(), autoencoder)
            if samples.shape[2] in (1, 3):
                save_gif(video_grid([real, samples], upscale=2), path)
        barrier()
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
    """Train as `config` says (a library entry point: the CLI and notebooks call this).

    When `train.init_from` names a preset, that preset's run is trained first (resumed where it stopped, skipped
    once finished; an interruption stops there) and this run starts from its weights. Under torchrun it joins
    the process group and leaves it at the end (a group it did not create is kept).
    """
    check_options(config)
    if (first := preset_to_train_first(config)) is not None:
        if not has_finished(first):
            result = train(first, dataset)
            if result.interrupted or result.out_of_time:
                return result
        config = with_overrides(config, [f"train.init_from={first.train.out_dir}"])
    joined = not is_initialized()
    try:
        return Trainer(config, dataset=dataset).train()
    finally:
        if joined:
            shutdown_distributed()
