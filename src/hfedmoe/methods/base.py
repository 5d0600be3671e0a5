"""The method interface: what a client trains (a plan) and how the server aggregates.

A method is a small class over the shared core functions. The engine calls, per round:
``plan(...)`` for each sampled client, ``aggregate(...)`` once with all updates (the model then
holds the global weights and the method writes the new ones into it), and ``state_dict()`` when
it checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.core.aggregation import aggregate_experts, fedavg
from hfedmoe.core.selection import routed_experts
from hfedmoe.moe import MoEModel


@dataclass
class ClientInfo:
    """What the server knows about a client when it plans its round."""

    client_id: int
    budget: int  # trainable experts per layer (budget_scope="layer") or in the whole model
    num_examples: int
    profile: str


class Method:
    """Base class. Subclasses set ``name`` and override ``plan`` and/or ``aggregate``."""

    name = "base"
    #: False for methods that train the whole model whatever the device (FedAvg): a client whose
    #: training state does not fit its memory then fails the round.
    respects_budget = True
    #: With ``respects_budget = False``: skip (not fail) the clients that do not fit (FedAvg-drop).
    drops_unfit = False
    #: Train one client on the pooled data of all clients (the centralised upper bound).
    pools_data = False
    #: The run seed, set by the engine, for methods that draw random choices.
    seed = 0

    def __init__(self, **options: Any) -> None:
        self.options = options

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        """Bytes ``client`` downloads this round (default: the whole global model)."""
        del mm, client
        return full_bytes

    def begin_round(self, mm: MoEModel, clients: Sequence[ClientInfo], round_idx: int) -> None:
        """Called once per round, before any ``plan``, with the clients that will train (server-side
        joint decisions such as FLEX-MoE's assignment). Default: nothing."""
        del mm, clients, round_idx

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        raise NotImplementedError

    def aggregate(self, mm: MoEModel, updates: Sequence[ClientUpdate], round_idx: int) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-able method state for checkpoints (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


# --- shared aggregation steps -------------------------------------------------------------


def num_examples_of(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    return torch.tensor([u.num_examples for u in updates], dtype=torch.float64)  # (C,)


def stack_client_experts(
    mm: MoEModel, layer: int, updates: Sequence[ClientUpdate]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Global experts of ``layer`` (E, *P) and client experts (C, E, *P); untrained slices = global."""
    glob = mm.get_experts(layer)
    clients = {}
    for name, g in glob.items():
        stack = g.unsqueeze(0).repeat(len(updates), *([1] * g.dim())).clone()  # (C, E, *P)
        for c, u in enumerate(updates):
            for (l, e), tensors in u.experts.items():
                if l == layer:
                    stack[c, e] = tensors[name]
        clients[name] = stack
    return glob, clients


def aggregate_experts_sparse(
    mm: MoEModel,
    updates: Sequence[ClientUpdate],
    *,
    tau: float,
    usage_gate: bool = True,
) -> None:
    """Eq. 17 for every layer: each expert from the clients that trained it (and used it >= tau)."""
    n = num_examples_of(updates)
    for layer in range(mm.num_layers):
        glob, clients = stack_client_experts(mm, layer, updates)
        trained = torch.stack([u.trained[layer] for u in updates])  # (C, E)
        usage = torch.stack([u.usage[layer] for u in updates]).to(torch.float64)  # (C, E)
        if not usage_gate:
            usage = torch.ones_like(usage)
        new = {
            name: aggregate_experts(glob[name], clients[name], usage.to(glob[name].dtype),
                                    trained, n.to(glob[name].dtype), tau)
            for name in glob
        }
        mm.set_experts(layer, new)


def aggregate_experts_uniform(mm: MoEModel, updates: Sequence[ClientUpdate]) -> None:
    """Plain FedAvg of whole expert tensors over all clients (the "avg" ablation): every client's
    copy counts, trained or not."""
    n = num_examples_of(updates)
    for layer in range(mm.num_layers):
        _, clients = stack_client_experts(mm, layer, updates)
        mm.set_experts(layer, {k: fedavg(v, n.to(v.dtype)) for k, v in clients.items()})


def aggregate_routers_fedavg(mm: MoEModel, updates: Sequence[ClientUpdate]) -> None:
    """Routers averaged by data size over the clients that sent one."""
    senders = [u for u in updates if u.routers]
    if not senders:
        return
    n = num_examples_of(senders)
    for layer in range(mm.num_layers):
        state = mm.router_state(layer)
        new = {}
        for name, g in state.items():
            if all(name in u.routers[layer] for u in senders):
                new[name] = fedavg(torch.stack([u.routers[layer][name] for u in senders]), n.to(g.dtype))
            else:
                new[name] = g
        mm.set_router_state(layer, new)


def aggregate_dense_fedavg(mm: MoEModel, updates: Sequence[ClientUpdate]) -> None:
    """Every dense tensor averaged by data size over the clients that trained it."""
    params = mm.dense_named_parameters()
    names = sorted({k for u in updates for k in u.dense})
    with torch.no_grad():
        for name in names:
            senders = [u for u in updates if name in u.dense]
            n = num_examples_of(senders)
            stacked = torch.stack([u.dense[name] for u in senders])
            params[name].copy_(fedavg(stacked, n.to(stacked.dtype)))


def routed_mask(routing: Any, num_experts: int) -> torch.Tensor:
    """(E,) bool: experts at least one real token of the batch was routed to (E_union)."""
    return routed_experts(routing.topk_idx, routing.token_mask, num_experts)


def all_experts(mm: MoEModel) -> list[Sequence[int] | None]:
    return [None] * mm.num_layers
