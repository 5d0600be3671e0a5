"""FLEX-MoE (Zhang et al., arXiv 2512.23070): the server assigns each client ``k_c`` experts per
layer by a linear program over client-expert fitness with per-expert load bounds; routers stay
local.

Decisions:

* Fitness of (client, expert): the client's usage (Eq. 16) from the last round it took part in;
  1 (uniform) for a client never seen, with a seeded tie-break of 1e-3 so that round 1 spreads
  assignments instead of leaving ties to the solver.
* ``k_c`` = the client's per-layer budget. Load bounds: every expert is assigned to at least
  ``floor(K / E)`` and at most ``ceil(K / E)`` of the round's clients, ``K = sum_c k_c``.
  Solved exactly as a 0/1 program with :func:`scipy.optimize.milp` (HiGHS); the constraint
  matrix is a transportation polytope, so this is the LP optimum.
* A client holds only its assigned experts (FLEX-MoE's premise: edge devices cannot store the
  full expert set): routing is restricted to them, padded up to ``top_k`` with the client's next
  fittest experts (forward only, not trained) when ``k_c < top_k``; the client trains exactly its
  assigned experts and downloads the dense part plus the held experts.
* Routers (issue 8: they were never aggregated, so the evaluated global model ran its initial,
  untrained router): clients train their router locally; the server aggregates each router row
  (expert e's entry) by data size over the clients that held e, rows nobody held keep their value
  (as FedMoE's modular aggregation). The paper's abstract does not specify router aggregation;
  this is the choice that both trains the evaluated router and respects the assignment.
* Experts: FedAvg over the clients that trained them; dense part: FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.errors import HFedMoEError
from hfedmoe.methods._common import expert_bytes, per_layer_budget, scores_from_state, scores_to_state, seed_of
from hfedmoe.methods.aggregation import Aggregation, DenseByData, Parts, RouterRowsByHolders, SparseExperts
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.moe import MoEModel


def assign_experts(fitness: np.ndarray, num_assigned: Sequence[int]) -> np.ndarray:
    """The 0/1 assignment maximising total fitness under per-client counts and expert load bounds.

    Parameters
    ----------
    fitness : array (C, E)
        Higher is better.
    num_assigned : sequence (C,)
        ``k_c``, each in [0, E].

    Returns
    -------
    array (C, E), bool
        Row c holds exactly ``k_c`` experts; column e holds between ``floor(K/E)`` and
        ``ceil(K/E)`` clients, ``K = sum_c k_c``.
    """
    fitness = np.asarray(fitness, dtype=np.float64)
    C, E = fitness.shape
    k = np.asarray(num_assigned, dtype=np.int64)
    if k.shape != (C,) or (k < 0).any() or (k > E).any():
        raise ValueError(f"num_assigned: expected {C} integers in [0, {E}], got {k.tolist()}")
    total = int(k.sum())
    lo, hi = total // E, -(-total // E)
    rows = np.kron(np.eye(C), np.ones((1, E)))  # (C, C*E): sum over experts of client c
    cols = np.kron(np.ones((1, C)), np.eye(E))  # (E, C*E): sum over clients of expert e
    res = milp(
        c=-fitness.ravel(),
        constraints=[LinearConstraint(rows, k, k), LinearConstraint(cols, lo, hi)],
        integrality=np.ones(C * E),
        bounds=Bounds(0, 1),
    )
    if res.x is None:
        raise HFedMoEError(f"flex-moe: no assignment for budgets {k.tolist()} over {E} experts ({res.message})")
    return np.round(res.x).reshape(C, E).astype(bool)


class FlexMoE(Method):
    name = "flex-moe"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        super().__init__(budget_scope=budget_scope)
        self.budget_scope = budget_scope
        self.client_usage: dict[int, torch.Tensor] = {}  # cid -> (L, E), last round it trained
        self.assigned: dict[int, list[list[int]]] = {}  # cid -> experts per layer, this round
        self.held: dict[int, list[list[int]]] = {}  # cid -> assigned + top_k padding, this round

    def begin_round(self, mm: MoEModel, clients: Sequence[ClientInfo], round_idx: int) -> None:
        L, E = mm.num_layers, mm.num_experts
        self.assigned = {c.client_id: [] for c in clients}
        self.held = {c.client_id: [] for c in clients}
        if not clients:
            return
        k = [min(E, per_layer_budget(c.budget, self.budget_scope, L)) for c in clients]
        for layer in range(L):
            fitness = np.ones((len(clients), E))
            for i, c in enumerate(clients):
                if c.client_id in self.client_usage:
                    fitness[i] = self.client_usage[c.client_id][layer].double().numpy()
                else:
                    rng = np.random.default_rng(seed_of(self.seed, round_idx, c.client_id, layer, 31))
                    fitness[i] += 1e-3 * rng.random(E)
            chosen = assign_experts(fitness, k)  # (C, E)
            for i, c in enumerate(clients):
                assigned = np.flatnonzero(chosen[i]).tolist()
                self.assigned[c.client_id].append(assigned)
                pad = [int(e) for e in np.argsort(-fitness[i], kind="stable") if e not in assigned]
                self.held[c.client_id].append(sorted(assigned + pad[: max(0, mm.top_k - len(assigned))]))

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        if client.client_id not in self.assigned:  # planned outside a round (tests, tools)
            self.begin_round(mm, [client], round_idx)
        return TrainPlan(static_subsets=self.assigned[client.client_id], restrict=self.held[client.client_id])

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        held = self.held.get(client.client_id)
        if not held:
            return full_bytes
        missing = mm.num_layers * mm.num_experts - sum(len(h) for h in held)
        return int(full_bytes - missing * expert_bytes(mm))

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        seen: dict[int, torch.Tensor] = {}  # cid -> (L, E) usage, remembered once the round is aggregated

        def on_add(u: ClientUpdate) -> None:
            seen[u.client_id] = u.usage.detach().float().cpu().clone()

        # experts by FedAvg over trainers; router rows per expert over its holders (usage > 0 under
        # the restriction), so the evaluated global router is trained
        parts = [SparseExperts(mm, tau=0.0, usage_gate=False), RouterRowsByHolders(mm, None), DenseByData(mm)]
        return Parts(mm, parts, on_add=on_add, on_finish=lambda: self.client_usage.update(seen))

    def state_dict(self) -> dict[str, Any]:
        return {"client_usage": scores_to_state(self.client_usage)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.client_usage = scores_from_state(state.get("client_usage", {}))
