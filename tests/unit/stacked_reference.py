"""The stacked (hold-every-update) aggregation the methods used before streaming, kept verbatim
as the reference the streaming implementation is checked against (tests only)."""

from __future__ import annotations

import torch

from hfedmoe.core.aggregation import (
    aggregate_experts,
    aggregate_routers,
    aggregate_trained,
    fedavg,
    routing_consistency,
)


def num_examples_of(updates):
    return torch.tensor([u.num_examples for u in updates], dtype=torch.float64)  # (C,)


def stack_client_experts(mm, layer, updates):
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


def experts_sparse(mm, updates, *, tau, usage_gate=True):
    n = num_examples_of(updates)
    for layer in range(mm.num_layers):
        glob, clients = stack_client_experts(mm, layer, updates)
        trained = torch.stack([u.trained[layer] for u in updates])  # (C, E)
        usage = torch.stack([u.usage[layer] for u in updates]).to(torch.float64)  # (C, E)
        if not usage_gate:
            usage = torch.ones_like(usage)
        new = {name: aggregate_experts(glob[name], clients[name], usage.to(glob[name].dtype), trained,
                                       n.to(glob[name].dtype), tau) for name in glob}
        mm.set_experts(layer, new)


def experts_uniform(mm, updates):
    n = num_examples_of(updates)
    for layer in range(mm.num_layers):
        _, clients = stack_client_experts(mm, layer, updates)
        mm.set_experts(layer, {k: fedavg(v, n.to(v.dtype)) for k, v in clients.items()})


def routers_fedavg(mm, updates):
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


def dense_fedavg(mm, updates):
    params = mm.dense_named_parameters()
    names = sorted({k for u in updates for k in u.dense})
    with torch.no_grad():
        for name in names:
            senders = [u for u in updates if name in u.dense]
            n = num_examples_of(senders)
            stacked = torch.stack([u.dense[name] for u in senders])
            params[name].copy_(fedavg(stacked, n.to(stacked.dtype)))


def fedavg_trained(mm, updates, *, routers=True):
    experts_sparse(mm, updates, tau=0.0, usage_gate=False)
    if routers:
        routers_fedavg(mm, updates)
    dense_fedavg(mm, updates)


def hfedmoe(mm, updates, *, tau, gate_weights="normalized", expert_aggregation="sparse"):
    if expert_aggregation == "sparse":
        experts_sparse(mm, updates, tau=tau)
    else:
        experts_uniform(mm, updates)
    metrics = {}
    senders = [u for u in updates if u.routers]
    if senders and gate_weights == "uniform":
        routers_fedavg(mm, senders)
    elif senders:
        consistency = []
        for layer in range(mm.num_layers):
            usage = torch.stack([u.usage[layer] for u in senders])  # (C, E)
            importance = torch.stack([u.importance[layer] for u in senders])  # (C, E)
            state = mm.router_state(layer)
            weight = state["weight"]
            clients = torch.stack([u.routers[layer]["weight"] for u in senders])  # (C, E, H)
            new_w, alpha = aggregate_routers(weight, clients, usage.to(weight.dtype), importance.to(weight.dtype),
                                             tau, normalize=gate_weights == "normalized")
            state["weight"] = new_w
            for name in state:
                if name != "weight" and alpha.sum() > 0:
                    stacked = torch.stack([u.routers[layer][name] for u in senders])
                    a = alpha.to(stacked.dtype) / (alpha.sum() if gate_weights == "normalized" else 1)
                    state[name] = torch.einsum("c,c...->...", a, stacked)
            mm.set_router_state(layer, state)
            consistency.append(routing_consistency(usage, tau).mean())
        metrics["routing_consistency"] = float(torch.stack(consistency).mean())
    dense_fedavg(mm, updates)
    return metrics


def fedmoe(mm, updates, held):
    experts_sparse(mm, updates, tau=0.0, usage_gate=False)
    senders = [u for u in updates if u.routers]
    if senders:
        E = mm.num_experts
        n = num_examples_of(senders)
        for layer in range(mm.num_layers):
            mask = torch.zeros(len(senders), E, dtype=torch.bool)  # (C, E)
            for c, u in enumerate(senders):
                mask[c, held[u.client_id][layer]] = True
            state = mm.router_state(layer)
            new = {}
            for name, g in state.items():
                clients = torch.stack([u.routers[layer][name] for u in senders])  # (C, *shape)
                if g.dim() >= 1 and g.shape[0] == E:
                    new[name] = aggregate_trained(g, clients, mask, n.to(g.dtype))
                else:
                    w = (n / n.sum()).to(g.dtype)
                    new[name] = torch.einsum("c,c...->...", w, clients)
            mm.set_router_state(layer, new)
    dense_fedavg(mm, updates)
