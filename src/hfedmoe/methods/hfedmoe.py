"""HFedMoE (Fang et al., 2026): importance + information-bottleneck selection within the client's
budget, sparsity-aware aggregation of experts, importance-weighted aggregation of routers."""

from __future__ import annotations

import torch

from hfedmoe.client import TrainPlan
from hfedmoe.core.importance import ib_scores
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


def seq_ids_for(num_tokens: int, seq_len: int | None) -> torch.Tensor:
    """(T,) sequence id of each flattened token of a (B, S) batch (T = B * S)."""
    if not seq_len or num_tokens % seq_len:
        raise ValueError(f"pooling='sequence': cannot map {num_tokens} tokens onto sequences of length {seq_len}")
    return torch.arange(num_tokens) // seq_len


class HFedMoE(Method):
    """Options (all keyword): ``lam``, ``beta``, ``tau``, ``budget_scope`` ("layer" | "model"),
    ``gate_weights`` ("normalized" | "paper-literal" | "uniform"), ``expert_aggregation``
    ("sparse" | "uniform")."""

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
        pooling: str = "token",
    ) -> None:
        super().__init__(lam=lam, beta=beta, tau=tau, budget_scope=budget_scope,
                         gate_weights=gate_weights, expert_aggregation=expert_aggregation, pooling=pooling)
        self.pooling = pooling
        self.lam, self.beta, self.tau = lam, beta, tau
        self.budget_scope = budget_scope
        self.gate_weights = gate_weights
        self.expert_aggregation = expert_aggregation

    # --- client side ---------------------------------------------------------------------
    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        lam, beta, budget = self.lam, self.beta, client.budget
        batch_shape: dict[str, int] = {}

        def on_batch(batch: dict) -> None:
            batch_shape["seq_len"] = int(batch["attention_mask"].shape[-1])

        def scores_of(routing) -> torch.Tensor:  # (E,) Eq. 14, per token or per sequence
            if self.pooling == "sequence":
                ids = seq_ids_for(routing.gate_probs.shape[0], batch_shape.get("seq_len"))
                return ib_scores(routing.gate_probs, routing.token_mask, lam, beta, pooling="sequence", seq_ids=ids)
            return routing_ib_scores(routing, lam, beta)  # s_b reused by the client

        return per_batch_plan(mm, budget, self.budget_scope, scores_of, on_batch)

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
