"""FedMoE (Mei et al., arXiv 2408.11304): a per-client sub-MoE chosen by the server, modular
aggregation.

Per round and client the server picks, per layer, the ``held`` experts the client downloads and
may route to: the top experts of the client's usage (Eq. 16, the router-probability form of its
activation frequency) from the last round it took part in; ``held = max(budget, top_k)`` experts
(routing needs at least ``top_k``). Routing is restricted to them (``TrainPlan.restrict``) and
the client trains the top ``budget`` of them (all when ``budget >= top_k``).

Decisions:

* Every round the client first runs a no-grad, *unrestricted* profiling pass over a few batches
  of its data with the current global model (``TrainPlan.profile``), and the held sub-MoE is the
  top experts of that profiled usage. So the choice follows the router as it changes, and round 1
  is informed too. (Issue 8: choosing from the last round's *restricted* usage made the first
  random draw permanent, since non-held experts always had usage 0.) The profiling pass needs
  every expert, so the client downloads the whole model (``download_bytes`` = full).
* Exploration: per layer, with probability ``explore`` (0.1), the lowest-ranked held expert is
  swapped for a uniformly drawn non-held one (seeded by run seed, round, client, layer), so an
  expert the router currently ignores can still be tried and re-ranked.
* Aggregation is modular: an expert held by nobody stays, one trained by one client is copied,
  shared ones are averaged by data size; router rows (and per-expert router entries) follow the
  same rule per expert over the clients that held that expert; the dense part is FedAvg.
* Download bytes: the whole model (the profiling pass runs every expert).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hfedmoe.client import TrainPlan
from hfedmoe.core.selection import select_experts
from hfedmoe.methods._common import per_layer_budget, scores_from_state, scores_to_state, seed_of
from hfedmoe.methods.aggregation import Aggregation, DenseByData, Parts, RouterRowsByHolders, SparseExperts
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.moe import MoEModel


class SubMoEPlanner:
    """The sub-MoE each client holds this round, chosen from its profiled scores with exploration.

    Mixed into methods whose clients hold only part of the experts (FedMoE, HFedMoE restrict mode).
    ``client_scores`` (restrict mode) keeps each client's last uploaded scores, server-side state
    that goes into checkpoints; FedMoE's scores come from the client's profiling pass each round.
    """

    seed = 0
    budget_scope = "layer"
    explore = 0.1

    def _init_submoe(self) -> None:
        self.client_scores: dict[int, torch.Tensor] = {}  # cid -> (L, E), last uploaded scores (restrict)
        self.round_held: dict[int, list[list[int]]] = {}  # cid -> held experts per layer, this round

    def held_experts(self, mm: MoEModel, client: ClientInfo, scores: torch.Tensor, round_idx: int = 0) -> list[list[int]]:
        """Per layer, the experts ``client`` holds this round (sorted): the top ``max(budget, top_k)``
        of ``scores (L, E)``, the last of them swapped for a random other expert with probability
        ``explore``."""
        L, E = mm.num_layers, mm.num_experts
        budget = per_layer_budget(client.budget, self.budget_scope, L)
        size = min(E, max(budget, mm.top_k))
        held = []
        for layer in range(L):
            chosen = select_experts(scores[layer].float(), torch.ones(E, dtype=torch.bool), size).tolist()
            rng = np.random.default_rng(seed_of(self.seed, round_idx, client.client_id, layer, 23))
            if size < E and rng.random() < self.explore:
                ranked = sorted(chosen, key=lambda e: (-float(scores[layer, e]), e))
                others = [e for e in range(E) if e not in chosen]
                chosen = sorted(ranked[:-1] + [int(rng.choice(others))])
            held.append(chosen)
        self.round_held[client.client_id] = held
        return held

    def held_download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        """FedMoE: the whole model (the unrestricted profiling pass runs every expert)."""
        del mm, client
        return full_bytes

    def submoe_state(self) -> dict[str, Any]:
        return {"client_scores": scores_to_state(self.client_scores)}

    def load_submoe_state(self, state: dict[str, Any]) -> None:
        self.client_scores = scores_from_state(state.get("client_scores", {}))


class FedMoE(SubMoEPlanner, Method):
    name = "fedmoe"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        Method.__init__(self, budget_scope=budget_scope)
        self.budget_scope = budget_scope
        self._init_submoe()

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        budget = per_layer_budget(client.budget, self.budget_scope, mm.num_layers)

        def after_profile(usage: torch.Tensor, importance: torch.Tensor) -> TrainPlan:
            del importance
            held = self.held_experts(mm, client, usage, round_idx)
            trained = []
            for layer, h in enumerate(held):
                if budget >= len(h):
                    trained.append(h)
                    continue
                mask = torch.zeros(mm.num_experts, dtype=torch.bool)
                mask[h] = True
                trained.append(select_experts(usage[layer].float(), mask, budget).tolist())
            return TrainPlan(static_subsets=trained, restrict=held)

        return TrainPlan(profile=after_profile, budget=budget)

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        return self.held_download_bytes(mm, client, full_bytes)

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        # held sets come from each update's usage (> 0 exactly on the held experts under the
        # routing restriction): the server needs no client-side state, on either engine
        parts = [SparseExperts(mm, tau=0.0, usage_gate=False), RouterRowsByHolders(mm, None), DenseByData(mm)]
        return Parts(mm, parts)

    def state_dict(self) -> dict[str, Any]:
        return self.submoe_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_submoe_state(state)
