"""HFedMoE restrict mode (beyond the paper, method.md section 2): the server sends each client only
the experts it may hold, chosen from the client's uploaded importance (s^c, mean per-batch
importance) of the last round it took part in; routing is masked to them; within them the client
selects per batch by IB scores up to its budget, as in HFedMoE. Holds ``max(budget, top_k)``
experts per layer (routing needs ``top_k``). Round 1 / unseen clients: a seeded random sub-MoE
(see :mod:`hfedmoe.methods.fedmoe`). Aggregation is HFedMoE's. Download: dense part + held experts.
"""

from __future__ import annotations

from typing import Any

from hfedmoe.client import TrainPlan
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
        held = self.held_experts(mm, client)
        plan = HFedMoE.plan(self, mm, client, round_idx)
        plan.restrict = held
        return plan

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        return self.held_download_bytes(mm, client, full_bytes)

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        on_add, on_finish = self.remember_streaming("importance")
        return Parts(mm, self.aggregation_parts(mm), on_add=on_add, on_finish=on_finish)

    def state_dict(self) -> dict[str, Any]:
        return self.submoe_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_submoe_state(state)
