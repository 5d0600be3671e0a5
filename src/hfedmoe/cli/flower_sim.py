"""`hfedmoe run | resume` with ``engine.name = "flower-sim"``: the run goes through ``flwr run`` on a
local simulation connection (:mod:`hfedmoe.engines.flower.local_sim`), in Flower's processes; this
process shows what the ServerApp reports (banner, resume notes, rounds) and the closing lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from hfedmoe.cli.summary import final_lines, print_banner


def run_flower_sim(console: Console, err_console: Console, cfg: Any, out: Path, quiet: bool, *,
                   resume: Any = None, replace: tuple[Path, Callable[[Path], None]] | None = None) -> None:
    """Run (``resume``: a :class:`~hfedmoe.engines.flower.local_sim.Resume`, continue) ``cfg`` in the
    run folder ``out``. ``replace``: (the run folder that ``out``, a staging folder, replaces after
    round 0; called with where the old run went once it has)."""
    from hfedmoe.cli.progress import RunProgress
    from hfedmoe.engines.flower.local_sim import run_local_simulation
    from hfedmoe.engines.flower.nodes import num_clients

    final_out = out if replace is None else replace[0]

    with RunProgress(console, quiet=quiet) as progress:
        def on_event(ev: dict[str, Any]) -> None:
            kind = ev["kind"]
            if kind == "run_start":
                if not quiet and resume is None:
                    print_banner(console, err_console, [tuple(x) for x in ev["lines"]])
            elif kind == "restored":
                for note in ev["notes"]:  # even with --quiet: the run is not resumed from where it stopped
                    err_console.print(f"resume: {note}", highlight=False, soft_wrap=True)
                if not quiet:
                    console.print(f"[bold]resume[/] {out} from round {ev['start']} to {cfg.federation.rounds}")
            elif kind == "swapped":
                assert replace is not None
                replace[1](Path(ev["old"]))
            else:
                progress.on_event(ev)

        summary = run_local_simulation(cfg, out, num_clients(cfg), on_event, resume=resume,
                                       replace=None if replace is None else replace[0])
    final_lines(console, summary, final_out, quiet)
