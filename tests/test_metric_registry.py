"""One metric registry: a metric registered once is reported by `mimo eval`, the demo and the convergence
benchmark, and the config accepts its name."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import MICRO, micro_config
from harness import run_benchmark
from mimo.apps.demo import run_demo
from mimo.cli import main
from mimo.config import ConfigError
from mimo.errors import MetricUnavailableError
from mimo.evaluation.metrics import METRICS, Metric, build_metrics, metric_names
from mimo.options import check_options

pytestmark = pytest.mark.usefixtures("single_thread")


class MeanBrightness(Metric):
    """A toy metric: the mean pixel value of the generated frames."""

    name = "brightness"
    label = "mean brightness (toy)"
    higher_is_better = True

    def __call__(self, samples: torch.Tensor) -> float:
        return samples[:, self.context_frames :].mean().item()


@pytest.fixture
def toy_metric(monkeypatch):
    monkeypatch.setitem(METRICS, MeanBrightness.name, MeanBrightness)  # as @register_metric("brightness") does
    return MeanBrightness.name


def test_a_metric_registered_once_is_reported_by_the_demo_eval_and_the_benchmark(toy_metric, tmp_path, capsys):
    overrides = [*MICRO, "train.batch_size=2", "sample.steps=1", "train.tensorboard=false"]
    report = run_demo(tmp_path / "demo", steps=1, overrides=[*overrides, f"eval.metrics=trajectory,{toy_metric}"])
    assert set(report.metrics["demo"]) == set(report.metrics["copy-last"]) == {"trajectory", toy_metric}
    assert -1 <= report.metrics["demo"][toy_metric] <= 1
    assert MeanBrightness.label in capsys.readouterr().out

    eval_args = ["--out", str(tmp_path / "eval"), f"eval.metrics={toy_metric}", "eval.num_videos=2", "eval.seeds=0,1"]
    assert main(["eval", str(tmp_path / "demo"), *eval_args]) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert list(evaluated) == [toy_metric] and len(evaluated[toy_metric]["per_seed"]) == 2
    assert toy_metric in (tmp_path / "eval" / "eval.md").read_text()

    runs = ["--runs-dir", str(tmp_path / "runs"), "--threads", "1", "--out", str(tmp_path / "bench")]
    payload = run_benchmark("convergence", ["--tiny", *runs, "--set", "train.steps=2", f"eval.metrics={toy_metric}"])
    evaluations = payload["results"]["evaluations"]
    assert toy_metric in evaluations["baseline"]["2"] and toy_metric in evaluations["mimo"]["2"]
    assert toy_metric in payload["results"]["summary"]
    assert MeanBrightness.label in (tmp_path / "bench" / "README.md").read_text()


def test_an_unregistered_metric_is_refused_by_the_options_check_and_by_build_metrics():
    with pytest.raises(ConfigError, match=r"eval\.metrics"):
        check_options(micro_config("eval.metrics=brightness"))
    with pytest.raises(ValueError, match="brightness"):
        build_metrics(["brightness"], micro_config(), {"video": torch.zeros(1, 4, 3, 16, 16)})


def test_lpips_is_an_optional_metric_that_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail, as where it is not installed
    config = micro_config("eval.metrics=lpips")  # a registered name: the config accepts it
    with pytest.raises(MetricUnavailableError, match="pip install lpips"):
        build_metrics(metric_names(config), config, {"video": torch.zeros(1, 4, 3, 16, 16)})
