"""``aios top``'s frame: what it shows of a snapshot of the cluster."""

from __future__ import annotations

from rich.console import Console

from aios.cli.top import frame


def render(snap: dict) -> str:  # type: ignore[type-arg]
    console = Console(record=True, width=160, color_system=None)
    console.print(frame(snap))
    return console.export_text()


def test_names_are_shown_as_written_not_read_as_markup() -> None:
    """A node, job or tenant may be named with square brackets: rich read ``[bold]`` in a node id as markup (the
    name lost its brackets) and ``[/x]`` raised a MarkupError, so `aios top` died on such a cluster."""
    snap = {"nodes": [{"node": "rack[1]/n[/x]", "online": True, "devices": [
                {"uuid": "GPU-1", "healthy": True, "job": "j[bold]", "utilization_gpu": 40}]}],
            "jobs": {"running": 1},
            "running": [{"job": "j[bold]", "tenant": "t[red]", "status": "running", "devices": 1, "step": 5,
                         "total_steps": 10}],
            "tenants": {"t[red]": {"usage": {"h100": 1}, "nominal": {}}}}
    text = render(snap)
    assert "rack[1]/n[/x]" in text and "j[bold]" in text and "t[red]" in text and "5/10" in text
