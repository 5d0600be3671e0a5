"""Checks of the command line's own inputs (output folder, seeds, a run's config file), before
anything is written. They raise :class:`HFedMoEError`; the commands turn it into one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from typer.core import TyperCommand

from hfedmoe.errors import HFedMoEError


class PlainHelpCommand(TyperCommand):
    """A command whose ``--help`` renders as written: typer escapes the ``[`` of ``[default: ...]``
    for rich even when rich markup is off (``rich_markup_mode=None``), printing ``\\[default: ...]``."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        inner = click.HelpFormatter(width=formatter.width)
        super().format_help(ctx, inner)
        formatter.write(inner.getvalue().replace("\\[", "["))


def check_out(out: Path, field_name: str = "--out") -> None:
    """An output folder we can create and write, checked before anything is written."""
    if str(out) in ("", ".") or out.resolve() == Path.cwd().resolve():
        raise HFedMoEError(f"{field_name}: expected a run folder, got {str(out)!r} (the current folder)")
    if out.exists() and not out.is_dir():
        raise HFedMoEError(f"{field_name}: expected a folder, got {out} (an existing file)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HFedMoEError(f"{field_name}: expected a folder path, got {out} ({parent} is a file)")
    import hfedmoe

    package = Path(hfedmoe.__file__).resolve().parent
    resolved = out.resolve()
    if resolved == package or package in resolved.parents:
        raise HFedMoEError(f"{field_name}: expected a folder outside the installed hfedmoe package, got {out} "
                           f"(inside {package})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HFedMoEError(f"{field_name}: expected a writable location, got {out} ({parent} is not writable)")


def resume_config(cfg_path: Path) -> Any:
    """The run's config.toml, read and checked in one pass; any problem names the file."""
    from hfedmoe.config import config_from_data, read_toml

    field_name = str(cfg_path)
    data = read_toml(cfg_path, field_name)
    try:
        return config_from_data(data)
    except HFedMoEError as exc:
        raise HFedMoEError(f"{field_name}: {exc}") from None


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: a non-empty list of integers in [0, 2^32)."""
    from hfedmoe.config.ranges import SEED_LIMIT

    items = [x.strip() for x in text.split(",")]
    try:
        seeds = [int(x) for x in items]
    except ValueError:
        raise HFedMoEError(f"--seeds: expected comma-separated integers in [0, 2^32), got {text!r}") from None
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if not seeds or bad:
        raise HFedMoEError(f"--seeds: expected comma-separated integers in [0, 2^32), got {text!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise HFedMoEError(f"--seeds: expected distinct seeds (a repeat is the same run twice), got {text!r} "
                           f"with {', '.join(map(str, repeated))} more than once")
    return seeds
