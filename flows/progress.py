"""A terminal progress bar fed by the sweep's cell-finished events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.sweep import add_progress_listener, remove_progress_listener


@contextlib.contextmanager
def terminal_progress(console: Console) -> Iterator[None]:
    columns = (
        TextColumn("cells"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    # redrawn once a second, the elapsed time's unit: rich's default of ten took 1.8% of a core
    with Progress(*columns, console=console, transient=False, refresh_per_second=1) as bar:
        task = bar.add_task("preparing data", total=None)

        def on_cell(done: int, total: int, record: dict | None) -> None:
            if record is None:
                bar.update(task, completed=done, total=total, description="training")
                return
            loss = record.get("val_loss_nats")
            last = f"last: {record['status']}" + (f", val loss {loss:.3f}" if loss is not None else "")
            bar.update(task, completed=done, total=total, description=last)

        add_progress_listener(on_cell)
        try:
            yield
        finally:
            remove_progress_listener(on_cell)
