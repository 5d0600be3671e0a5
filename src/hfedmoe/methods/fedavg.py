"""FedAvg over the whole MoE, its drop-the-weak variant, and centralised training (upper bound).

* ``fedavg``: every client trains every expert; a client whose training state does not fit its
  memory fails the round (``respects_budget = False``), as in the paper's motivation.
* ``fedavg-drop``: the same, but clients that do not fit are skipped up front (not failures).
* ``centralized``: one client holding the pooled data of all clients, with the largest device
  profile (the engine pools the data, ``pools_data``); ignores privacy and budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.methods._common import fedavg_trained
from hfedmoe.methods.base import ClientInfo, Method, all_experts
from hfedmoe.moe import MoEModel


class FedAvg(Method):
    """All experts, routers and dense parameters trained; each expert averaged by data size over
    the clients that trained it (an expert no token reached keeps its value)."""

    name = "fedavg"
    respects_budget = False

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        return TrainPlan(static_subsets=all_experts(mm))

    def aggregate(self, mm: MoEModel, updates: Sequence[ClientUpdate], round_idx: int) -> dict[str, float]:
        fedavg_trained(mm, updates)
        return {}


class FedAvgDrop(FedAvg):
    name = "fedavg-drop"
    drops_unfit = True


class Centralized(FedAvg):
    name = "centralized"
    respects_budget = True  # the pooled "client" is not a device: budgets do not apply
    pools_data = True
