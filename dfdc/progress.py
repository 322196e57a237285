"""The progress bar of work done in Ray tasks or in this process: done/total, rate, the counts that
matter (faces written, videos set aside, errors), ETA. On stderr, so stdout stays the output."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


class TaskProgress:
    def __init__(self, label: str, total: int, unit: str, enabled: bool = True, **counts: int):
        self.console = Console(stderr=True)
        self.counts = dict(counts)
        extra = [TextColumn(f"{{task.fields[{k}]}} {k.replace('_', ' ')}") for k in counts]
        self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), RateColumn(unit), *extra,
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
