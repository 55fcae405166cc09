"""Live progress of a study: one line every few seconds on the terminal and in ``progress.log``.

Ray's own trial table is switched off (``verbose=0``); this callback prints instead::

    [12:03:04] smoke  4/8 done, 2 running, 2 pending, 0 errored | best val/acc c00 0.612 c01 0.588 | 3f2a c00 ep 2/4, 9b1c c01 ep 1/4
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from platform.searcher import get_path, resolve_config, trial_meta


class ProgressCallback(Callback):
    """Print trial counts, the best validation metric per cell and each running trial's epoch."""

    def __init__(self, study: str, metric: str, mode: str, log_path: str | Path | None,
                 *, interval_s: float = 5.0, total_trials: int | None = None,
                 stream: TextIO | None = None, bases: dict[str, dict] | None = None):
        self.study = study
        self.bases = bases or {}  # the plan's shared base configs (``platform.searcher.plan_bases``)
        self.metric = metric
        self.mode = mode
        self.log_path = Path(log_path) if log_path else None
        self.interval_s = interval_s
        self.total_trials = total_trials
        self._stream = stream
        self._last_print = 0.0
        self._last_line = ""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stream"] = None  # sys.stdout does not pickle (Tuner stores its callbacks)
        return state

    # ------------------------------------------------------------------ Tune hooks

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Print a line when ``interval_s`` has passed since the last one."""
        now = time.monotonic()
        if now - self._last_print >= self.interval_s:
            self._last_print = now
            self.emit(self.line(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Always print the final state."""
        self.emit(self.line(trials), force=True)

    # ------------------------------------------------------------------ formatting

    def best_per_cell(self, trials: list) -> dict[str, float]:
        """The best ``metric`` reported so far in each cell (latest report of each trial)."""
        best: dict[str, float] = {}
        for t in trials:
            value = (t.last_result or {}).get(self.metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            cell = str(trial_meta(t.config).get("cell", "?"))
            if cell not in best or (value > best[cell] if self.mode == "max" else value < best[cell]):
                best[cell] = float(value)
        return best

    def line(self, trials: list) -> str:
        """The progress line for the current trial list."""
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        done, running, errored = (counts.get(k, 0) for k in ("TERMINATED", "RUNNING", "ERROR"))
        total = max(self.total_trials or 0, len(trials))
        parts = [f"{done}/{total} done, {running} running, {total - done - running - errored} "
                 f"pending, {errored} errored"]
        best = self.best_per_cell(trials)
        if best:
            parts.append(f"best {self.metric} " + " ".join(
                f"{c} {v:.3f}" for c, v in sorted(best.items())))
        active = []
        for t in trials:
            if t.status != "RUNNING":
                continue
            epochs = get_path(resolve_config(t.config, self.bases), "finetune.epochs")
            cell = trial_meta(t.config).get("cell", "?")
            epoch = (t.last_result or {}).get("epoch", 0)
            active.append(f"{t.trial_id[-4:]} {cell} ep {int(epoch)}/{epochs}" if epochs else
                          f"{t.trial_id[-4:]} {cell}")
        if active:
            parts.append(", ".join(active[:8]) + (" ..." if len(active) > 8 else ""))
        return f"[{time.strftime('%H:%M:%S')}] {self.study}  " + " | ".join(parts)

    def emit(self, line: str, *, force: bool = False) -> None:
        """Write ``line`` to the terminal and append it to the log (an unchanged line is skipped)."""
        body = line.split("] ", 1)[-1]
        if not force and body == self._last_line:
            return
        self._last_line = body
        print(line, file=self._stream or sys.stdout, flush=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")


__all__ = ["ProgressCallback"]
