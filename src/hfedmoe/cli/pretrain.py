"""`hfedmoe pretrain`: build (or reuse) a benchmark MoE, with progress and its report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

#: Plain-output mode (a log file, CI): one line every this many steps.
PLAIN_EVERY = 50


def render_report(console: Console, report: dict) -> None:
    """Per-domain perplexity and routing specialisation of a pretrained preset."""
    table = Table(title=f"{report['preset']} (seed {report['seed']}, {report['parameters']:,} parameters, "
                        f"{report['num_experts']} experts, top-{report['top_k']}): held-out windows per domain")
    table.add_column("domain")
    table.add_column("perplexity", justify="right")
    for d, v in report["perplexity"].items():
        table.add_row(d, f"{v:.1f}")
    table.add_row("geometric mean", f"{report['perplexity_mean']:.1f}")
    console.print(table)
    nmi = ", ".join(f"{x:.3f}" for x in report["nmi_domain_expert"])
    ent = ", ".join(f"{x:.3f}" for x in report["usage_entropy"])
    console.print(f"routing per layer: NMI(domain, top-1 expert) {nmi} (0 = routing ignores the domain, "
                  f"1 = one expert per domain); usage entropy {ent} (1 = even load)", highlight=False)


def run_pretrain(preset: str, seed: int, console: Console, quiet: bool) -> Path:
    """Build ``preset`` (progress on ``console``) or reuse the cached one; print its report."""
    from hfedmoe.pretrain.presets import get_preset, preset_dir
    from hfedmoe.pretrain.train import pretrain

    p = get_preset(preset, field="--preset")
    out = preset_dir(preset, seed)
    cached = (out / "pretrain.json").is_file()
    if not quiet:
        what = "cached" if cached else f"building: {p.steps} steps of {p.batch_size} x {p.seq_len} tokens"
        console.print(f"{preset} (seed {seed}): {what} -> {out}", highlight=False)
    live = console.is_terminal and not quiet
    t0 = time.perf_counter()
    with Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                  disable=not live) as progress:
        task = progress.add_task("pretrain", total=p.steps, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, info=f"loss {loss:.3f}")
            if not live and not quiet and (step % PLAIN_EVERY == 0 or step == total):
                console.print(f"step {step}/{total}: loss {loss:.3f}, {time.perf_counter() - t0:.0f} s", highlight=False)

        path = pretrain(preset, seed, on_step=on_step)
    if not quiet:
        render_report(console, json.loads((path / "pretrain.json").read_text()))
        console.print(f"use it: model.name = \"scratch-moe\", model.preset = \"{preset}\" (data.dataset = \"domains8\")",
                      highlight=False, markup=False)
    return path
