"""Training logs: a JSON-lines file (for plots and resumption), TensorBoard when installed, the console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Writes nothing until the first `log`: a run refused at start-up leaves its folder as it was."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.writer = None
        self.tensorboard = enabled and tensorboard  # the writer is opened by the first `log`

    def _open_tensorboard(self) -> None:
        self.tensorboard = False
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            tqdm.write("TensorBoard is not installed (pip install 'mimo[tensorboard]'); logging to JSONL only")
        else:
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.tensorboard:
            self._open_tensorboard()
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def truncate_after(self, step: int) -> None:
        """Forget lines logged after `step`: a resumed run logs those steps again."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
