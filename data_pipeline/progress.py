"""The ingest progress bar: videos/s, faces written, videos quarantined, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} videos/s" if speed else "- videos/s")


class IngestProgress:
    def __init__(self, total_videos: int, enabled: bool = True):
        self.console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TextColumn("{task.fields[faces]} faces"), TextColumn("{task.fields[quarantined]} quarantined"),
            TimeRemainingColumn(), console=self.console, disable=not enabled,
        )
        self._task = self._progress.add_task("ingest", total=total_videos, faces=0, quarantined=0)
        self.faces = self.quarantined = 0

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        self._progress.__exit__(*exc)

    def advance(self, videos: int, faces: int, quarantined: int) -> None:
        self.faces += faces
        self.quarantined += quarantined
        self._progress.update(self._task, advance=videos, faces=self.faces, quarantined=self.quarantined)
