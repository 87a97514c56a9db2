"""The `mimo` command: an error a user can meet ends it with one line and exit code 2 (`--debug` shows
the traceback); `mimo bench` runs the scripts of a checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mimo.cli
import mimo.errors
from mimo.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
USER_ERRORS = [  # Interrupted exits with 128 + its signal (tests/test_faults.py)
    cls
    for cls in vars(mimo.errors).values()
    if isinstance(cls, type) and issubclass(cls, mimo.errors.MimoError) and cls is not mimo.errors.Interrupted
]


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda cls: cls.__name__)
def test_a_known_error_ends_the_command_with_one_line_and_debug_shows_the_traceback(error, monkeypatch, capsys):
    def fails(args) -> None:
        raise error("what was wrong, and what to do about it")

    monkeypatch.setattr(mimo.cli, "_train", fails)
    assert main(["train"]) == 2
    assert capsys.readouterr().err == "mimo train: error: what was wrong, and what to do about it\n"
    for argv in (["--debug", "train"], ["train", "--debug"]):
        with pytest.raises(error, match="what was wrong"):
            main(argv)


def test_a_config_error_is_reported_without_importing_the_trainer():
    code = (
        "import sys; from mimo.cli import main; assert main(['train', 'train.steps=abc']) == 2; "
        "assert 'mimo.train.trainer' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == ["mimo train: error: train.steps: expected int, got 'abc'"]


def test_bench_runs_a_benchmark_script_of_the_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv)  # the benchmark script sees its own arguments
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["bench", "step", "--tiny", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "step-tiny.json").read_text())["benchmark"] == "step"


def test_bench_outside_a_checkout_says_where_benchmarks_live(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "step"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "checkout" in error


def test_bench_names_the_benchmarks_there_are(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    assert main(["bench", "stepz"]) == 2
    assert "choose one of convergence, decode, memory, sampling, step, utilization" in capsys.readouterr().err
