"""``HFedMoE``: a Flower Strategy for MoE fine-tuning that a Flower user drops into their own
ServerApp like Flower's ``FedAvg`` (no hfedmoe run object, no hfedmoe config file).

Server side::

    strategy = HFedMoE(mm, method="hfedmoe", budget=2)          # or method="fedavg", "flex-moe", ...
    result = strategy.start(grid, initial_arrays=ArrayRecord(mm.model.state_dict()), num_rounds=3,
                            timeout=600, evaluate_fn=central_eval)  # Flower's own Strategy.start loop

``configure_train`` sends the ``arrays`` it is given (the global model as a torch state dict) and
the ``config`` it is given, plus the client's plan under ``hfedmoe.*`` keys; ``aggregate_train``
decodes and validates every reply (a bad one fails that client only), aggregates with the
method, and returns the new global ArrayRecord and a MetricRecord. Client side, the user's
ClientApp answers with :func:`train_reply` (and :func:`evaluate_reply`). Client ids are assigned
by the server (node ids in order of first sight); budgets come from the server (``budget``).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from hfedmoe.client import TrainSettings, evaluate, train_client
from hfedmoe.client.tasks import evaluate_lm
from hfedmoe.config import config_from_dict, validate
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.engines.flower.codec import plan_from_json, plan_rule, plan_to_json, record_to_update, update_to_record
from hfedmoe.engines.flower.nodes import wait_for_nodes
from hfedmoe.engines.flower.strategy import _validate
from hfedmoe.errors import HFedMoEError
from hfedmoe.methods import make_method
from hfedmoe.methods._common import per_layer_budget, seed_of
from hfedmoe.methods.base import ClientInfo, open_aggregation
from hfedmoe.moe import MoEModel

log = logging.getLogger(__name__)

NUM_EXAMPLES = "num-examples"  # the weight key of Flower's own strategies


def _method_config(method: str, options: Mapping[str, Any]) -> Any:
    cfg = config_from_dict({"method": {"name": method, **dict(options)}})
    validate(cfg)
    return cfg.method


class HFedMoE(Strategy):
    """One of hfedmoe's methods (``method``: hfedmoe, hfedmoe-restrict, fedavg, flex-moe, fedmoe,
    random, ...) as a Flower Strategy over the MoE model ``mm`` (the server's copy: it receives
    the global arrays each round). ``budget``: trainable experts per layer (``budget_scope =
    "layer"``) for every client, a ``{client id: budget}`` mapping, or a function of the client id;
    None = every expert. ``method_options``: the ``[method]`` fields (beta, tau, lam, ...)."""

    def __init__(
        self,
        mm: MoEModel,
        method: str = "hfedmoe",
        budget: int | Mapping[int, int] | Callable[[int], int] | None = None,
        method_options: Mapping[str, Any] | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 1,
        min_available_nodes: int = 1,
        seed: int = 0,
        wait_for_nodes_s: float = 300.0,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
    ) -> None:
        self.mm = mm
        self.method_cfg = _method_config(method, method_options or {})
        self.method = make_method(self.method_cfg)
        self.method.seed = seed
        if self.method.pools_data:
            raise HFedMoEError(f"method: expected a federated method, got {method!r} (it pools the clients' data)")
        self.budget = budget
        if not 0.0 < fraction_train <= 1.0 or not 0.0 <= fraction_evaluate <= 1.0:
            raise HFedMoEError(f"fraction_train/fraction_evaluate: expected (0, 1] / [0, 1], got "
                               f"{fraction_train} / {fraction_evaluate}")
        self.fraction_train, self.fraction_evaluate = fraction_train, fraction_evaluate
        self.min_train_nodes, self.min_available_nodes = min_train_nodes, min_available_nodes
        self.seed, self.wait_for_nodes_s = seed, wait_for_nodes_s
        self.arrayrecord_key, self.configrecord_key = arrayrecord_key, configrecord_key
        self.client_of: dict[int, int] = {}  # node id -> client id (assigned here, in order of first sight)
        self._round: dict[int, ClientInfo] = {}  # node id -> what its client was asked this round
        self._global: dict[str, torch.Tensor] = {}  # the round's global state (restored before aggregating)
        self.failed: dict[int, dict[int, str]] = {}  # round -> {client id: reason}

    def summary(self) -> None:
        log.info("HFedMoE strategy: method %s, fraction_train %.2f, budget %s", self.method.name,
                 self.fraction_train, self.budget if not callable(self.budget) else "per client")

    # --- clients -------------------------------------------------------------------------
    def _budget_of(self, cid: int) -> int:
        b = self.budget
        full = self.mm.num_experts * (self.mm.num_layers if self.method_cfg.budget_scope == "model" else 1)
        value = full if b is None else b(cid) if callable(b) else b.get(cid, full) if isinstance(b, Mapping) else b
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= full:
            raise HFedMoEError(f"budget: expected an integer in [1, {full}] for client {cid}, got {value!r}")
        return value

    def _sample(self, grid: Grid, fraction: float, server_round: int, salt: int) -> list[int]:
        nodes = wait_for_nodes(grid, self.min_available_nodes, self.min_available_nodes, self.wait_for_nodes_s)
        for nd in nodes:
            self.client_of.setdefault(nd, len(self.client_of))
        k = min(len(nodes), max(int(len(nodes) * fraction), self.min_train_nodes))
        picked = random.Random(seed_of(self.seed, server_round, salt)).sample(nodes, k)
        return sorted(picked, key=lambda nd: self.client_of[nd])

    def _load(self, arrays: ArrayRecord) -> None:
        state = arrays.to_torch_state_dict()
        with torch.no_grad():
            missing, unexpected = self.mm.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HFedMoEError(f"arrays: expected the model's state dict, missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")

    # --- training ------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``arrays`` and ``config`` to each sampled node, with its client id, budget, seed and plan."""
        self._load(arrays)
        self._global = {k: v.detach().clone() for k, v in self.mm.model.state_dict().items()}
        nodes = self._sample(grid, self.fraction_train, server_round, 1)
        infos = [ClientInfo(self.client_of[nd], self._budget_of(self.client_of[nd]), 0, "") for nd in nodes]
        self.method.begin_round(self.mm, infos, server_round)
        self._round, msgs = {}, []
        method = json.dumps({"name": self.method_cfg.name, **{k: v for k, v in vars(self.method_cfg).items()
                                                               if k != "name"}})
        for nd, info in zip(nodes, infos):
            with torch.no_grad():
                self.mm.model.load_state_dict(self._global)  # a plan sees the global model (as in-process)
            plan = self.method.plan(self.mm, info, server_round)
            if plan.budget is None:
                plan.budget = min(self.mm.num_experts, per_layer_budget(info.budget, self.method_cfg.budget_scope,
                                                                        self.mm.num_layers))
            cfg = ConfigRecord(dict(config))
            cfg.update({"server-round": server_round, "hfedmoe.client-id": info.client_id,
                        "hfedmoe.budget": info.budget, "hfedmoe.seed": seed_of(self.seed, server_round, info.client_id),
                        "hfedmoe.run-seed": self.seed, "hfedmoe.method": method, "hfedmoe.plan": plan_to_json(plan)})
            self._round[nd] = info
            msgs.append(Message(RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg}), nd, "train",
                                group_id=str(server_round)))
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The method's aggregate of the valid replies (new global arrays) and the num-examples
        weighted mean of the clients' metrics; a missing, error or invalid reply fails its client."""
        failed: dict[int, str] = {}
        updates: dict[int, Any] = {}
        for reply in replies:
            info = self._round.get(reply.metadata.src_node_id)
            if info is None or info.client_id in updates or info.client_id in failed:
                continue
            cid = info.client_id
            if reply.has_error():
                failed[cid] = f"client error: {reply.error.reason}"
                continue
            try:
                upd = record_to_update(reply.content)
                reason = _validate(upd, self.mm, ClientInfo(cid, info.budget, upd.num_examples, ""))
            except Exception as exc:  # noqa: BLE001 (any broken record fails that client only)
                reason = f"malformed reply: {type(exc).__name__}: {exc}"
            if reason is not None:
                failed[cid] = reason
                continue
            updates[cid] = upd
        for info in self._round.values():
            if info.client_id not in updates and info.client_id not in failed:
                failed[info.client_id] = "no reply (node lost, or the round's timeout passed)"
        for cid, reason in sorted(failed.items()):
            log.warning("round %d: client %d failed: %s", server_round, cid, reason)
        self.failed[server_round] = failed
        if not updates:
            return None, None
        ordered = [updates[c] for c in sorted(updates)]
        with torch.no_grad():
            self.mm.model.load_state_dict(self._global)
        agg = open_aggregation(self.method, self.mm, server_round)
        for u in ordered:
            agg.add(u)
        agg_metrics = agg.finish()
        metrics = _weighted({k: [(u.num_examples, float(u.metrics[k])) for u in ordered if k in u.metrics]
                             for k in ordered[0].metrics})
        metrics.update({k: float(v) for k, v in agg_metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        metrics.update({NUM_EXAMPLES: sum(u.num_examples for u in ordered), "num-failed": len(failed)})
        return ArrayRecord(self.mm.model.state_dict()), MetricRecord(metrics)

    # --- evaluation ----------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, server_round, 2)
        out = []
        for nd in nodes:
            cfg = ConfigRecord(dict(config))
            cfg.update({"server-round": server_round, "hfedmoe.client-id": self.client_of[nd]})
            out.append(Message(RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg}), nd,
                               "evaluate", group_id=f"eval-{server_round}"))
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The num-examples weighted mean of each numeric metric the nodes report (perplexity:
        exp of the pooled loss, see :func:`_weighted`)."""
        pairs: dict[str, list[tuple[int, float]]] = {}
        for reply in replies:
            try:
                m = next(iter(reply.content.metric_records.values()))
                n = m[NUM_EXAMPLES]
                if reply.has_error() or not isinstance(n, int) or n <= 0:
                    continue
                for k, v in m.items():
                    if k != NUM_EXAMPLES and isinstance(v, (int, float)) and np.isfinite(v):
                        pairs.setdefault(k, []).append((n, float(v)))
            except Exception:  # noqa: BLE001 (a malformed evaluation reply is left out)
                log.warning("round %d: malformed evaluation reply from node %s left out", server_round,
                            reply.metadata.src_node_id)
        return MetricRecord(_weighted(pairs)) if pairs else None


def _weighted(pairs: Mapping[str, list[tuple[int, float]]]) -> dict[str, float]:
    """The ``num-examples`` weighted mean of each metric; perplexity is ``exp`` of the pooled loss
    when the nodes that report one report both (a mean of perplexities is not a perplexity)."""
    out = {k: sum(n * v for n, v in xs) / sum(n for n, _ in xs) for k, xs in pairs.items() if xs}
    ppl, loss = pairs.get("perplexity", []), pairs.get("loss", [])
    if ppl and [n for n, _ in ppl] == [n for n, _ in loss]:
        out["perplexity"] = math.exp(out["loss"]) if out["loss"] < 700.0 else float("inf")
    return out


# --- the ClientApp side ------------------------------------------------------------------


def train_reply(msg: Message, mm: MoEModel, tokens: TokenizedTexts, train_idx: np.ndarray,
                settings: TrainSettings, arrayrecord_key: str = "arrays", configrecord_key: str = "config") -> Message:
    """A ClientApp's answer to an :class:`HFedMoE` train message: load the global arrays into
    ``mm``, rebuild the server's plan with this node's copy of the method, train on
    ``tokens[train_idx]`` (this node's own data), reply with the update and its metrics."""
    c = msg.content.config_records[configrecord_key]
    sd = msg.content.array_records[arrayrecord_key].to_torch_state_dict()
    with torch.no_grad():
        mm.model.load_state_dict(sd)
    spec = json.loads(str(c["hfedmoe.method"]))
    method = make_method(_method_config(spec.pop("name"), spec))
    method.seed = int(c["hfedmoe.run-seed"])
    cid, rnd = int(c["hfedmoe.client-id"]), int(c["server-round"])
    info = ClientInfo(cid, int(c["hfedmoe.budget"]), len(train_idx), "")
    local = method.plan(mm, info, rnd) if plan_rule(str(c["hfedmoe.plan"])) is not None else None
    plan = plan_from_json(str(c["hfedmoe.plan"]), local)
    upd = train_client(mm, cid, tokens, np.asarray(train_idx), plan, settings, seed=int(c["hfedmoe.seed"]))
    return Message(update_to_record(upd), reply_to=msg)


def evaluate_reply(msg: Message, mm: MoEModel, tokens: TokenizedTexts, val_idx: np.ndarray, batch_size: int = 64,
                   arrayrecord_key: str = "arrays", task: str | None = None) -> Message:
    """A ClientApp's answer to an evaluate message: the global arrays' metrics on ``tokens[val_idx]``.

    Classification: accuracy and loss, ``num-examples`` = examples. A causal LM (``task =
    "causal-lm"``, or None and a ``*ForCausalLM`` model): token-weighted next-token loss and
    perplexity, ``num-examples`` = predicted tokens, so :meth:`HFedMoE.aggregate_evaluate` pools
    the loss over every node's tokens."""
    task = task or ("causal-lm" if type(mm.model).__name__.endswith("ForCausalLM") else "classification")
    if task not in ("classification", "causal-lm"):
        raise HFedMoEError(f"task: expected 'classification' or 'causal-lm', got {task!r}")
    with torch.no_grad():
        mm.model.load_state_dict(msg.content.array_records[arrayrecord_key].to_torch_state_dict())
    idx = np.asarray(val_idx)
    if task == "causal-lm":
        res = evaluate_lm(mm, tokens, idx, batch_size)
        count = int(res.pop("tokens"))
    else:
        res, count = evaluate(mm, tokens, idx, batch_size), len(idx)
    m = {k: float(v) for k, v in res.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    m[NUM_EXAMPLES] = count
    return Message(RecordDict({"metrics": MetricRecord(m)}), reply_to=msg)
