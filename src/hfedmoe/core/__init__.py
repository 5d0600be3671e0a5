"""The pure HFedMoE algorithm: tensors in, tensors out (no nn.Module, no I/O, no flwr).

importance  Eqs. 3-5, 14     selection  Eq. 15     usage  Eq. 16
aggregation Eqs. 17-21 + FedAvg helpers            budgets  device profiles -> expert budgets
"""

from hfedmoe.core.aggregation import (
    aggregate_experts,
    aggregate_routers,
    aggregate_routers_by_data,
    aggregate_trained,
    expert_weights,
    fedavg,
    router_weights,
    routing_consistency,
)
from hfedmoe.core.budgets import (
    DEVICE_PROFILES,
    BudgetError,
    CostModel,
    DeviceProfile,
    compute_seconds,
    expert_budget,
    fits,
    transfer_seconds,
)
from hfedmoe.core.importance import compression_kl, ib_scores, score_experts
from hfedmoe.core.selection import routed_experts, select_experts
from hfedmoe.core.usage import UsageAccumulator, combine_usage, expert_usage

__all__ = [
    "DEVICE_PROFILES",
    "BudgetError",
    "CostModel",
    "DeviceProfile",
    "UsageAccumulator",
    "aggregate_experts",
    "aggregate_routers",
    "aggregate_routers_by_data",
    "aggregate_trained",
    "combine_usage",
    "compression_kl",
    "compute_seconds",
    "expert_budget",
    "expert_usage",
    "expert_weights",
    "fedavg",
    "fits",
    "ib_scores",
    "routed_experts",
    "router_weights",
    "routing_consistency",
    "score_experts",
    "select_experts",
    "transfer_seconds",
]
