"""Progress for the CLI: round, client, step, loss, a whole-run ETA; one summary line per round.

The ETA (:class:`RunClock`) counts the run in fractional rounds: the in-process engine reports
each client's place in its round and its steps, so an estimate exists after the first client
updates (before any round has finished, one round-0 evaluation per remaining round is added).

On a terminal: a live rich display. Otherwise (a log file, a pipe, CI): plain unwrapped lines, one
per client update with its steps, loss and wall time, plus a heartbeat line for a client still
training after :data:`HEARTBEAT_S` seconds, so a long round never prints nothing.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hfedmoe.report.classes import human_duration

#: Seconds between "still training" lines of one client when output is not a terminal.
HEARTBEAT_S = 60.0


class RunClock:
    """Whole-run ETA from the fraction of rounds done since the first round started in this process."""

    def __init__(self, now=time.perf_counter) -> None:
        self.now = now
        self.t0: float | None = None
        self.start = 0.0  # rounds done when the clock started (a resumed run starts later)
        self.done = 0.0
        self.total = 0
        self.eval_s = 0.0  # round 0's evaluation: every round ends with one
        self.rounds_finished = 0
        self._client: tuple[int, int] | None = None  # (index, of) of the client training now

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev["kind"]
        if kind == "round_start":
            self.total = int(ev["rounds"])
            self.done = ev["round"] - 1.0
            if self.t0 is None:
                self.t0, self.start = self.now(), self.done
        elif kind == "client_start" and "of" in ev:
            self._client = (int(ev["index"]), max(int(ev["of"]), 1))
            self.done = ev["round"] - 1 + self._client[0] / self._client[1]
        elif kind == "step" and self._client is not None and ev.get("steps"):
            i, n = self._client
            self.done = ev["round"] - 1 + (i + ev["step"] / ev["steps"]) / n
        elif kind == "round_end":
            self._client = None
            if ev["round"] == 0:
                self.eval_s = float(ev["row"].get("wall_time_s") or 0.0)
            else:
                self.done = float(ev["round"])
                self.rounds_finished += 1

    def eta_s(self) -> float | None:
        """Seconds left for the whole run (None before the first client update)."""
        if self.t0 is None or self.done <= self.start:
            return None
        rate = (self.now() - self.t0) / (self.done - self.start)  # seconds per round so far
        left = self.total - self.done
        extra = 0.0 if self.rounds_finished else self.eval_s * (self.total - int(self.done))
        return max(0.0, rate * left + extra)

    def text(self) -> str:
        eta = self.eta_s()
        return "" if eta is None else f"run ETA {human_duration(eta)}"


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
            console=console,
            transient=True,
            disable=quiet or not self.live,
        )
        self.rounds_task = None
        self.steps_task = None
        self.clock = RunClock()

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
        eta = self.clock.text()
        self._line(f"round {c['round']} client {c['client']}: {steps}{loss}, {time.perf_counter() - c['t0']:.1f} s"
                   + (f", {eta}" if eta else ""))

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
                eta = self.clock.text()
                self._line(f"round {c['round']} client {c['client']}: step {c['step']}/{c['steps']}, "
                           f"loss {c['loss']:.3f}, {now - c['t0']:.0f} s so far" + (f", {eta}" if eta else ""))
        elif kind in ("round_end", "client_failed"):
            self._end_client()

    def on_event(self, ev: dict[str, Any]) -> None:
        if self.quiet:
            return
        self.clock.event(ev)
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
            if self.rounds_task is not None:
                self.progress.update(self.rounds_task, info=self.clock.text())
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
            eta = self.clock.text() if ev["round"] < ev.get("rounds", 0) else ""
            self.console.print(f"round {ev['round']:>3}: {acc_s}{extra}  sim {row['sim_time_s']:.0f}s"
                               + (f"  {eta}" if eta else ""), highlight=False, markup=False)
