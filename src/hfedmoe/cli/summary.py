"""What `hfedmoe run` / `resume` print: the banner lines, the closing lines (the report itself:
:mod:`hfedmoe.report.run_summary`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console

# kept importable from here (tests and other code import write_report from this module)
from hfedmoe.report.run_summary import banner_lines, budget_text, write_report  # noqa: F401


def print_banner(console: Console, err_console: Console, lines: list[tuple[str, bool]]) -> None:
    for text, warn in lines:
        (err_console if warn else console).print(text, highlight=False, markup=True)


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
        if summary.get("selected_round") is not None:
            console.print(f"kept model: round {summary['selected_round']} (best mean client validation perplexity "
                          f"{summary['selected_val_score']:.2f}), test perplexity "
                          f"{summary.get('selected_test_perplexity') or float('nan'):.2f}")
        console.print(f"report: {out / 'report.md'}")
        return
    console.print(
        f"[bold]done[/]: test accuracy {100 * (acc0 or 0):.1f}% (round 0) -> {100 * (acc or 0):.1f}% "
        f"(majority class {100 * summary['majority_rate']:.1f}%), "
        f"macro-F1 {100 * (summary.get('final_test_macro_f1') or 0):.1f}%, "
        f"simulated {summary['sim_time_s']:.0f} s, wall {summary.get('wall_time_human', summary['wall_time_s'])}"
    )
    if summary.get("selected_round") is not None and summary.get("selected_test_accuracy") is not None:
        console.print(f"kept model: round {summary['selected_round']} (best pooled client validation accuracy "
                      f"{100 * summary['selected_val_score']:.1f}%), test accuracy "
                      f"{100 * summary['selected_test_accuracy']:.1f}%, macro-F1 "
                      f"{100 * (summary.get('selected_test_macro_f1') or 0):.1f}%")
    for w in summary.get("warnings") or []:
        sys.stderr.write(f"warning: {w}\n")
    console.print(f"report: {out / 'report.md'}")
