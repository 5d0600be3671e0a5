"""FedAvg over the whole MoE, its drop-the-weak variant, and centralised training (upper bound).

* ``fedavg``: every client trains every expert; a client whose training state does not fit its
  memory fails the round (``respects_budget = False``), as in the paper's motivation.
* ``fedavg-drop``: the same, but clients that do not fit are skipped up front (not failures).
* ``centralized``: one client holding the pooled data of all clients, with the largest device
  profile (the engine pools the data, ``pools_data``); ignores privacy and budgets.
"""

from __future__ import annotations

from hfedmoe.client import TrainPlan
from hfedmoe.methods._common import fedavg_trained_parts
from hfedmoe.methods.aggregation import Aggregation, Parts
from hfedmoe.methods.base import ClientInfo, Method, all_experts
from hfedmoe.moe import MoEModel


class FedAvg(Method):
    """All experts, routers and dense parameters trained; each expert averaged by data size over
    the clients that trained it (an expert no token reached keeps its value)."""

    name = "fedavg"
    respects_budget = False

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        return TrainPlan(static_subsets=all_experts(mm))

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, fedavg_trained_parts(mm))


class FedAvgDrop(FedAvg):
    name = "fedavg-drop"
    drops_unfit = True


class Centralized(FedAvg):
    name = "centralized"
    respects_budget = True  # the pooled "client" is not a device: it never fails for memory
    ignores_budget = True  # and the round guard does not hold its update to a client's budget
    pools_data = True
