"""Progress for the CLI: round, client, step, loss, ETA; one summary line per round.

On a terminal: a live rich display. Otherwise (a log file, a pipe, CI): plain unwrapped lines, one
per client update with its steps, loss and wall time, plus a heartbeat line for a client still
training after :data:`HEARTBEAT_S` seconds, so a long round never prints nothing.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


#: Seconds between "still training" lines of one client when output is not a terminal.
HEARTBEAT_S = 60.0


class RunProgress:
    def __init__(self, console: Console, *, quiet: bool = False, live: bool | None = None) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal if live is None else live
        self._client: dict[str, Any] | None = None  # the client training now (plain mode)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=quiet or not self.live,
        )
        self.rounds_task = None
        self.steps_task = None

    def __enter__(self) -> "RunProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _end_client(self) -> None:
        c, self._client = self._client, None
        if c is None:
            return
        steps = f"{c['step']}/{c['steps']} steps" if c["steps"] else "0 steps"
        loss = f", loss {c['loss']:.3f}" if c["loss"] is not None else ""
        self._line(f"round {c['round']} client {c['client']}: {steps}{loss}, {time.perf_counter() - c['t0']:.1f} s")

    def _plain(self, ev: dict[str, Any]) -> None:
        kind = ev["kind"]
        now = time.perf_counter()
        if kind == "round_start":
            self._line(f"round {ev['round']}/{ev['rounds']} started")
        elif kind == "client_start":
            self._end_client()
            self._client = {"round": ev["round"], "client": ev["client"], "t0": now, "last": now, "step": 0,
                            "steps": 0, "loss": None}
        elif kind == "step" and self._client is not None:
            c = self._client
            c.update(step=ev["step"], steps=ev["steps"], loss=ev["loss"])
            if now - c["last"] >= HEARTBEAT_S:
                c["last"] = now
                self._line(f"round {c['round']} client {c['client']}: step {c['step']}/{c['steps']}, "
                           f"loss {c['loss']:.3f}, {now - c['t0']:.0f} s so far")
        elif kind in ("round_end", "client_failed"):
            self._end_client()

    def on_event(self, ev: dict[str, Any]) -> None:
        if self.quiet:
            return
        if not self.live:
            self._plain(ev)
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
            self.console.print(f"  round {ev['round']}: client {ev['client']} failed ({ev['reason']})",
                               highlight=False, markup=False)
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
            f1 = row.get("test_macro_f1")
            if f1 is not None:
                acc_s += f"  macro-F1 {100 * f1:.1f}%"
            self.console.print(f"round {ev['round']:>3}: {acc_s}{extra}  sim {row['sim_time_s']:.0f}s",
                               highlight=False, markup=False)
