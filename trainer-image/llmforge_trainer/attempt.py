"""One training attempt's state: how to run (`RunOptions`), the SIGTERM flag (`Preemption`), the process's
rank, and what the attempt has learned so far (`Attempt`), from which the report and result are built."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.api.finetunejob import FineTuneJob

from . import data as data_mod
from .progress import ProgressExporter
from .tracking import Tracker

log = logging.getLogger("llmforge.train")


@dataclass
class RunOptions:
    """How to run, beyond the spec: where to put scratch files, which port for gauges, extra callbacks (tests)."""

    work_dir: Path
    metrics_port: int = 0
    strategy: str = "single"
    callbacks: list[Any] = field(default_factory=list)


class Preemption:
    """SIGTERM -> a flag the training loop checks after each step (the signal handler does nothing else)."""

    def __init__(self) -> None:
        self.requested = False
        self.at: float | None = None
        self._old: Any = None

    def install(self) -> None:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if not self.requested:
            self.requested, self.at = True, time.time()
            log.warning("SIGTERM received: finishing this step, then saving a checkpoint and exiting")

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Attempt:
    """What this attempt has learned so far; the report and result are built from it."""

    job: FineTuneJob
    opts: RunOptions
    preemption: Preemption
    tracker: Tracker
    exporter: ProgressExporter
    started: float = field(default_factory=time.time)
    durations: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    start_step: int = 0
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    checkpoint: tuple[int, str] | None = None
    checkpoints_published: list[int] = field(default_factory=list)
    preempted_at_step: int | None = None
    notes: list[str] = field(default_factory=list)
    data: data_mod.Prepared | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    train_started: float | None = None
    trainer: Any = None
    _tok_mark: tuple[float, int] | None = None

    @property
    def main(self) -> bool:
        return rank() == 0

    @property
    def spec(self):
        return self.job.spec
