"""HFedMoE restrict mode (beyond the paper, method.md section 2): memory-bounded. Each client holds
only ``max(budget, top_k)`` experts per layer (routing needs ``top_k``), chosen by the SERVER from
the importance the client uploaded last time it trained (s^c, mean per-batch Eq. 5), with
exploration: with probability ``explore`` per layer the weakest held expert is swapped for a random
other one, so an expert the client never held can enter its set and, if it matters to the client,
stay (a client's importance is 0 off its held set, so without exploration the set never changes).
A client's first round is a seeded random draw. Routing is masked to the held experts; within them
the client selects per batch by IB scores up to its budget, as in HFedMoE. The server sends only
the held experts (download = dense part + held experts) and the client needs no other expert: unlike
FedMoE's unrestricted profiling pass, nothing here runs an expert the client may not hold.
Aggregation is HFedMoE's.
"""

from __future__ import annotations

from typing import Any

import torch

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.methods._common import expert_bytes, seed_of
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
        scores = self.client_scores.get(client.client_id)  # (L, E) its last uploaded importance
        if scores is None:  # never trained yet: a seeded random draw
            gen = torch.Generator().manual_seed(seed_of(self.seed, round_idx, client.client_id, 29))
            scores = torch.rand(mm.num_layers, mm.num_experts, generator=gen)
        plan = HFedMoE.plan(self, mm, client, round_idx)
        plan.restrict = self.held_experts(mm, client, scores, round_idx)
        return plan

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        held = self.round_held.get(client.client_id)
        if held is None:
            return full_bytes
        missing = mm.num_layers * mm.num_experts - sum(len(h) for h in held)
        return int(full_bytes - missing * expert_bytes(mm))

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        seen: dict[int, torch.Tensor] = {}  # cid -> (L, E) importance, remembered once aggregated

        def on_add(u: ClientUpdate) -> None:
            seen[u.client_id] = u.importance.detach().float().cpu().clone()

        return Parts(mm, self.aggregation_parts(mm), on_add=on_add,
                     on_finish=lambda: self.client_scores.update(seen))

    def state_dict(self) -> dict[str, Any]:
        return self.submoe_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_submoe_state(state)
