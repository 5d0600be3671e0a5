"""Forwards that ``wrap`` installs on routers and expert modules, and the attention-mask grabber.

With no adapter context active they call the class's own forward (outputs unchanged). Inside
``train_only`` padding tokens skip the experts (``adapter.skip_padding``, default True): their
expert output is 0 instead of computed. Real tokens never attend to padding, so their outputs
are unchanged, and the expert FLOPs follow the real tokens only."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hfedmoe.moe import expert_compute
from hfedmoe.moe.protocol import AdapterCore


_MODES = ("no_grad", "detach")


# --------------------------------------------------------------------------------------------
# installed forwards
# --------------------------------------------------------------------------------------------
def _router_forward(self: nn.Module, *args, **kwargs):
    adapter, layer = self._hfedmoe
    if not adapter._is_active():
        return type(self).forward(self, *args, **kwargs)
    return adapter._route(layer, self, args, kwargs)


def _fused_experts_forward(self: nn.Module, hidden_states, top_k_index, top_k_weights):
    """Inside ``train_only``, the class's own forward, i.e. transformers' experts-implementation
    registry (``config._experts_implementation``: eager, batched_mm, grouped_mm or any function
    registered in ``ALL_EXPERTS_FUNCTIONS``), runs on stand-ins of this module: once on the
    (token, slot) pairs routed to selected experts, with those experts' leaves stacked (only they
    get gradients), once on the pairs routed to frozen experts, with detached weights. Each pair is
    one row with top-1 routing, so no implementation needs a "no expert" index; padding pairs
    are dropped."""
    adapter, layer = self._hfedmoe
    train = adapter._innermost("train")
    own = type(self).forward  # the registry dispatch of use_experts_implementation classes
    if train is None:
        return own(self, hidden_states, top_k_index, top_k_weights)
    info = adapter._layers[layer]
    num_experts = info.num_experts
    num_tokens, k = top_k_index.shape
    device = top_k_index.device
    token = torch.arange(num_tokens, device=device).repeat_interleave(k)  # (T*k,) token of each pair
    expert = top_k_index.reshape(-1)  # (T*k,)
    weight = top_k_weights.reshape(-1, 1)  # (T*k, 1)
    keep = expert < num_experts
    if getattr(adapter, "skip_padding", True):
        real = adapter._token_mask(info, num_tokens, train.attention_mask, device)  # (T,)
        keep = keep & real[token]
    chosen = train._selected_sets.get(layer)
    is_selected = torch.ones(num_experts + 1, dtype=torch.bool, device=device)
    if chosen is not None:
        is_selected[:] = False
        is_selected[sorted(chosen)] = True
    trained = keep & is_selected[expert.clamp(max=num_experts)]  # (T*k,)
    frozen = keep & ~trained  # (T*k,)
    # pairs grouped by a stable sort (trained, then frozen, then dropped) and every count the host
    # needs in one read: trained pairs per expert (E+1,) and the frozen pairs
    group = torch.where(trained, 0, torch.where(frozen, 1, 2))  # (T*k,)
    order = torch.argsort(group, stable=True)  # (T*k,)
    per_expert = torch.zeros(num_experts + 1, dtype=torch.long, device=device).index_add_(
        0, expert.clamp(max=num_experts), trained.long())  # (E+1,)
    counts = torch.cat([per_expert, frozen.sum().view(1)]).tolist()  # the one device->host read
    num_trained, num_frozen = sum(counts[:num_experts]), counts[-1]
    out = torch.zeros_like(hidden_states)  # (T, H)
    rows = order[:num_trained]
    if num_trained:
        # only selected experts that some pair reaches join the stack: a selected expert no token
        # reaches gets no gradient at all (None, not zeros), as with the family's own forward
        used = [e for e in range(num_experts) if counts[e]]
        position = torch.full((num_experts + 1,), -1, dtype=torch.long, device=device)
        position[used] = torch.arange(len(used), device=device)  # expert -> row in the stack
        leaves = adapter._leaves[layer]
        stacked = {n: torch.stack([leaves[e][i] for e in used]) for i, n in enumerate(info.param_names)}
        y = own(_stand_in(self, stacked, len(used)), hidden_states[token[rows]],
                position[expert[rows]].unsqueeze(1), weight[rows])  # (P, H)
        out = out.index_add(0, token[rows], y.to(out.dtype))
    rows = order[num_trained:num_trained + num_frozen]
    if num_frozen:
        frozen = _stand_in(self, {n: getattr(self, n).detach() for n in info.param_names}, num_experts)
        args = (hidden_states[token[rows]], expert[rows].unsqueeze(1))
        if train.mode == "detach":  # detached weights; gradient to the input and routing weights
            y = own(frozen, *args, weight[rows])
        else:  # "no_grad": weight 1 inside, the routing weight outside keeps the router's gradient
            with torch.no_grad():
                y = own(frozen, *args, torch.ones_like(weight[rows]))
            y = y * weight[rows]
        out = out.index_add(0, token[rows], y.to(out.dtype))
    return out


def _stand_in(experts: nn.Module, tensors: dict, num_experts: int) -> nn.Module:
    """A shallow copy of ``experts`` whose fused tensors are ``tensors`` ``{name: (n, ...)}``: its
    own forward (and any registered implementation) then computes with them."""
    stand_in = object.__new__(type(experts))
    stand_in.__dict__.update(experts.__dict__)
    stand_in.__dict__.update(tensors, num_experts=num_experts)
    return stand_in


def _switch_experts_forward(self: nn.Module, hidden_states, selected_experts, routing_weights):
    adapter, layer = self._hfedmoe
    train = adapter._innermost("train")
    if train is None:
        return type(self).forward(self, hidden_states, selected_experts, routing_weights)
    selected = train._selected_sets.get(layer)
    pad = _padding(adapter, adapter._layers[layer], train, hidden_states)
    if pad is not None:  # padding rows hit no expert
        selected_experts = selected_experts.masked_fill(pad.view(-1, 1, 1), 0)
    final = torch.zeros_like(hidden_states)  # (T, H)
    expert_mask = selected_experts.permute(2, 1, 0)  # (E, 1, T)
    expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit.flatten().tolist():
        pos, token_idx = torch.where(expert_mask[expert_idx])
        x = hidden_states[token_idx]  # (N, H)
        expert = self[f"expert_{expert_idx}"]
        if selected is None or expert_idx in selected:
            out = expert(x)
        elif train.mode == "no_grad":
            with torch.no_grad():
                out = expert_compute.switch_expert_apply(expert, x, detach=True)
        else:
            out = expert_compute.switch_expert_apply(expert, x, detach=True)
        out = out * routing_weights[token_idx, pos, None]
        final.index_add_(0, token_idx, out.to(hidden_states.dtype))
    return final


def _padding(adapter, info, train, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """(T,) bool, True for padding tokens, or None when nothing is padding (or skipping is off)."""
    if not getattr(adapter, "skip_padding", True):
        return None
    num_tokens = hidden_states.shape[0]
    real = adapter._token_mask(info, num_tokens, train.attention_mask, hidden_states.device)  # (T,)
    if bool(real.all()):
        return None
    return ~real


class _MaskGrabber:
    """Forward pre-hook of the top-level model: remembers its attention masks while a context is on."""

    def __init__(self, adapter: AdapterCore):
        self.adapter = adapter
        self._signature: inspect.Signature | None = None

    def __call__(self, module, args, kwargs):
        adapter = self.adapter
        if not adapter._is_active():
            return None
        masks = {}
        for key in ("attention_mask", "decoder_attention_mask"):
            value = kwargs.get(key)
            if value is None and args:
                value = self._positional(module, args, key)
            masks[key] = value
        adapter._masks = masks
        return None

    def _positional(self, module, args, key):
        try:
            if self._signature is None:
                self._signature = inspect.signature(type(module).forward)
            bound = self._signature.bind_partial(module, *args)
        except (TypeError, ValueError):
            return None
        return bound.arguments.get(key)


