"""Latents on disk: encode a dataset once with an autoencoder, then train on the stored latents.

Layout of an `out_dir`:
    manifest.json             settings (autoencoder, dataset and clip settings, shard size, dtype),
                              shapes, the list of finished shards, and whether encoding is complete
    shard_00000.safetensors   `latents` (n, T, c, h, w) and `labels` (n,) int64 of items
                              [0, shard_size), the next shard the next items, and so on

Encoding is resumable: the manifest is written first, each shard is written to a temporary file,
fsynced and renamed, and only then is the manifest updated. A shard file therefore exists only
when complete, and rerunning the same command encodes just the missing shards. Items are the
dataset's items in order, so the dataset should use deterministic clips (`random_clips=False`).

`LatentDataset` reads the shards back with the dataset contract: `video` is a latent clip
(T, c, h, w) float32 and `label` an int64, so training takes latents or pixels alike.
"""

from __future__ import annotations

import bisect
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from mimo.config import DataConfig
from mimo.data.atomic import write_atomically
from mimo.errors import ArgumentError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def encode_dataset(
    dataset: Dataset,
    autoencoder: nn.Module,
    out_dir: str | Path,
    shard_size: int = 1024,
    batch_size: int = 16,
    *,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    storage_dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every item of `dataset` into sharded safetensors under `out_dir`; returns the manifest.

    Rerun with the same arguments after an interruption to finish the missing shards; other
    settings in an existing `out_dir` are refused. `storage_dtype` float16 halves the disk
    footprint at a relative precision of 2^-11, far below a VAE's reconstruction error.
    `autoencoder` is a module with `encode(video)` and `describe()` (mimo.models.autoencoder.Autoencoder, or a
    frozen encoder's features); it is moved to `device`. A dataset with `describe()` has its settings recorded.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_items = len(dataset)
    counts = [min(shard_size, num_items - start) for start in range(0, num_items, shard_size)]
    settings = normalised_settings(
        {
            "format_version": FORMAT_VERSION,
            "autoencoder": autoencoder.describe(),
            "dataset": dataset.describe() if hasattr(dataset, "describe") else {"type": type(dataset).__name__},
            "num_items": num_items,
            "shard_size": shard_size,
            "dtype": str(storage_dtype).removeprefix("torch."),
        }
    )
    manifest = resume_or_start(out_dir, settings, len(counts))
    todo = [shard for shard in range(len(counts)) if not (out_dir / shard_name(shard)).exists()]
    indices = [i for shard in todo for i in range(shard * shard_size, shard * shard_size + counts[shard])]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    autoencoder.to(device).eval()

    bar = tqdm(total=num_items, initial=num_items - len(indices), unit="clip", desc="encoding", disable=not progress)
    with bar:
        _write_shards(loader, autoencoder, device, storage_dtype, todo, counts, manifest, out_dir, bar)
    manifest["shards"] = _finished_shards(out_dir, counts)
    manifest["complete"] = True
    if hasattr(dataset, "failures"):
        manifest["skipped_videos"] = str(dataset.failures)
    write_manifest(out_dir, manifest)
    return manifest


def _write_shards(
    loader: DataLoader,
    autoencoder: nn.Module,
    device: str | torch.device,
    storage_dtype: torch.dtype,
    todo: list[int],
    counts: list[int],
    manifest: dict[str, Any],
    out_dir: Path,
    bar: tqdm,
) -> None:
    """Encode the batches of `loader` (the items of the shards `todo`, in order) and write each shard, listed in
    the manifest, as soon as its `counts[shard]` items are encoded."""
    latents, labels = [], []
    pending = iter(todo)
    shard = next(pending, None)
    for batch in loader:
        latents.append(autoencoder.encode(batch["video"].to(device)).to("cpu", storage_dtype))
        labels.append(batch["label"].to(torch.int64))
        manifest.setdefault("shapes", {"clip": list(batch["video"].shape[1:]), "latent": list(latents[-1].shape[1:])})
        bar.update(len(batch["label"]))
        while shard is not None and sum(len(chunk) for chunk in labels) >= counts[shard]:
            shard_latents, latents = _split(latents, counts[shard])
            shard_labels, labels = _split(labels, counts[shard])
            tensors = {"latents": shard_latents, "labels": shard_labels}
            write_atomically(out_dir / shard_name(shard), partial(save_file, tensors))
            manifest["shards"] = _finished_shards(out_dir, counts)
            write_manifest(out_dir, manifest)
            shard = next(pending, None)


def _split(chunks: list[torch.Tensor], count: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The first `count` rows of the concatenated chunks, and the rest as a list."""
    joined = torch.cat(chunks)
    return joined[:count].clone(), [joined[count:]] if len(joined) > count else []


def normalised_settings(value: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists), so that settings compare equal."""
    return json.loads(json.dumps(value))


def resume_or_start(out_dir: Path, settings: dict[str, Any], num_shards: int) -> dict[str, Any]:
    """The manifest to continue: the existing one if its settings match, else a new one on disk."""
    if (out_dir / MANIFEST).exists():
        manifest = read_manifest(out_dir, require_complete=False)
        changed = [key for key in settings if manifest.get(key) != settings[key]]
        if changed:
            raise ArgumentError(
                f"{out_dir} holds latents encoded with other settings ({', '.join(changed)} differ: e.g. {changed[0]} "
                f"was {manifest.get(changed[0])!r}, now {settings[changed[0]]!r}). Encode into a new directory, or "
                "delete this one to start over."
            )
        return manifest
    if any(out_dir.glob("shard_*.safetensors")):
        raise ArgumentError(
            f"{out_dir} has shard files but no {MANIFEST}, so their settings are unknown. Delete the shards (or use "
            "a new directory) and encode again."
        )
    manifest = {**settings, "num_shards": num_shards, "shards": [], "complete": False}
    write_manifest(out_dir, manifest)
    return manifest


def _finished_shards(out_dir: Path, counts: list[int]) -> list[dict[str, Any]]:
    return [
        {"file": shard_name(i), "count": count} for i, count in enumerate(counts) if (out_dir / shard_name(i)).exists()
    ]


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomically(out_dir / MANIFEST, lambda path: Path(path).write_text(json.dumps(manifest, indent=2)))


def read_manifest(out_dir: str | Path, require_complete: bool = True) -> dict[str, Any]:
    """The manifest of `out_dir`, with errors that say how to get a usable one."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} holds no encoded latents. Encode a dataset first with `mimo data encode` "
            "(mimo.data.latents.encode_dataset)."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete {out_dir} and encode again.") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {manifest.get('format_version')!r}, this mimo reads {FORMAT_VERSION}; "
            "encode the dataset again."
        )
    if require_complete and not manifest.get("complete"):
        done = sum(shard["count"] for shard in manifest["shards"])
        raise RuntimeError(
            f"The latents in {out_dir} are incomplete: {len(manifest['shards'])} of {manifest['num_shards']} shards "
            f"({done} of {manifest['num_items']} clips). Rerun the same encode command to finish them."
        )
    return manifest


def latent_autoencoder(data: DataConfig) -> dict[str, Any] | None:
    """How the clips of `data` were encoded: the autoencoder's description in its latents' manifest, from which
    `mimo.models.autoencoder` rebuilds it to decode samples; None for pixel data."""
    return read_manifest(data.path)["autoencoder"] if data.dataset == "latents" else None


class LatentDataset(Dataset):
    """Stored latent clips with the dataset contract: {"video": (T, c, h, w) float32, "label": int64}.

    Shards are memory-mapped and read one item at a time, so any number of workers share the
    page cache. `autoencoder` (name, scale, shift, ...) says how to decode samples back to pixels.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = read_manifest(self.out_dir)
        self.autoencoder = self.manifest["autoencoder"]
        self.classes = self.manifest["dataset"].get("classes", [])
        shards = self.manifest["shards"]
        for shard in shards:
            if not (self.out_dir / shard["file"]).is_file():
                raise FileNotFoundError(
                    f"{self.out_dir / shard['file']} is listed in the manifest but missing; delete {MANIFEST} and "
                    "that directory's shards, then encode again."
                )
        self._files = [self.out_dir / shard["file"] for shard in shards]
        self._starts = np.cumsum([0] + [shard["count"] for shard in shards]).tolist()
        self.labels = torch.cat([self._open(i).get_tensor("labels") for i in range(len(shards))])
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latent clips")
        shard = bisect.bisect_right(self._starts, index) - 1
        if shard not in self._handles:
            self._handles[shard] = self._open(shard)
        video = self._handles[shard].get_slice("latents")[index - self._starts[shard]]
        return {"video": video.float(), "label": self.labels[index]}

    def _open(self, shard: int) -> Any:
        return safe_open(self._files[shard], framework="pt")

    def __getstate__(self) -> dict[str, Any]:
        """Open file handles stay in their process; each DataLoader worker opens its own."""
        return {**self.__dict__, "_handles": {}}
