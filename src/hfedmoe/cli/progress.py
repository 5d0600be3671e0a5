"""Live progress for the CLI: round, client, step, loss, ETA; one summary line per round."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.rounds_task = None
        self.steps_task = None

    def __enter__(self) -> "RunProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, ev: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = ev["kind"]
        if kind == "round_start":
            if self.rounds_task is None:
                self.rounds_task = self.progress.add_task("rounds", total=ev["rounds"], completed=ev["round"] - 1,
                                                          info="")
        elif kind == "client_start":
            if self.steps_task is not None:
                self.progress.remove_task(self.steps_task)
            self.steps_task = self.progress.add_task(f"round {ev['round']} client {ev['client']}", total=None,
                                                     info="")
        elif kind == "step" and self.steps_task is not None:
            self.progress.update(self.steps_task, total=ev["steps"], completed=ev["step"],
                                 info=f"loss {ev['loss']:.3f}")
        elif kind == "client_failed":
            self.console.print(f"  round {ev['round']}: client {ev['client']} failed ({ev['reason']})")
        elif kind == "round_end":
            row = ev["row"]
            if self.rounds_task is not None:
                self.progress.update(self.rounds_task, completed=ev["round"])
            acc = row.get("test_accuracy")
            acc_s = f"test acc {100 * acc:.1f}%  loss {row['test_loss']:.3f}" if acc is not None else "no eval"
            if row.get("test_perplexity") is not None:  # causal LM
                acc_s = f"test ppl {row['test_perplexity']:.2f}  worst client ppl {row['client_val_perplexity_max']:.2f}"
                if row.get("heldout_perplexity") is not None:
                    acc_s += f"  held-out ppl {row['heldout_perplexity']:.2f}"
            tl = row.get("train_loss")
            extra = f"  train loss {tl:.3f}" if tl is not None else ""
            cmin = row.get("client_val_accuracy_min")
            if cmin is not None:
                extra += f"  client val min/mean {100 * cmin:.1f}/{100 * row['client_val_accuracy_mean']:.1f}%"
            failed = row.get("failed_clients") or []
            if failed:
                extra += f"  failed {failed}"
            self.console.print(f"round {ev['round']:>3}: {acc_s}{extra}  sim {row['sim_time_s']:.0f}s")
