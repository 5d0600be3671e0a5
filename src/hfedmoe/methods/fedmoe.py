"""FedMoE (Mei et al., arXiv 2408.11304): a per-client sub-MoE chosen by the server, modular
aggregation.

Per round and client the server picks, per layer, the ``held`` experts the client downloads and
may route to: the top experts of the client's usage (Eq. 16, the router-probability form of its
activation frequency) from the last round it took part in; ``held = max(budget, top_k)`` experts
(routing needs at least ``top_k``). Routing is restricted to them (``TrainPlan.restrict``) and
the client trains the top ``budget`` of them (all when ``budget >= top_k``).

Decisions:

* Round 1 (or a client never seen): the server has no statistics and no data, so the sub-MoE is
  a random draw seeded by (run seed, client, layer), fixed per client.
* The choice is sticky: a client only observes usage of the experts it held (the others have
  router probability 0 under restriction), as in FedMoE's own frequency feedback.
* Aggregation is modular: an expert held by nobody stays, one trained by one client is copied,
  shared ones are averaged by data size; router rows (and per-expert router entries) follow the
  same rule per expert over the clients that held that expert; the dense part is FedAvg.
* Download bytes: the dense part plus the held experts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.core.aggregation import aggregate_trained
from hfedmoe.core.selection import select_experts
from hfedmoe.methods._common import expert_bytes, per_layer_budget, scores_from_state, scores_to_state, seed_of
from hfedmoe.methods.aggregation import Aggregation, DenseByData, Parts, RouterRowsByHolders, SparseExperts
from hfedmoe.methods.base import ClientInfo, Method, num_examples_of
from hfedmoe.moe import MoEModel


class SubMoEPlanner:
    """Server-side memory of each client's last expert scores and the sub-MoE chosen from them.

    Mixed into methods whose clients hold only part of the experts (FedMoE, HFedMoE restrict mode).
    """

    seed = 0
    budget_scope = "layer"

    def _init_submoe(self) -> None:
        self.client_scores: dict[int, torch.Tensor] = {}  # cid -> (L, E)
        self.round_held: dict[int, list[list[int]]] = {}  # cid -> held experts per layer, this round

    def held_experts(self, mm: MoEModel, client: ClientInfo) -> list[list[int]]:
        """Per layer, the experts ``client`` holds this round (sorted)."""
        L, E = mm.num_layers, mm.num_experts
        budget = per_layer_budget(client.budget, self.budget_scope, L)
        size = min(E, max(budget, mm.top_k))
        scores = self.client_scores.get(client.client_id)
        held = []
        for layer in range(L):
            if scores is None:
                rng = np.random.default_rng(seed_of(self.seed, client.client_id, layer, 23))
                held.append(sorted(rng.permutation(E)[:size].tolist()))
            else:
                held.append(select_experts(scores[layer].float(), torch.ones(E, dtype=torch.bool), size).tolist())
        self.round_held[client.client_id] = held
        return held

    def remember(self, updates: Sequence[ClientUpdate], key: str) -> None:
        for u in updates:
            self.client_scores[u.client_id] = getattr(u, key).detach().float().cpu().clone()

    def remember_streaming(self, key: str):
        """(on_add, on_finish) for :class:`~hfedmoe.methods.aggregation.Parts`: each update's ``key``
        statistics (L, E) are collected as it arrives and remembered once the round is aggregated."""
        seen: dict[int, torch.Tensor] = {}

        def on_add(u: ClientUpdate) -> None:
            seen[u.client_id] = getattr(u, key).detach().float().cpu().clone()

        return on_add, lambda: self.client_scores.update(seen)

    def held_download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        held = self.round_held.get(client.client_id)
        if held is None:
            return full_bytes
        missing = mm.num_layers * mm.num_experts - sum(len(h) for h in held)
        return int(full_bytes - missing * expert_bytes(mm))

    def submoe_state(self) -> dict[str, Any]:
        return {"client_scores": scores_to_state(self.client_scores)}

    def load_submoe_state(self, state: dict[str, Any]) -> None:
        self.client_scores = scores_from_state(state.get("client_scores", {}))


def aggregate_router_rows(mm: MoEModel, updates: Sequence[ClientUpdate], held: dict[int, list[list[int]]]) -> None:
    """Each router row (entry) of expert e: data-size average over the clients that held e; rows
    nobody held keep their value. Router tensors not indexed by expert are FedAvg'd."""
    senders = [u for u in updates if u.routers]
    if not senders:
        return
    E = mm.num_experts
    n = num_examples_of(senders)
    for layer in range(mm.num_layers):
        mask = torch.zeros(len(senders), E, dtype=torch.bool)  # (C, E)
        for c, u in enumerate(senders):
            mask[c, held[u.client_id][layer]] = True
        state = mm.router_state(layer)
        new = {}
        for name, g in state.items():
            clients = torch.stack([u.routers[layer][name] for u in senders])  # (C, *shape)
            if g.dim() >= 1 and g.shape[0] == E:
                new[name] = aggregate_trained(g, clients, mask, n.to(g.dtype))
            else:
                w = (n / n.sum()).to(g.dtype)
                new[name] = torch.einsum("c,c...->...", w, clients)
        mm.set_router_state(layer, new)


class FedMoE(SubMoEPlanner, Method):
    name = "fedmoe"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        Method.__init__(self, budget_scope=budget_scope)
        self.budget_scope = budget_scope
        self._init_submoe()

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        held = self.held_experts(mm, client)
        budget = per_layer_budget(client.budget, self.budget_scope, mm.num_layers)
        scores = self.client_scores.get(client.client_id)
        trained = []
        for layer, h in enumerate(held):
            if budget >= len(h):
                trained.append(h)
                continue
            s = scores[layer] if scores is not None else torch.zeros(mm.num_experts)
            mask = torch.zeros(mm.num_experts, dtype=torch.bool)
            mask[h] = True
            trained.append(select_experts(s.float(), mask, budget).tolist())
        return TrainPlan(static_subsets=trained, restrict=held)

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        return self.held_download_bytes(mm, client, full_bytes)

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        on_add, on_finish = self.remember_streaming("usage")
        parts = [SparseExperts(mm, tau=0.0, usage_gate=False), RouterRowsByHolders(mm, self.round_held), DenseByData(mm)]
        return Parts(mm, parts, on_add=on_add, on_finish=on_finish)

    def state_dict(self) -> dict[str, Any]:
        return self.submoe_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_submoe_state(state)
