"""Where the command line prints its tables.

rich fits a table to the terminal; piped into a file or another program it assumes 80 columns and cuts cells to
"121…", which makes numbers unreadable. Piped output gets a console as wide as the table needs instead."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

plain = escape
"""Text of users and workers (a job's quoted stderr, an event's detail, a device's error) shown as it is: rich reads
``[...]`` as markup, so "[/x]" in an error raised MarkupError and "[red]" vanished."""

PIPED_WIDTH = 1000
"""Columns assumed when stdout is not a terminal: wider than any table we print, so no cell is cut."""


def table_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)
