"""Budget-respecting baselines that pick the trained experts per batch without importance:

* ``flux-freq`` (FLUX's "FMES" baseline, Chen et al. 2026): the experts the most tokens of the
  batch were routed to (top-k activation counts), up to the budget.
* ``random``: experts drawn uniformly among those the batch was routed to, up to the budget;
  the generator is seeded by (run seed, round, client), so a resumed run repeats the draws.

Both aggregate like FedAvg over the trained experts; routers and dense parts by data size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hfedmoe.client import TrainPlan
from hfedmoe.core.selection import select_experts
from hfedmoe.methods._common import fedavg_trained_parts, per_layer_budget, seed_of
from hfedmoe.methods.aggregation import Aggregation, Parts
from hfedmoe.methods.base import ClientInfo, Method, routed_mask
from hfedmoe.moe import MoEModel


class FluxFreq(Method):
    name = "flux-freq"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        super().__init__(budget_scope=budget_scope)
        self.budget_scope = budget_scope

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        E = mm.num_experts
        budget = per_layer_budget(client.budget, self.budget_scope, mm.num_layers)

        def selector(layer: int, routing) -> Sequence[int]:
            hits = routing.topk_idx[routing.token_mask].reshape(-1)  # (T_real * k,)
            counts = torch.bincount(hits, minlength=E).to(torch.float32)  # (E,)
            return select_experts(counts, counts > 0, budget).tolist()

        return TrainPlan(selector=selector)

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, fedavg_trained_parts(mm))


class RandomExperts(FluxFreq):
    name = "random"

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        E = mm.num_experts
        budget = per_layer_budget(client.budget, self.budget_scope, mm.num_layers)
        gen = torch.Generator().manual_seed(seed_of(self.seed, round_idx, client.client_id, 11))

        def selector(layer: int, routing) -> Sequence[int]:
            scores = torch.rand(E, generator=gen)  # (E,) uniform: a random order of the routed experts
            return select_experts(scores, routed_mask(routing, E), budget).tolist()

        return TrainPlan(selector=selector)
