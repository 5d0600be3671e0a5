"""The hfedmoe Flower strategy: one Message per node with that client's own budget, plan and (in
restrict mode) only the experts it may hold; aggregation by the project's method code.

Flower's built-in FedAvg cannot do this: it sends every node the same arrays, rejects replies whose
ArrayRecords have different keys and averages every key over every reply. Here each reply carries
only the experts its client trained, and :func:`_aggregate` hands the decoded updates to the same
``Method`` object the in-process engine uses (no second implementation of any equation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from hfedmoe.client import ClientUpdate
from hfedmoe.config import config_to_dict
from hfedmoe.engines.flower.codec import (
    CodecError,
    model_to_record,
    plan_to_json,
    record_to_update,
    wire_bytes,
)
from hfedmoe.engines.flower.nodes import NodeMeta, assign_clients, node_meta, partition_hint, wait_for_nodes
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.budgeting import download_bytes
from hfedmoe.methods.base import ClientInfo
from hfedmoe.moe import MoEModel

if TYPE_CHECKING:  # pragma: no cover
    from hfedmoe.engines.flower.serverapp import FlowerRun

log = logging.getLogger(__name__)

HELLO, TRAIN, EVALUATE = "query.hello", "train", "evaluate"


def _aggregate(run: Any, updates: list[ClientUpdate], round_idx: int) -> dict[str, Any]:
    """THE aggregation call of the Flower engine: the in-process engine's streaming path (each
    update through ``run.receive`` into the method's running sums, then ``finish``)."""
    if not updates:
        return {}
    aggregation = run.open_round_aggregation(round_idx)
    for update in updates:
        run.receive(aggregation, update)
    return aggregation.finish()


def _validate(update: ClientUpdate, mm: MoEModel, expected: ClientInfo) -> str | None:
    """Why a decoded reply cannot be aggregated (None: it can). THE validation call of the Flower
    engine: shapes against the live model, statistics of shape (L, E), finite values, the experts
    it sends are the ones it marks trained, the client is the one asked."""
    L, E = mm.num_layers, mm.num_experts
    if update.client_id != expected.client_id:
        return f"client_id {update.client_id}, expected {expected.client_id}"
    if update.num_examples != expected.num_examples:
        return f"num_examples {update.num_examples}, expected {expected.num_examples}"
    for name in ("usage", "importance", "trained", "selected_counts"):
        t = getattr(update, name)
        if tuple(t.shape) != (L, E):
            return f"{name}: shape {tuple(t.shape)}, expected {(L, E)}"
        if t.is_floating_point() and not torch.isfinite(t).all():
            return f"{name}: non-finite values"
    if update.trained.dtype != torch.bool:
        return f"trained: dtype {update.trained.dtype}, expected torch.bool"
    marked = {tuple(x) for x in update.trained.nonzero().tolist()}
    if set(update.experts) != marked:
        return f"experts sent {sorted(update.experts)[:4]} differ from those marked trained {sorted(marked)[:4]}"
    for (layer, e), tensors in update.experts.items():
        live = mm.get_expert(layer, e)
        if set(tensors) != set(live):
            return f"expert ({layer}, {e}): tensors {sorted(tensors)}, expected {sorted(live)}"
        for name, t in tensors.items():
            if t.shape != live[name].shape or t.dtype != live[name].dtype:
                return f"expert ({layer}, {e}).{name}: {t.dtype}{tuple(t.shape)}, expected {live[name].dtype}{tuple(live[name].shape)}"
            if not torch.isfinite(t).all():
                return f"expert ({layer}, {e}).{name}: non-finite values"
    for layer, tensors in update.routers.items():
        if not 0 <= layer < L:
            return f"router layer {layer} out of range"
        live = mm.router_state(layer)
        for name, t in tensors.items():
            if name not in live or t.shape != live[name].shape or not torch.isfinite(t).all():
                return f"router {layer}.{name}: unexpected, wrong shape or non-finite"
    params = mm.dense_named_parameters()
    for name, t in update.dense.items():
        if name not in params or t.shape != params[name].shape or not torch.isfinite(t).all():
            return f"dense {name}: unknown, wrong shape or non-finite"
    return None


@dataclass
class RoundState:
    """What one round's configure_train hands to aggregate_train and to the metrics row."""

    sampled: list[int] = field(default_factory=list)
    infos: dict[int, ClientInfo] = field(default_factory=dict)  # cid -> what was sent
    plans: dict[int, Any] = field(default_factory=dict)  # cid -> its TrainPlan (what it may train)
    down: dict[int, int] = field(default_factory=dict)  # cid -> modelled download bytes
    failed: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    updates: list[ClientUpdate] = field(default_factory=list)
    client_times: dict[int, tuple[float, float]] = field(default_factory=dict)  # (compute s, link s)
    agg_metrics: dict[str, Any] = field(default_factory=dict)
    wire_down: dict[int, int] = field(default_factory=dict)  # cid -> serialised bytes sent
    wire_up: dict[int, int] = field(default_factory=dict)  # cid -> serialised bytes received
    reasons: dict[int, str] = field(default_factory=dict)  # cid -> why it failed the round
    client_of: dict[int, int] = field(default_factory=dict)  # node id -> the client it was asked to train


class HFedMoEStrategy(Strategy):
    """Drives one :class:`FlowerRun`: its method, model, budgets and metrics (the engine's own
    strategy; in your own ServerApp use :class:`~hfedmoe.engines.flower.moe_strategy.HFedMoE`)."""

    def __init__(self, run: FlowerRun) -> None:
        self.run = run
        self.node_of: dict[int, int] = {}  # client id -> node id (assigned by connect/_adopt)
        self._eval_client_of: dict[int, int] = {}  # node id -> client it evaluates this round
        self._asked: set[int] = set()  # nodes sent a hello (each once)
        self._hints: dict[int, Any] = {}  # node id -> the partition it suggested (nodes that answered)
        self._meta: dict[int, NodeMeta] = {}  # node id -> sizes it reported (node-local data)
        self.state = RoundState()
        self._config_toml = _toml(run)

    # --- nodes ---------------------------------------------------------------------------
    def connect(self, grid: Grid) -> None:
        """Wait (at most ``engine.connect_timeout_s``) for one node per client, then assign client
        ids to the nodes that answer (:mod:`~hfedmoe.engines.flower.nodes`). Fewer than
        ``engine.min_clients`` answering nodes: :class:`HFedMoEError`; otherwise the clients
        without a node fail their rounds until a node joins (checked every round)."""
        e = self.run.cfg.engine
        deadline = time.monotonic() + e.connect_timeout_s
        nodes = wait_for_nodes(grid, len(self.run.fed.clients), e.min_clients, e.connect_timeout_s)
        self._adopt(grid, nodes, max(1.0, deadline - time.monotonic()))
        self._require(self._live(grid), "after start-up")
        log.info("flower: clients -> nodes: %s", {c: self.node_of[c] for c in sorted(self.node_of)})

    def _adopt(self, grid: Grid, nodes: Iterable[int], timeout: float) -> None:
        """Give the clients without a live node to live ``nodes`` no client is assigned to. A node
        is asked for its suggestion (hello) once, at most ``timeout`` seconds; one that does not
        answer, or answers with an error, is never used (so no later round waits for it again)."""
        live = set(self._live(grid))
        held = {nd for nd in self.node_of.values() if nd in live}
        free = [c for c in range(len(self.run.fed.clients)) if self.node_of.get(c) not in live]
        ask = [nd for nd in nodes if nd not in held and nd not in self._asked]
        if not free:
            return
        if ask:
            self._asked.update(ask)
            msgs = [Message(RecordDict({"hello": ConfigRecord({})}), nd, HELLO) for nd in ask]
            for reply in grid.send_and_receive(msgs, timeout=timeout):
                node = int(reply.metadata.src_node_id)
                if node not in ask:
                    continue
                if reply.has_error():
                    log.warning("flower: node %s: hello failed: %s", node, reply.error.reason)
                    continue
                if self.run.server_data is not None:  # node-local data: its sizes, or it cannot train
                    meta = node_meta(reply, self.run.fed.num_labels)
                    if isinstance(meta, str):
                        log.warning("flower: node %s: %s; not used", node, meta)
                        continue
                    self._meta[node] = meta
                self._hints[node] = partition_hint(reply)
            silent = sorted(set(ask) - set(self._hints))
            if silent:
                log.warning("flower: nodes %s did not answer the hello within %.0f s; not used", silent, timeout)
        spare = {nd: self._hints[nd] for nd in nodes if nd in self._hints and nd not in held and nd in live}
        assigned = assign_clients(free, spare)
        self.node_of.update(assigned)
        self.run.client_meta.update({cid: self._meta[nd] for cid, nd in assigned.items() if nd in self._meta})

    def _require(self, live: set[int], when: str) -> None:
        ok = sum(1 for nd in self.node_of.values() if nd in live)
        need = self.run.cfg.engine.min_clients
        if ok < need:
            raise HFedMoEError(f"engine.min_clients: expected at least {need} clients with a live node {when}, "
                               f"got {ok} (nodes lost or not answering)")

    def _live(self, grid: Grid) -> set[int]:
        return {int(n) for n in grid.get_node_ids()}

    # --- training ------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One Message per training client: its global model (only its experts when the method
        restricts it), its budget, its plan, its seed, and the run config."""
        del arrays, config  # the global model lives in the run's model; per-node records are built here
        run, mm = self.run, self.run.mm
        live = self._live(grid)
        if any(self.node_of.get(c) not in live for c in range(len(run.fed.clients))):
            self._adopt(grid, sorted(live), run.cfg.engine.connect_timeout_s)  # nodes that (re)joined
        self._require(live, f"in round {server_round}")
        sampled, training, failed, dropped = run.plan_round(server_round)  # after: sizes of joined nodes
        run.guard.begin_round(mm)  # the global reference replies are checked against
        st = RoundState(sampled=sampled, failed=failed, dropped=dropped)
        full_down = download_bytes(mm)
        msgs = []
        for cinfo in training:
            cid = cinfo.client_id
            if self.node_of.get(cid) not in live:
                st.failed.append(cid)
                st.reasons[cid] = "node offline"
                run.on_event({"kind": "client_failed", "round": server_round, "client": cid,
                              "reason": "node offline"})
                continue
            plan = run.make_plan(cinfo, server_round)
            st.plans[cid] = plan
            cfg = ConfigRecord({
                "run_config": self._config_toml, "round": server_round, "client_id": cid,
                "budget": int(cinfo.budget), "num_examples": int(cinfo.num_examples), "profile": cinfo.profile,
                "seed": run.client_seed(server_round, cid), "plan": plan_to_json(plan),
                "nonce": run.guard.nonce(cid),  # echoed in the reply: a stale or replayed one is rejected
            })
            content = RecordDict({"model": model_to_record(mm, plan.restrict), "config": cfg})
            st.infos[cid] = cinfo
            st.down[cid] = run.method.download_bytes(mm, cinfo, full_down)
            st.wire_down[cid] = wire_bytes(content)
            run.on_event({"kind": "client_start", "round": server_round, "client": cid})
            st.client_of[self.node_of[cid]] = cid
            msgs.append(Message(content, self.node_of[cid], TRAIN, group_id=str(server_round)))
        self.state = st
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode and validate each reply; aggregate the valid ones with the method. A client
        whose reply is missing, an error, or malformed fails the round (reason logged)."""
        st, run = self.state, self.run
        by_client: dict[int, ClientUpdate] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            cid = st.client_of.get(node)
            if cid is None or cid in by_client or cid in st.reasons:
                log.warning("round %d: unexpected or repeated reply from node %s ignored", server_round, node)
                continue
            if reply.has_error():
                self._reject(server_round, cid, f"client error: {reply.error.reason}")
                continue
            try:  # any exception a hostile or broken record raises fails this client only
                upd = record_to_update(reply.content)
            except Exception as exc:  # noqa: BLE001
                msg = str(exc) if isinstance(exc, CodecError) else f"{type(exc).__name__}: {exc}"
                self._reject(server_round, cid, f"malformed reply: {msg}")
                continue
            try:
                reason = _validate(upd, run.mm, st.infos[cid])
                if reason is None:  # the in-process engine's checks (core/validation.py) as well
                    reason = run.guard.receive(server_round, run.mm, st.infos[cid], st.plans[cid], upd)
            except Exception as exc:  # noqa: BLE001
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                self._reject(server_round, cid, f"invalid update: {reason}")
                continue
            st.wire_up[cid] = wire_bytes(reply.content)
            by_client[cid] = upd
        for cid in st.infos:
            if cid not in by_client and cid not in st.failed:
                self._reject(server_round, cid, "no reply (node lost, or engine.round_timeout_s passed)")
        # the in-process order (sampled order) so that float sums run in the same order
        st.updates = [by_client[c] for c in st.infos if c in by_client]
        for u in st.updates:
            st.client_times[u.client_id] = run.client_sim_seconds(u.client_id, u, st.down[u.client_id])
        st.agg_metrics = _aggregate(run, st.updates, server_round)
        metrics = {k: float(v) for k, v in st.agg_metrics.items() if isinstance(v, (int, float))}
        return None, MetricRecord(metrics)

    def _reject(self, server_round: int, cid: int, reason: str) -> None:
        log.warning("round %d: client %d failed: %s", server_round, cid, reason)
        self.state.failed.append(cid)
        self.state.reasons[cid] = reason
        self.run.on_event({"kind": "client_failed", "round": server_round, "client": cid, "reason": reason})

    # --- evaluation ----------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The full global model to every live node, which evaluates it on the validation split of
        the client it holds (named in the message)."""
        del arrays, config
        model = model_to_record(self.run.mm)
        live = self._live(grid)
        self._eval_client_of = {nd: cid for cid, nd in self.node_of.items() if nd in live}
        return [Message(RecordDict({"model": model, "config": ConfigRecord({
                    "run_config": self._config_toml, "round": server_round, "client_id": cid})}),
                        node, EVALUATE, group_id=f"eval-{server_round}")
                for cid, node in sorted(self.node_of.items()) if node in live]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per-client validation accuracy in [0, 1] (a causal LM: perplexity, at least 1, or NaN from
        a node without validation tokens); NaN for a client that did not answer or answered something
        other than one such value."""
        if self.run.cfg.model.task == "causal-lm":
            key, fits = "perplexity", lambda v: v != v or 1.0 <= v < float("inf")
        else:
            key, fits = "accuracy", lambda v: 0.0 <= v <= 1.0
        values = [float("nan")] * len(self.run.fed.clients)
        for reply in replies:
            node = reply.metadata.src_node_id
            cid = self._eval_client_of.get(node)
            if cid is None:
                continue
            if reply.has_error():
                log.warning("round %d: evaluation failed on node %s: %s", server_round, node, reply.error.reason)
                continue
            try:
                value = reply.content.metric_records["eval"][key]
                ok = isinstance(value, (int, float)) and fits(float(value))
            except Exception:  # noqa: BLE001 (a malformed reply is a missing value)
                ok = False
            if not ok:
                log.warning("round %d: malformed evaluation reply from node %s ignored", server_round, node)
                continue
            values[cid] = float(value)
        return MetricRecord({f"client_val_{key}": values})

    # --- the run -------------------------------------------------------------------------
    def summary(self) -> None:
        log.info("HFedMoEStrategy: method %s, %d clients, rounds %d", self.run.method.name,
                 len(self.run.fed.clients), self.run.cfg.federation.rounds)

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        """Run (or continue from the last checkpoint) through the project's run loop, which calls
        configure_train / aggregate_train / configure_evaluate / aggregate_evaluate each round and
        writes metrics.jsonl and checkpoints exactly as the in-process engine does."""
        del initial_arrays, timeout, train_config, evaluate_config, evaluate_fn
        t0 = time.perf_counter()
        self.summary()
        self.connect(grid)
        self.run.grid = grid
        self.run.run(num_rounds)
        log.info("flower: run finished in %.1f s", time.perf_counter() - t0)
        return Result()


def _toml(run: FlowerRun) -> str:
    import tomli_w

    return tomli_w.dumps(config_to_dict(run.cfg))
