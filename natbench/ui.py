"""Rich output: progress bars and logging on stderr (stdout stays machine-readable)."""
from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .runner import Reporter

err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)


class RichReporter(Reporter):
    """One rich Progress on stderr; each stage (training, each checkpoint's evaluation) a bar."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self._live = 0

    def start(self, description: str, total: int) -> Any:
        if self._live == 0:  # a fresh Progress per stage, so finished bars are not redrawn
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err_console, transient=False,
            )
            self.progress.start()
        self._live += 1
        return self.progress.add_task(description, total=total, info="")

    def advance(self, handle: Any, n: int = 1, **info: Any) -> None:
        fields = {"info": " ".join(f"{k}={v}" for k, v in info.items())} if info else {}
        self.progress.update(handle, advance=n, **fields)

    def stop(self, handle: Any) -> None:
        self._live -= 1
        if self._live == 0 and self.progress is not None:
            self.progress.stop()
            self.progress = None

    def message(self, text: str) -> None:
        err_console.print(f"[dim]{text}[/dim]")
