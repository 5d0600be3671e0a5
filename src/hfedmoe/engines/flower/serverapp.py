"""The Flower ServerApp: the in-process engine's run loop (sampling, budgets, metrics.jsonl,
checkpoints, resume, report inputs) with local training replaced by Flower messages.

:class:`FlowerRun` is a :class:`~hfedmoe.engines.simulation.Simulation` whose ``run_round`` sends
the round through :class:`~hfedmoe.engines.flower.strategy.HFedMoEStrategy` and whose per-client
validation is federated evaluation; everything else (planning, the metrics row, evaluation on the
test set, checkpoints) is the in-process engine's code. A causal LM's per-client validation
perplexity is federated evaluation too; test and held-out perplexity the server computes itself.

``app`` is the ServerApp that ``flwr run`` starts, in a deployment and for flower-sim (run config
keys, declared in ``app/pyproject.toml``: ``config`` = a TOML preset, ``out`` = the run directory,
``server-data`` = the server's file of node-local data (then each SuperNode reads only its own
``data-path``; see :mod:`hfedmoe.federation.node_data`), ``overrides`` = ``;``-separated
``key=value``, ``resume`` (with ``allow-change``, ``discard-invalid``), ``report`` = write the
report at the end, ``events`` = a file for progress events, ``replace`` = the run folder a staging
``out`` replaces after round 0, and any dotted config field, e.g. ``federation.rounds``: see
:func:`run_overrides`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from hfedmoe.config import RunConfig, load_config
from hfedmoe.engines.flower.local_sim import EventLog
from hfedmoe.engines.flower.nodes import NodeMeta
from hfedmoe.engines.flower.strategy import HFedMoEStrategy
from hfedmoe.engines.shared import ClientSummary, RoundResult
from hfedmoe.engines.resume import check_allow_change
from hfedmoe.engines.runlock import replace_run
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.data import FederationData
from hfedmoe.federation.node_data import load_server_data

log = logging.getLogger(__name__)


class FlowerRun(Simulation):
    """One federated run whose clients are Flower nodes (see the module docstring)."""

    def __init__(self, cfg: RunConfig, out_dir: Path, *, server_data: str | Path | None = None, **kw: Any) -> None:
        # server_data: the server's file of node-local data (federation/node_data.py); None: the
        # server partitions the whole data itself (flower-sim, and parity tests)
        self.server_data = server_data
        self.client_meta: dict[int, NodeMeta] = {}  # client id -> what its node reported
        super().__init__(cfg, out_dir, **kw)
        if self.method.pools_data:
            raise HFedMoEError(f"engine.name: expected 'simulation' for method.name = {cfg.method.name!r}, got "
                               f"{cfg.engine.name!r}")
        self.strategy = HFedMoEStrategy(self)
        self.grid: Grid | None = None

    def data_source(self, cfg: RunConfig) -> tuple[int, Callable[[Any], FederationData]]:
        if self.server_data is None:
            return super().data_source(cfg)
        sd = load_server_data(self.server_data, cfg)  # the test and public splits only
        return len(sd.label_names), lambda tokenizer: sd.federation(list(cfg.clients.profiles))

    def num_train(self, cid: int) -> int:
        """With node-local data: the size the client's node reported (0 before any node holds it:
        such a client fails its round as offline)."""
        return super().num_train(cid) if self.server_data is None else self._reported(cid, "num_train")

    def num_val(self, cid: int) -> int:  # with node-local data: the size its node reported
        return super().num_val(cid) if self.server_data is None else self._reported(cid, "num_val")

    def _reported(self, cid: int, field: str) -> int:
        meta = self.client_meta.get(cid)
        return getattr(meta, field) if meta is not None else 0

    def _grid(self) -> Grid:
        if self.grid is None:
            raise HFedMoEError("flower: the run has no Grid (start it through HFedMoEStrategy.start)")
        return self.grid

    def run_round(self, round_idx: int) -> RoundResult:
        t0 = time.perf_counter()
        grid, s = self._grid(), self.strategy
        msgs = s.configure_train(round_idx, ArrayRecord(), ConfigRecord(), grid)
        replies = grid.send_and_receive(msgs, timeout=self.cfg.engine.round_timeout_s)
        s.aggregate_train(round_idx, replies)
        st = s.state
        summaries = [ClientSummary.of(u) for u in st.updates]
        result = self.finish_round(round_idx, t0, st.sampled, summaries, st.client_times,
                                   sum(st.down[u.client_id] for u in st.updates), sorted(st.failed),
                                   st.dropped, st.agg_metrics)
        result.row["wire_download_bytes"] = {str(c): b for c, b in st.wire_down.items()}
        result.row["wire_upload_bytes"] = {str(c): b for c, b in st.wire_up.items()}
        result.row["failed_reasons"] = {str(c): r for c, r in st.reasons.items()}
        return result

    def client_val_accuracies(self) -> list[float]:
        return self._federated_eval("client_val_accuracy")

    def client_val_perplexities(self) -> list[float]:
        """Causal LM: each client's node evaluates its own validation split (the server holds none)."""
        return self._federated_eval("client_val_perplexity")

    def _federated_eval(self, key: str) -> list[float]:
        grid, s = self._grid(), self.strategy
        msgs = s.configure_evaluate(self.round, ArrayRecord(), ConfigRecord(), grid)
        replies = grid.send_and_receive(msgs, timeout=self.cfg.engine.round_timeout_s)
        metrics = s.aggregate_evaluate(self.round, replies)
        return list(metrics[key])


def run_overrides(run_config: dict[str, Any]) -> list[str]:
    """``--set`` overrides from a Flower run config: the ``;``-separated ``overrides`` string, then
    every dotted key (``federation.rounds``, ``train.lr``, ...: the app's pyproject lists the common
    ones) whose value is not ``""`` (= keep the preset's value), typed as Flower typed it."""
    out = [x for x in str(run_config.get("overrides", "")).split(";") if x.strip()]
    for key, value in run_config.items():
        if "." in key and value != "":
            literal = json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(
                value, bool) else repr(value)
            out.append(f"{key}={literal}")
    return out


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp ``flwr run`` starts (deployment and flower-sim): the run config names the preset
    and the run folder; ``events`` a file for the progress events (see ``local_sim.py``)."""
    rc = context.run_config
    events = EventLog(str(rc.get("events", "")))
    try:
        run = _serve(grid, rc, events)
        summary = None
        if bool(rc.get("report", False)):
            from hfedmoe.report.run_summary import write_report

            summary = write_report(run)
        events.write({"kind": "end", "summary": summary})
    except BaseException as exc:
        events.write({"kind": "error", "user": isinstance(exc, HFedMoEError), "type": type(exc).__name__,
                      "message": str(exc)})
        raise


def _serve(grid: Grid, rc: dict[str, Any], events: EventLog) -> FlowerRun:
    cfg = load_config(str(rc["config"]), run_overrides(rc))
    out = Path(str(rc["out"]))
    # "server-data": the server's file of node-local data; each SuperNode reads its own data-path
    run = FlowerRun(cfg, out, server_data=str(rc["server-data"]) if rc.get("server-data") else None)
    if events:
        from hfedmoe.report.run_summary import banner_lines

        events.write({"kind": "run_start", "lines": banner_lines(run, cfg)})
    run.on_event = events.write
    if rc.get("replace"):  # `out` is a staging folder: it replaces the run folder once round 0 is written
        run.on_event = _replacing(run, Path(str(rc["replace"])), events)
    if bool(rc.get("resume", False)):
        # "allow-change": ';'-separated safe fields that may differ from the checkpoint's config
        allow = {x.strip() for x in str(rc.get("allow-change", "")).split(";") if x.strip()}
        check_allow_change(allow)
        start = run.restore(discard_invalid=bool(rc.get("discard-invalid", False)), allow_change=allow)
        events.write({"kind": "restored", "start": start, "notes": list(run.restore_notes)})
    run.strategy.start(grid, num_rounds=cfg.federation.rounds)
    if run.round < cfg.federation.rounds:
        raise HFedMoEError(f"engine.name = {cfg.engine.name!r}: the run stopped at round {run.round} of "
                           f"{cfg.federation.rounds} (see the log)")
    return run


def _replacing(run: FlowerRun, target: Path, events: EventLog) -> Callable[[dict[str, Any]], None]:
    """An event handler that, on the first ``round_end``, moves the staging run folder over ``target``
    (:func:`~hfedmoe.engines.runlock.replace_run`) and tells the CLI (``swapped``)."""
    def on_event(ev: dict[str, Any]) -> None:
        events.write(ev)
        if ev["kind"] == "round_end" and run.out_dir != target:
            old = replace_run(run.out_dir, target)
            run.out_dir = target
            events.write({"kind": "swapped", "old": str(old)})

    return on_event
