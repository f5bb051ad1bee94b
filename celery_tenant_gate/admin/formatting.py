"""Text for people: aligned columns, durations and ages, as ``celery tenant-gate``
prints them."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ago", "duration", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """*rows* under *headers*, in columns left-aligned two spaces apart; no trailing
    spaces."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def ago(value: float | None, now: float) -> str:
    """How long before *now* *value* was (``"3m 05s ago"``); ``"-"`` for never (None or 0)."""
    return f"{duration(now - value)} ago" if value else "-"


def duration(seconds: float) -> str:
    """*seconds* in two units at most, whole seconds, never below zero: ``"42s"``,
    ``"3m 05s"``, ``"47h 59m"`` (hours up to two days), ``"2d 00h"``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
