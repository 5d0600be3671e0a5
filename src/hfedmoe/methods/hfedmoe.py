"""HFedMoE (Fang et al., 2026): importance + information-bottleneck selection within the client's
budget, sparsity-aware aggregation of experts, importance-weighted aggregation of routers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.core.aggregation import aggregate_routers, routing_consistency
from hfedmoe.core.importance import ib_scores
from hfedmoe.core.selection import select_experts
from hfedmoe.methods.base import (
    ClientInfo,
    Method,
    aggregate_dense_fedavg,
    aggregate_experts_sparse,
    aggregate_experts_uniform,
    aggregate_routers_fedavg,
    num_examples_of,
    routed_mask,
)
from hfedmoe.methods.diagnostics import alpha_vs_shares, tau_exclusion
from hfedmoe.moe import MoEModel


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
        E = mm.num_experts
        lam, beta, budget = self.lam, self.beta, client.budget
        batch_shape: dict[str, int] = {}

        def on_batch(batch: dict) -> None:
            batch_shape["seq_len"] = int(batch["attention_mask"].shape[-1])

        def scores_of(routing) -> torch.Tensor:  # (E,) Eq. 14, per token or per sequence
            if self.pooling == "sequence":
                ids = seq_ids_for(routing.gate_probs.shape[0], batch_shape.get("seq_len"))
                return ib_scores(routing.gate_probs, routing.token_mask, lam, beta, pooling="sequence", seq_ids=ids)
            return ib_scores(routing.gate_probs, routing.token_mask, lam, beta)

        if self.budget_scope == "layer":
            def selector(layer: int, routing) -> Sequence[int]:
                scores = scores_of(routing)  # (E,)
                return select_experts(scores, routed_mask(routing, E), budget).tolist()

            return TrainPlan(selector=selector, budget=budget, on_batch=on_batch)

        def batch_subsets(capture) -> list[Sequence[int]]:
            scores, routed = [], []
            for layer in range(mm.num_layers):
                r = capture.layer(layer)
                scores.append(scores_of(r))
                routed.append(routed_mask(r, E))
            flat = select_experts(torch.cat(scores), torch.cat(routed), budget)  # (k,) over L*E
            return [(flat[flat // E == layer] % E).tolist() for layer in range(mm.num_layers)]

        return TrainPlan(batch_subsets=batch_subsets, on_batch=on_batch)

    # --- server side ---------------------------------------------------------------------
    def aggregate(self, mm: MoEModel, updates: Sequence[ClientUpdate], round_idx: int) -> dict[str, float]:
        if self.expert_aggregation == "sparse":
            aggregate_experts_sparse(mm, updates, tau=self.tau)
        else:
            aggregate_experts_uniform(mm, updates)
        metrics: dict = tau_exclusion(updates, self.tau) if self.expert_aggregation == "sparse" else {}
        senders = [u for u in updates if u.routers]
        if senders and self.gate_weights == "uniform":
            aggregate_routers_fedavg(mm, senders)
        elif senders:
            consistency = []
            alphas = []
            for layer in range(mm.num_layers):
                usage = torch.stack([u.usage[layer] for u in senders])  # (C, E)
                importance = torch.stack([u.importance[layer] for u in senders])  # (C, E)
                state = mm.router_state(layer)
                weight = state["weight"]
                clients = torch.stack([u.routers[layer]["weight"] for u in senders])  # (C, E, H)
                new_w, alpha = aggregate_routers(
                    weight, clients, usage.to(weight.dtype), importance.to(weight.dtype), self.tau,
                    normalize=self.gate_weights == "normalized",
                )
                state["weight"] = new_w
                alphas.append(alpha.double())
                for name in state:  # router bias and the like follow the same client weights
                    if name != "weight" and alpha.sum() > 0:
                        stacked = torch.stack([u.routers[layer][name] for u in senders])
                        a = alpha.to(stacked.dtype) / (alpha.sum() if self.gate_weights == "normalized" else 1)
                        state[name] = torch.einsum("c,c...->...", a, stacked)
                mm.set_router_state(layer, state)
                consistency.append(routing_consistency(usage, self.tau).mean())
            metrics["routing_consistency"] = float(torch.stack(consistency).mean())
            metrics.update(alpha_vs_shares(torch.stack(alphas).mean(0), num_examples_of(senders),
                                           [u.client_id for u in senders]))
        aggregate_dense_fedavg(mm, updates)
        return metrics
