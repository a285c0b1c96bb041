"""Progress for long steps, on stderr so that stdout stays clean for JSON.

On a terminal, a rich progress bar; when stderr is piped to a file or a log
collector, plain lines at most every few seconds (and at the end), so that a
CI log shows the step is alive and how far it got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

stderr_console = Console(stderr=True)
PLAIN_INTERVAL_S = 5.0


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items``, showing progress on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not stderr_console.is_terminal:
        yield from _plain_lines(items, description, total)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=stderr_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _plain_lines(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= PLAIN_INTERVAL_S:
                last = now
                print(_line(description, done, total, now - start), file=sys.stderr, flush=True)
    except GeneratorExit:  # the caller stopped before the end (a timing whose verdict is clear, or an error): the last line says so
        of = f" of up to {total}" if total else ""
        handed = done + 1  # the item the caller held when it stopped counts too
        print(f"{description}: {handed}{of}, {time.monotonic() - start:.1f} s, stopped", file=sys.stderr, flush=True)
        raise
    if done:
        print(_line(description, done, total, time.monotonic() - start) + " done", file=sys.stderr, flush=True)


def _line(description: str, done: int, total: int | None, elapsed: float) -> str:
    if total:
        remaining = elapsed / done * (total - done) if done else 0.0
        return f"{description}: {done}/{total} ({done / total:.0%}), {elapsed:.1f} s, about {remaining:.0f} s left"
    return f"{description}: {done}, {elapsed:.1f} s"
