"""The config values only the code above config.py can judge, checked once a config is loaded.

`mimo.config` is the ground floor (every layer imports it), so it cannot import the registries of functions
that some keys name: datasets, noise-level samplers, sampling grids, metrics, perturbations, FVD's covariance
normalisers. Each registry's own code refuses a name it does not hold when it is used; `check_options` asks
all of them at once, so that a job (`mimo train`, `sample`, `eval`, the demo) refuses a bad name before it
starts rather than when it first reaches it (a trainer samples only at the end).
"""

from __future__ import annotations

from collections.abc import Collection

from mimo.config import Config
from mimo.data import DATASETS, GENERATED_DATASETS
from mimo.data.synthetic import PALETTE
from mimo.diffusion.flow import NOISE_LEVEL_SAMPLERS, SAMPLING_GRIDS
from mimo.errors import ConfigError
from mimo.evaluation.metrics import metric_names
from mimo.evaluation.robustness import PERTURBATIONS
from mimo.metrics.frechet import COVARIANCE_DDOF


def _check_choice(value: str, choices: Collection[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value '{value}'; choose one of {list(choices)}")


def check_options(config: Config) -> Config:
    """`config`, once every name it gives is one its registry holds; else a ConfigError naming the key."""
    _check_choice(config.data.dataset, DATASETS, "data.dataset")
    if config.data.dataset not in GENERATED_DATASETS and not config.data.path:
        raise ConfigError(f"data.path: dataset '{config.data.dataset}' needs data.path=FOLDER")
    if config.data.max_objects > len(PALETTE):  # every object of a built-in clip has its own colour
        raise ConfigError(
            f"data.max_objects: the built-in videos have {len(PALETTE)} colours; choose 1 to {len(PALETTE)}"
        )
    _check_choice(config.diffusion.timestep_sampling, NOISE_LEVEL_SAMPLERS, "diffusion.timestep_sampling")
    _check_choice(config.sample.grid, SAMPLING_GRIDS, "sample.grid")
    metric_names(config)
    for kind in config.eval.robustness_list():
        _check_choice(kind, PERTURBATIONS, "eval.robustness")
    _check_choice(config.eval.fvd_normaliser, COVARIANCE_DDOF, "eval.fvd_normaliser")
    return config
