"""A proxy Fréchet distance for the built-in moving-shapes videos — a proxy, never FVD.

No pretrained video network knows these 32×32 clips of coloured shapes, so FVD's I3D would mostly
measure resizing artefacts. Instead the repo trains a small 3D-conv classifier of the dataset's
labels (shape kind × speed band, so it must look at motion) in a few CPU-minutes, and the
Fréchet distance between its penultimate features of real and generated clips scores how
realistic the generated clips are. The classifier is cached (safetensors, keyed by its settings);
distances are comparable only between evaluations that use the same cached classifier, and must
be reported as "proxy FD", never as FVD.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mimo.data.atomic import write_atomically
from mimo.data.synthetic import MovingShapes
from mimo.metrics.frechet import SqrtMethod
from mimo.metrics.fvd import DEFAULT_BATCH_SIZE, VideoBatches, compute_fvd
from mimo.metrics.i3d_weights import cache_dir

ARCHITECTURE_VERSION = 2  # bump when the network or training recipe changes, so stale caches are not reused
# Training and validation clips come from seeds no evaluation set uses (evaluations use small seeds).
TRAIN_SEED_BASE = 1_000_003
VALIDATION_SEED_BASE = 2_000_003


@dataclass(frozen=True)
class ProxyClassifierConfig:
    """Everything that determines the trained classifier; its hash names the cache file."""

    frame_size: int = 32
    num_frames: int = 16
    max_objects: int = 3
    width: int = 16
    steps: int = 400  # 96.5% validation accuracy (chance 12.5%); 300 steps gave 87%
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0
    validation_clips: int = 512  # only for the reported accuracy

    def cache_key(self) -> str:
        settings = json.dumps({**asdict(self), "version": ARCHITECTURE_VERSION}, sort_keys=True)
        return hashlib.sha256(settings.encode()).hexdigest()[:16]


def _conv_block(in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(),
    )


class ProxyVideoClassifier(nn.Module):
    """Four 3×3×3 conv blocks (first downsamples space only, then space-time), global average pool."""

    def __init__(self, num_classes: int = MovingShapes.num_classes, width: int = 16) -> None:
        super().__init__()
        self.feature_dim = 4 * width
        self.body = nn.Sequential(
            _conv_block(3, width, (1, 2, 2)),
            _conv_block(width, 2 * width, (2, 2, 2)),
            _conv_block(2 * width, 4 * width, (2, 2, 2)),
            _conv_block(4 * width, 4 * width, (1, 1, 1)),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 4·width) of videos (B, T, 3, H, W) in [−1, 1]."""
        x = self.body(rearrange(videos, "b t c h w -> b c t h w"))
        return x.mean(dim=(2, 3, 4))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(videos))


def _clips(config: ProxyClassifierConfig, num_clips: int, seed: int) -> MovingShapes:
    return MovingShapes(num_clips, config.frame_size, config.num_frames, seed=seed, max_objects=config.max_objects)


@torch.no_grad()
def classifier_accuracy(classifier: ProxyVideoClassifier, dataset: MovingShapes, batch_size: int = 64) -> float:
    classifier.eval()
    correct = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        correct += int((classifier(batch["video"]).argmax(dim=1) == batch["label"]).sum())
    return correct / len(dataset)


def train_proxy_classifier(config: ProxyClassifierConfig, progress: bool = True) -> tuple[ProxyVideoClassifier, float]:
    """Train on fresh clips every step (no epoch ever repeats a clip); returns it and its validation accuracy."""
    torch.manual_seed(config.seed)
    classifier = ProxyVideoClassifier(width=config.width)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=config.steps)
    train_clips = _clips(config, config.steps * config.batch_size, TRAIN_SEED_BASE + config.seed)
    classifier.train()
    batches = DataLoader(train_clips, batch_size=config.batch_size, num_workers=1)  # renders while training
    for batch in tqdm(batches, desc="proxy classifier", disable=not progress):
        loss = F.cross_entropy(classifier(batch["video"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    validation_clips = _clips(config, config.validation_clips, VALIDATION_SEED_BASE + config.seed)
    accuracy = classifier_accuracy(classifier, validation_clips)
    return classifier.eval(), accuracy


def load_proxy_classifier(
    config: ProxyClassifierConfig | None = None,
    device: torch.device | str = "cpu",
    train_if_missing: bool = True,
    progress: bool = True,
) -> ProxyVideoClassifier:
    """The cached classifier for these settings, trained and cached first if needed.

    Its validation accuracy is kept as `classifier.validation_accuracy` (chance is 1/8) so reports
    can show that the features mean something.
    """
    config = config or ProxyClassifierConfig()
    path = cache_dir() / f"proxy-classifier-{config.cache_key()}.safetensors"
    if path.is_file():
        classifier = ProxyVideoClassifier(width=config.width)
        classifier.load_state_dict(load_file(str(path)), strict=True)
        with safe_open(str(path), framework="pt") as cached:
            accuracy = float(cached.metadata()["validation_accuracy"])
    elif train_if_missing:
        classifier, accuracy = train_proxy_classifier(config, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"config": json.dumps(asdict(config)), "validation_accuracy": repr(accuracy)}
        write_atomically(path, lambda temporary: save_file(classifier.state_dict(), str(temporary), metadata))
    else:
        raise FileNotFoundError(
            f"no proxy classifier cached at {path} for {config}; call load_proxy_classifier(train_if_missing=True)"
        )
    classifier.validation_accuracy = accuracy
    return classifier.eval().to(device)


def proxy_frechet_distance(
    real: VideoBatches,
    fake: VideoBatches,
    classifier: ProxyVideoClassifier | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str = "cpu",
    method: SqrtMethod = "sqrtm",
    progress: bool = True,
) -> float:
    """Fréchet distance of the proxy classifier's features — report it as "proxy FD", not FVD."""
    classifier = classifier or load_proxy_classifier(device=device, progress=progress)
    features = classifier.features
    return compute_fvd(real, fake, features, batch_size=batch_size, device=device, method=method, progress=progress)
