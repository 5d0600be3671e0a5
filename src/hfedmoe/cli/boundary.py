"""The command line's error boundary: user errors are one line and exit code 2, anything else one
line and exit code 1 (``--debug``: the plain traceback), Ctrl-C one line saying how to continue and
exit code 130."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from hfedmoe.errors import HFedMoEError


def _one_line(msg: str, limit: int = 2000) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _fail(msg: str, code: int = 2) -> None:
    # plain write, no markup: "[0, 2^32)" or "[quick]" in a message must come out as written
    sys.stderr.write(f"error: {_one_line(msg)}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


INTERRUPT_REPORTED = []  # non-empty once a command has said how to continue after Ctrl-C


def _interrupted(how_to_continue: str) -> None:
    """Ctrl-C: one line saying how to continue, exit code 130 (typer would exit 130 silently)."""
    INTERRUPT_REPORTED.append(how_to_continue)
    sys.stderr.write(f"\ninterrupted: {how_to_continue}\n")
    sys.stderr.flush()
    raise typer.Exit(130)


def guard(fn: Callable[[], Any], debug: bool = False, on_interrupt: Callable[[], str] | None = None) -> Any:
    """Run ``fn`` turning user errors into one line and exit code 2, anything else into one line
    and exit code 1 (``debug``: re-raised, so Python prints a plain traceback); Ctrl-C into the
    line ``on_interrupt()`` returns and exit code 130."""
    try:
        return fn()
    except HFedMoEError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        if on_interrupt is None:
            raise
        _interrupted(on_interrupt())
    except (typer.Exit, typer.Abort):
        raise
    except OSError as exc:  # disk full, permission denied, ... while reading or writing files
        if debug:
            raise
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        _fail(f"file system:{where}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, never a wall of locals
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", code=1)


def resume_hint(out: Path) -> str:
    """What an interrupted ``run`` / ``resume`` of ``out`` says."""
    if (out / "metrics.jsonl").is_file():
        return f"the last complete checkpoint is intact; continue with `hfedmoe resume {out}`"
    return f"the run had not started: nothing to resume in {out}"
