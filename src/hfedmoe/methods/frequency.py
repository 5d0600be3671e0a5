"""Budget-respecting baselines that pick the trained experts per batch without importance:

* ``flux-freq`` (FLUX's "FMES" baseline, Chen et al. 2026): the experts the most tokens of the
  batch were routed to (top-k activation counts), up to the budget.
* ``random``: experts drawn uniformly among those the batch was routed to, up to the budget,
  redrawn for every batch; the generator is seeded by (run seed, round, client), so a resumed run
  repeats the draws. Each expert then gets a few scattered optimizer steps per round.
* ``random-round``: a set of ``budget`` experts per layer (``budget`` (layer, expert) pairs over
  the model with ``budget_scope = "model"``) drawn uniformly once per client and round from the
  same seed, kept for every local step of that round (the other honest random floor: as many
  consecutive steps per trained expert as a static sub-model gets).

With ``budget_scope = "model"`` both count one budget over the whole model: the pairs
(layer, expert) are ranked across layers from a no-grad pre-pass of the batch (as HFedMoE's).

Both aggregate like FedAvg over the trained experts; routers and dense parts by data size.
"""

from __future__ import annotations

import torch

from hfedmoe.client import TrainPlan
from hfedmoe.methods._common import fedavg_trained_parts, per_batch_plan, select_in_model, seed_of
from hfedmoe.methods.aggregation import Aggregation, Parts
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.moe import MoEModel


class FluxFreq(Method):
    name = "flux-freq"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        super().__init__(budget_scope=budget_scope)
        self.budget_scope = budget_scope

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        E = mm.num_experts

        def counts_of(routing) -> torch.Tensor:  # (E,) top-k activation counts of real tokens
            hits = routing.topk_idx[routing.token_mask].reshape(-1)  # (T_real * k,)
            return torch.bincount(hits, minlength=E).to(torch.float32)

        return per_batch_plan(mm, client.budget, self.budget_scope, counts_of)

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, fedavg_trained_parts(mm))


class RandomExperts(FluxFreq):
    name = "random"

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        E = mm.num_experts
        gen = torch.Generator().manual_seed(seed_of(self.seed, round_idx, client.client_id, 11))

        def scores_of(routing) -> torch.Tensor:  # (E,) uniform: a random order of the routed experts
            return torch.rand(E, generator=gen)

        return per_batch_plan(mm, client.budget, self.budget_scope, scores_of)


class RandomRound(FluxFreq):
    name = "random-round"

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        return TrainPlan(static_subsets=self.round_set(mm, client, round_idx),
                         budget=client.budget if self.budget_scope == "layer" else None)

    def round_set(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> list[list[int]]:
        """The experts ``client`` trains in round ``round_idx``, per layer: ``budget`` of the layer's
        experts, or ``budget`` (layer, expert) pairs of the model, uniformly at random (seeded)."""
        L, E = mm.num_layers, mm.num_experts
        gen = torch.Generator().manual_seed(seed_of(self.seed, round_idx, client.client_id, 13))
        if self.budget_scope == "layer":
            return [sorted(torch.randperm(E, generator=gen)[: client.budget].tolist()) for _ in range(L)]
        scores = torch.rand(L, E, generator=gen)  # (L, E) a random order of every pair
        return select_in_model(scores, torch.ones(L, E, dtype=torch.bool), client.budget)
