"""What `hfedmoe run` / `resume` print and write when a run ends: the report, the closing lines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console


def write_report(sim: Any) -> dict[str, Any]:
    """Write the run's report.md (and summary) from a finished run; returns the summary."""
    from hfedmoe.report.run_report import write_run_report
    from hfedmoe.report.settings import data_context, key_settings

    clients = [
        {"client_id": c.client_id, "profile": c.profile, "num_train": len(c.train_idx), "num_val": len(c.val_idx),
         "budget": b.budget, "fits_full": b.fits_full, "name": getattr(c, "name", "")}
        for c, b in zip(sim.fed.clients, sim.budgets)
    ]
    lm = sim.fed.layout is not None  # causal LM: no classes, no majority rate
    context = {"model": sim.model_description, "dataset": sim.fed.dataset.name, "clients": clients,
               "majority_rate": None if lm else sim.fed.majority_rate(), "num_test": len(sim.fed.test_idx),
               "label_names": list(sim.fed.dataset.label_names), "num_clients": len(clients),
               "num_examples": len(sim.fed.dataset), "budgets": [c["budget"] for c in clients],
               "settings": key_settings(sim.cfg, len(sim.fed.dataset), len(sim.fed.clients)),
               **data_context(sim.cfg, sim.fed)}
    if lm:
        context["lm_layout"] = sim.fed.layout.describe(sim.cfg.data.max_length)
        context["lm_tokens_kept_share"] = sim.fed.layout.kept_share
    return write_run_report(sim.out_dir, context)


def banner_lines(sim: Any, cfg: Any) -> list[tuple[str, bool]]:
    """What a run prints before it starts, as (rich markup text, a warning for stderr): the run
    line, and the memory plan (``hfedmoe plan``; a warning when it does not fit)."""
    from hfedmoe.federation.memory import plan_memory

    lines = [(f"[bold]hfedmoe[/] {cfg.method.name} | {sim.model_description} | {sim.fed.dataset.name}: "
              f"{len(sim.fed.clients)} clients, budgets {budget_text([b.budget for b in sim.budgets])}", False)]
    plan = plan_memory(cfg, sim.mm, sim.budgets, sim.device.type)
    tight = plan.process_peak > plan.machine_available
    lines.append((("warning: " if tight else "") + plan.header(), tight))
    return lines


def print_banner(console: Console, err_console: Console, lines: list[tuple[str, bool]]) -> None:
    for text, warn in lines:
        (err_console if warn else console).print(text, highlight=False, markup=True)


def budget_text(budgets: list[int]) -> str:
    """The budget list as it is for a few clients, as counts per budget for many."""
    if len(budgets) <= 16:
        return str(budgets)
    from collections import Counter

    return "{" + ", ".join(f"{b}: {n} clients" for b, n in sorted(Counter(budgets).items())) + "}"


def final_lines(console: Console, summary: dict[str, Any], out: Path, quiet: bool) -> None:
    """The run's closing lines: first and last test score, warnings, where the report is."""
    if quiet:
        return
    acc0, acc = summary.get("initial_test_accuracy"), summary.get("final_test_accuracy")
    if summary.get("initial_test_perplexity") is not None:  # causal LM
        h0, h1 = summary.get("initial_heldout_perplexity"), summary.get("final_heldout_perplexity")
        held = f"; held-out {h0:.2f} -> {h1:.2f}" if h0 is not None and h1 is not None else ""
        console.print(f"[bold]done[/]: test perplexity {summary['initial_test_perplexity']:.2f} (round 0) -> "
                      f"{summary['final_test_perplexity']:.2f}{held}; wall {summary['wall_time_s']:.0f} s")
        console.print(f"report: {out / 'report.md'}")
        return
    console.print(
        f"[bold]done[/]: test accuracy {100 * (acc0 or 0):.1f}% (round 0) -> {100 * (acc or 0):.1f}% "
        f"(majority class {100 * summary['majority_rate']:.1f}%), "
        f"macro-F1 {100 * (summary.get('final_test_macro_f1') or 0):.1f}%, "
        f"simulated {summary['sim_time_s']:.0f} s, wall {summary.get('wall_time_human', summary['wall_time_s'])}"
    )
    for w in summary.get("warnings") or []:
        sys.stderr.write(f"warning: {w}\n")
    console.print(f"report: {out / 'report.md'}")
