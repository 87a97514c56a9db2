"""The errors a user can meet, in one light module: the CLI reports them without importing torch or the trainer.

Each is a `MimoError`, so `mimo` ends with one line naming what was wrong and how to fix it (the
traceback with `mimo --debug`); each also keeps the builtin base that callers of the library catch.
"""

from __future__ import annotations


class MimoError(Exception):
    """A failure whose message says what was wrong and what to do; the CLI prints it without a traceback."""


class ConfigError(MimoError, ValueError):
    """An impossible or unknown configuration value; the message names the key and the fix."""


class InputError(MimoError, ValueError):
    """A tensor with the wrong shape, dtype or values; the message says what was expected and how to fix it."""


class CheckpointError(MimoError, RuntimeError):
    """A checkpoint that is missing, truncated or made for another model; the message says which."""


class NonFiniteLossError(MimoError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; the last checkpoint on disk is still good."""


class NonFiniteValuesError(MimoError, FloatingPointError):
    """Samples, features or statistics that hold NaN or infinity; the message says how many and where they came from."""


class TooManyBadVideosError(MimoError, RuntimeError):
    """More than `max_bad_fraction` of the attempted files failed: the data is probably wrong."""


class WeightsUnavailableError(MimoError, RuntimeError):
    """Pretrained weights are neither cached nor obtainable; the message says how to get them."""


class MetricUnavailableError(MimoError, RuntimeError):
    """A metric needs a package or weights that are not installed; the message says how to get them."""


class ArgumentError(MimoError, ValueError):
    """A command argument naming nothing usable (an unknown benchmark, a folder that must be new); says what to give."""


class Interrupted(MimoError):
    """A run stopped by SIGINT or SIGTERM after saving a checkpoint: the shell sees 128 + the signal number, so
    `mimo train ... && mimo sample ...` does not go on with a half-trained model."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number
