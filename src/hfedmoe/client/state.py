"""Per-round accounting of trainable expert state (gradients + optimizer state).

A client's memory cap pays for ``budget`` trainable experts (per layer, or in the whole model).
Per-batch selectors (HFedMoE, flux-freq, random, oracle) pick a *different* subset each batch, and
one optimizer over every expert leaf would keep the Adam moments of every expert ever selected in
the round: budget-1 clients then hold state for several experts per layer at once, i.e. more
capacity than the cap pays for.

Choice: **evict**. Before each optimizer step the optimizer state (and any gradient) of every
expert that is not trained in this step is dropped, so at every step only the experts of this
step carry state. An expert that is selected again later restarts its moments from zero (AdamW's
step count and bias correction restart with them). The alternative, charging the union of the
round's selections against the cap, would have forced per-batch methods to freeze their choice
once the budget is reached, i.e. to stop being per-batch; eviction keeps every method's selection
rule as published and the memory bound exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

Leaves = Mapping[tuple[int, int], Sequence[torch.Tensor]]


def has_state(opt: torch.optim.Optimizer, leaves: Sequence[torch.Tensor]) -> bool:
    """True if any leaf of one expert holds a gradient or optimizer state."""
    return any(t.grad is not None or bool(opt.state.get(t)) for t in leaves)


def live_expert_state(opt: torch.optim.Optimizer, expert_leaves: Leaves, num_layers: int) -> torch.Tensor:
    """(L,) long: per MoE layer, the experts whose leaves hold a gradient or optimizer state now."""
    counts = torch.zeros(num_layers, dtype=torch.long)
    for (layer, _), leaves in expert_leaves.items():
        if has_state(opt, leaves):
            counts[layer] += 1
    return counts


def evict_expert_state(opt: torch.optim.Optimizer, expert_leaves: Leaves, keep: Iterable[tuple[int, int]]) -> int:
    """Drop gradients and optimizer state of every expert not in ``keep``; returns how many
    experts lost state."""
    keep = set(keep)
    evicted = 0
    for key, leaves in expert_leaves.items():
        if key in keep:
            continue
        dropped = False
        for t in leaves:
            if t.grad is not None:
                t.grad = None
                dropped = True
            if opt.state.pop(t, None):
                dropped = True
        evicted += int(dropped)
    return evicted


def experts_with_grad(expert_leaves: Leaves) -> list[tuple[int, int]]:
    """The experts (layer, idx) whose leaves all received a gradient in this backward."""
    return [key for key, leaves in expert_leaves.items() if leaves and all(t.grad is not None for t in leaves)]


def grad_norms(expert_leaves: Leaves, num_layers: int, num_experts: int) -> torch.Tensor:
    """(L, E) float64: L2 norm of each expert's gradient (0 where it has none)."""
    out = torch.zeros(num_layers, num_experts, dtype=torch.float64)
    keys, sqs = [], []
    for key, leaves in expert_leaves.items():
        grads = [t.grad.detach().double().pow(2).sum() for t in leaves if t.grad is not None]
        if grads:
            keys.append(key)
            sqs.append(torch.stack(grads).sum())
    if sqs:
        values = torch.stack(sqs).sqrt().cpu()  # one device->host read for every expert
        for (layer, e), v in zip(keys, values):
            out[layer, e] = v
    return out
