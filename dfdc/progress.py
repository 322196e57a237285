"""A progress bar for work done in Ray tasks: done/total, rate, counts that matter, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TaskProgress:
    def __init__(self, label: str, total: int, unit: str, enabled: bool = True, **counts: int):
        self.console = Console(stderr=True)
        self.counts = dict(counts)
        extra = [TextColumn(f"{{task.fields[{k}]}} {k.replace('_', ' ')}") for k in counts]
        self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), *extra,
                                  TimeRemainingColumn(), console=self.console, disable=not enabled)
        self._task = self._progress.add_task(label, total=total, **self.counts)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        self._progress.__exit__(*exc)

    def advance(self, n: int = 1, **counts: int) -> None:
        for k, v in counts.items():
            self.counts[k] += v
        self._progress.update(self._task, advance=n, **self.counts)
