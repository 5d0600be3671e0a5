"""HFedMoE (Fang et al., 2026): importance + information-bottleneck selection within the client's
budget, sparsity-aware aggregation of experts, importance-weighted aggregation of routers."""

from __future__ import annotations

import torch

from hfedmoe.client import TrainPlan
from hfedmoe.methods.aggregation import (
    Aggregation,
    DenseByData,
    Part,
    Parts,
    RoutersByData,
    RoutersByImportance,
    SparseExperts,
    UniformExperts,
)
from hfedmoe.methods._common import per_batch_plan
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.methods.diagnostics import TauExclusionPart
from hfedmoe.moe import MoEModel
from hfedmoe.moe.contexts import routing_ib_scores


class HFedMoE(Method):
    """Options (all keyword): ``lam``, ``beta``, ``tau``, ``budget_scope`` ("layer" | "model"),
    ``gate_weights`` ("normalized" | "paper-literal" | "uniform"), ``expert_aggregation``
    ("sparse" | "uniform"), ``pooling`` ("sequence" | "token": what a sample of Eqs. 3-5 and 14
    is), ``ib_scale`` ("raw" | "normalised": the scale of Eq. 14's KL term)."""

    name = "hfedmoe"

    def __init__(
        self,
        *,
        lam: float = 0.5,
        beta: float = 0.1,
        tau: float = 0.02,
        budget_scope: str = "layer",
        gate_weights: str = "normalized",
        expert_aggregation: str = "sparse",
        pooling: str = "sequence",
        ib_scale: str = "raw",
    ) -> None:
        super().__init__(lam=lam, beta=beta, tau=tau, budget_scope=budget_scope, gate_weights=gate_weights,
                         expert_aggregation=expert_aggregation, pooling=pooling, ib_scale=ib_scale)
        self.pooling, self.ib_scale = pooling, ib_scale
        self.lam, self.beta, self.tau = lam, beta, tau
        self.budget_scope = budget_scope
        self.gate_weights = gate_weights
        self.expert_aggregation = expert_aggregation

    # --- client side ---------------------------------------------------------------------
    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        lam, beta, pooling, ib_scale = self.lam, self.beta, self.pooling, self.ib_scale

        def scores_of(routing) -> torch.Tensor:  # (E,) Eq. 14; s_b memoised, reused for the upload
            return routing_ib_scores(routing, lam, beta, pooling, ib_scale)

        plan = per_batch_plan(mm, client.budget, self.budget_scope, scores_of)
        plan.pooling = pooling  # the importance the client uploads (s^c, alpha) is pooled the same way
        return plan

    # --- server side ---------------------------------------------------------------------
    def aggregation_parts(self, mm: MoEModel) -> list[Part]:
        """Experts (Eq. 17, or plain FedAvg for the "avg" ablation), routers (Eqs. 18-21, or by
        data size for "uniform" gate weights), dense part by data size: all streaming."""
        experts = SparseExperts(mm, tau=self.tau) if self.expert_aggregation == "sparse" else UniformExperts(mm)
        if self.gate_weights == "uniform":
            routers: Part = RoutersByData(mm)
        else:
            routers = RoutersByImportance(mm, tau=self.tau, normalize=self.gate_weights == "normalized")
        parts = [experts, routers, DenseByData(mm)]
        if self.expert_aggregation == "sparse":
            parts.append(TauExclusionPart(self.tau))  # diagnostics: how often the tau gate fires
        return parts

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, self.aggregation_parts(mm))
