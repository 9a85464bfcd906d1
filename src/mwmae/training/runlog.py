"""A training run's log: JSON lines, TensorBoard scalars and a progress bar, written by rank 0.

`RunLog(folder, ...)` appends one JSON object per line to `folder/log.jsonl` (each with its
`time`), adds scalars to TensorBoard under `folder/tb` when asked (tensorboard is optional at
run time: without it the run goes on with a warning) and draws a progress bar of steps
(`mwmae._progress`: plain lines off a terminal). On other ranks (`enabled=False`) every call
does nothing, so loops call it unconditionally.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"


class RunLog:
    def __init__(
        self,
        folder: Path,
        *,
        enabled: bool = True,
        total: int = 0,
        initial: int = 0,
        desc: str = "",
        progress: bool = True,
        tensorboard: bool = False,
    ) -> None:
        from mwmae._progress import progress_bar

        self.folder, self.enabled = Path(folder), enabled
        self.writer = _tensorboard(self.folder / "tb") if enabled and tensorboard else None
        self.bar = progress_bar(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            desc=desc,
            disable=not (progress and enabled),
        )

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (with the time) to log.jsonl."""
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        """TensorBoard scalars (tag -> value; None values are left out)."""
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def show(self, **values: str) -> None:
        """Values shown beside the bar (loss, lr, ...)."""
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(folder))


def load_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines log of a run folder, as a list of records."""
    path = Path(run_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
