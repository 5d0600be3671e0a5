"""HFedMoE restrict mode (beyond the paper, method.md section 2): each client holds only
``max(budget, top_k)`` experts per layer (routing needs ``top_k``), chosen every round from the
importance (s^c, mean per-batch Eq. 5) of an unrestricted no-grad profiling pass over a few of its
batches, with exploration (see :class:`hfedmoe.methods.fedmoe.SubMoEPlanner`); routing is masked
to them; within them the client selects per batch by IB scores up to its budget, as in HFedMoE.
Aggregation is HFedMoE's. Download: the whole model (the profiling pass runs every expert).
"""

from __future__ import annotations

from typing import Any

from hfedmoe.client import TrainPlan
from hfedmoe.methods._common import per_layer_budget
from hfedmoe.methods.aggregation import Aggregation, Parts
from hfedmoe.methods.base import ClientInfo
from hfedmoe.methods.fedmoe import SubMoEPlanner
from hfedmoe.methods.hfedmoe import HFedMoE
from hfedmoe.moe import MoEModel


class HFedMoERestrict(SubMoEPlanner, HFedMoE):
    name = "hfedmoe-restrict"

    def __init__(self, **options: Any) -> None:
        HFedMoE.__init__(self, **options)
        self._init_submoe()

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        def after_profile(usage, importance) -> TrainPlan:
            del usage
            held = self.held_experts(mm, client, importance, round_idx)
            plan = HFedMoE.plan(self, mm, client, round_idx)
            plan.restrict = held
            return plan

        return TrainPlan(profile=after_profile, budget=per_layer_budget(client.budget, self.budget_scope, mm.num_layers))

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        return self.held_download_bytes(mm, client, full_bytes)

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, self.aggregation_parts(mm))  # HFedMoE's (held sets chosen client-side)

    def state_dict(self) -> dict[str, Any]:
        return self.submoe_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_submoe_state(state)
