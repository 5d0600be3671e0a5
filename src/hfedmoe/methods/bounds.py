"""Reference points that bracket the budget-respecting methods.

* ``oracle`` (upper bound on *selection*): per batch every routed expert gets a gradient, then per
  layer only the ``budget`` experts with the largest gradient norm are stepped (to first order the
  loss decrease of a gradient step on expert e is ``lr * ||g_e||^2``, so these are the experts
  whose update helps this batch most). It needs the full backward, so it is a bound, not a
  deployable method: its memory bound holds for optimizer state (the others' gradients are dropped
  before the step) but not for the transient gradients. If the oracle is not clearly better than
  ``random`` on a setting, that setting cannot rank selection methods.
* ``fedavg-full``: no budget at all, every client trains every expert (the reference the budgets
  are measured against; it ignores the devices' memory).
* ``fedavg-fit``: budget-respecting FedAvg: a client whose budget covers every expert trains
  everything, a weaker client trains only what fits without experts: routers and the dense
  trainable parts (head, ...). Aggregation is FedAvg over the clients that trained each tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hfedmoe.client import TrainPlan
from hfedmoe.core.selection import select_experts
from hfedmoe.methods._common import fedavg_trained_parts, select_in_model
from hfedmoe.methods.aggregation import Aggregation, Parts
from hfedmoe.methods.base import ClientInfo, Method, all_experts
from hfedmoe.moe import MoEModel


class _FedAvgAggregation(Method):
    """FedAvg over the clients that trained each tensor, streamed (as FedAvg's)."""

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, fedavg_trained_parts(mm))


class OracleGradNorm(_FedAvgAggregation):
    name = "oracle"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        super().__init__(budget_scope=budget_scope)
        self.budget_scope = budget_scope

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        budget = client.budget
        per_layer = self.budget_scope == "layer"

        def grad_selector(norms: torch.Tensor, routed: torch.Tensor) -> list[Sequence[int]]:
            # norms (L, E) gradient L2 norm per expert; routed (L, E) bool
            usable = routed & (norms > 0)
            if not per_layer:  # one count over the model: the best (layer, expert) pairs
                return select_in_model(norms, usable, budget)
            return [select_experts(norms[l].float(), usable[l], budget).tolist() for l in range(norms.shape[0])]

        return TrainPlan(grad_selector=grad_selector, budget=budget if per_layer else None)


class FedAvgFull(_FedAvgAggregation):
    name = "fedavg-full"
    ignores_budget = True  # no budget: every client trains everything, none fails for memory

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        return TrainPlan(static_subsets=all_experts(mm))


class FedAvgFit(_FedAvgAggregation):
    name = "fedavg-fit"

    def __init__(self, *, budget_scope: str = "layer") -> None:
        super().__init__(budget_scope=budget_scope)
        self.budget_scope = budget_scope

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        full = mm.num_experts if self.budget_scope == "layer" else mm.num_layers * mm.num_experts
        if client.budget >= full:
            return TrainPlan(static_subsets=all_experts(mm))
        return TrainPlan(static_subsets=[[] for _ in range(mm.num_layers)])
