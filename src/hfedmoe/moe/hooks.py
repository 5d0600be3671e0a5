"""Forwards that ``wrap`` installs on routers and expert modules, and the attention-mask grabber.

With no adapter context active they call the class's own forward (outputs unchanged). Inside
``train_only`` padding tokens skip the experts (``adapter.skip_padding``, default True): their
expert output is 0 instead of computed. Real tokens never attend to padding, so their outputs
are unchanged, and the expert FLOPs follow the real tokens only."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hfedmoe.moe import expert_compute, static_dispatch
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
    are dropped.

    One device->host read per layer: the pairs are sorted once by (trained / frozen / dropped,
    expert), and the sizes of those groups and a selector's device-side choice reach the host
    together. The stand-ins carry the sizes (:data:`~hfedmoe.moe.expert_compute.GROUP_SIZES_ATTR`),
    so the eager loops (transformers' ``"eager"``, done here by
    :func:`~hfedmoe.moe.expert_compute.eager_experts_forward`, and the project's fused experts) read
    nothing more; ``grouped_mm`` and ``batched_mm`` read nothing anyway."""
    adapter, layer = self._hfedmoe
    train = adapter._innermost("train")
    own = type(self).forward  # the registry dispatch of use_experts_implementation classes
    if train is None:
        return own(self, hidden_states, top_k_index, top_k_weights)
    if getattr(getattr(self, "config", None), "_experts_implementation", None) == "eager" and not getattr(
            self, "has_post_expert_norm", False):
        own = expert_compute.eager_experts_forward  # the eager loop without its 1 + E reads
    info = adapter._layers[layer]
    num_experts = info.num_experts
    num_tokens, k = top_k_index.shape
    device = top_k_index.device
    token = torch.arange(num_tokens, device=device).repeat_interleave(k)  # (T*k,) token of each pair
    expert = top_k_index.reshape(-1).clamp(0, num_experts)  # (T*k,) E = "no expert"
    weight = top_k_weights.reshape(-1, 1)  # (T*k, 1)
    keep = expert < num_experts
    if getattr(adapter, "skip_padding", True):
        real = adapter._token_mask(info, num_tokens, train.attention_mask, device)  # (T,)
        keep = keep & real[token]
    num_slots = train.static_slots(layer, num_experts)
    if num_slots is not None and static_dispatch.supports(self, info.param_names):  # no read here
        chosen = train.chosen_mask(layer, num_experts, device)  # (E,)
        out, record = static_dispatch.static_experts_forward(
            self, info.param_names, chosen, num_slots, hidden_states, top_k_index, top_k_weights, keep, train.mode)
        train.add_record(layer, record)
        return out
    pending = train.pending_mask(layer)  # (E,) bool on the device, or None: known on the host
    if pending is not None:
        is_selected = torch.cat([pending.to(device), pending.new_zeros(1).to(device)])  # (E+1,)
    else:
        chosen = train.selected_set(layer)
        is_selected = torch.ones(num_experts + 1, dtype=torch.bool, device=device)
        if chosen is not None:
            is_selected[:] = False
            is_selected[sorted(chosen)] = True
    trained = keep & is_selected[expert]  # (T*k,)
    frozen = keep & ~trained  # (T*k,)
    # one sort: trained pairs grouped by expert, then frozen pairs grouped by expert, then dropped
    group = torch.where(trained, 0, torch.where(frozen, 1, 2))  # (T*k,)
    key = group * (num_experts + 1) + expert  # (T*k,)
    order = torch.argsort(key, stable=True)  # (T*k,)
    sizes = torch.zeros(3 * (num_experts + 1), dtype=torch.long, device=device).index_add_(
        0, key, torch.ones_like(key))  # (3(E+1),) pairs per (group, expert)
    packed = [sizes[:num_experts], sizes[num_experts + 1:2 * num_experts + 1]]  # trained, frozen (E,) each
    if pending is not None:
        packed.append(pending.to(device).long())
    counts = torch.cat(packed).tolist()  # the one device->host read of this layer
    trained_sizes, frozen_sizes = counts[:num_experts], counts[num_experts:2 * num_experts]
    if pending is not None:
        train.resolve(layer, [e for e, c in enumerate(counts[2 * num_experts:]) if c])
    num_trained, num_frozen = sum(trained_sizes), sum(frozen_sizes)
    out = torch.zeros_like(hidden_states)  # (T, H)
    rows = order[:num_trained]
    if num_trained:
        # only selected experts that some pair reaches join the stack: a selected expert no token
        # reaches gets no gradient at all (None, not zeros), as with the family's own forward
        used = [e for e in range(num_experts) if trained_sizes[e]]
        position = torch.full((num_experts + 1,), -1, dtype=torch.long, device=device)
        position[used] = torch.arange(len(used), device=device)  # expert -> row in the stack
        leaves = adapter._leaves[layer]
        stacked = {n: torch.stack([leaves[e][i] for e in used]) for i, n in enumerate(info.param_names)}
        stand_in = _stand_in(self, stacked, len(used), [trained_sizes[e] for e in used])
        y = own(stand_in, hidden_states[token[rows]], position[expert[rows]].unsqueeze(1), weight[rows])  # (P, H)
        out = out.index_add(0, token[rows], y.to(out.dtype))
    rows = order[num_trained:num_trained + num_frozen]
    if num_frozen:
        stand_in = _stand_in(self, {n: getattr(self, n).detach() for n in info.param_names}, num_experts,
                             frozen_sizes)
        args = (hidden_states[token[rows]], expert[rows].unsqueeze(1))
        if train.mode == "detach":  # detached weights; gradient to the input and routing weights
            y = own(stand_in, *args, weight[rows])
        else:  # "no_grad": weight 1 inside, the routing weight outside keeps the router's gradient
            with torch.no_grad():
                y = own(stand_in, *args, torch.ones_like(weight[rows]))
            y = y * weight[rows]
        out = out.index_add(0, token[rows], y.to(out.dtype))
    return out


def _stand_in(experts: nn.Module, tensors: dict, num_experts: int, group_sizes: list[int]) -> nn.Module:
    """A shallow copy of ``experts`` whose fused tensors are ``tensors`` ``{name: (n, ...)}``: its
    own forward (and any registered implementation) then computes with them. ``group_sizes``:
    the host sizes of the expert groups its pairs come in (the eager loops then read nothing)."""
    stand_in = object.__new__(type(experts))
    stand_in.__dict__.update(experts.__dict__)
    stand_in.__dict__.update(tensors, num_experts=num_experts)
    stand_in.__dict__[expert_compute.GROUP_SIZES_ATTR] = group_sizes
    return stand_in


def _switch_experts_forward(self: nn.Module, hidden_states, selected_experts, routing_weights):
    """Inside ``train_only``: Switch's experts loop (``selected_experts (T, 1, E)`` one-hot, all
    zero for a token over capacity; ``routing_weights (T, 1)``) through
    :func:`~hfedmoe.moe.expert_compute.fused_experts_loop`, one device->host read per layer (the
    group sizes, with a selector's device-side choice riding along)."""
    adapter, layer = self._hfedmoe
    train = adapter._innermost("train")
    if train is None:
        return type(self).forward(self, hidden_states, selected_experts, routing_weights)
    num_experts = selected_experts.shape[-1]
    pending = train.pending_mask(layer)  # (E,) bool on the device, or None: known on the host
    selected = train.selected_set(layer) if pending is None else set()
    hit = selected_experts.reshape(-1, num_experts)  # (T, E)
    top_index = torch.where(hit.any(-1), hit.argmax(-1), num_experts).unsqueeze(1)  # (T, 1); E = no expert
    pad = _padding(adapter, adapter._layers[layer], train, hidden_states)
    if pad is not None:  # padding rows hit no expert
        top_index = top_index.masked_fill(pad.unsqueeze(1), num_experts)

    def on_read(mask: list[int]) -> None:
        train.resolve(layer, [e for e, c in enumerate(mask) if c])
        selected.update(train.selected_set(layer))

    def run(expert_idx: int, x: torch.Tensor) -> torch.Tensor:
        expert = self[f"expert_{expert_idx}"]
        if selected is None or expert_idx in selected:
            return expert(x)
        if train.mode == "no_grad":
            with torch.no_grad():
                return expert_compute.switch_expert_apply(expert, x, detach=True)
        return expert_compute.switch_expert_apply(expert, x, detach=True)

    return expert_compute.fused_experts_loop(self, hidden_states, top_index, routing_weights.reshape(-1, 1), run,
                                             also_read=pending, on_read=on_read if pending is not None else None)


def _padding(adapter, info, train, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """(T,) bool, True for padding tokens, or None when skipping is off (no device read: a batch
    without padding gets an all-False mask)."""
    if not getattr(adapter, "skip_padding", True):
        return None
    num_tokens = hidden_states.shape[0]
    real = adapter._token_mask(info, num_tokens, train.attention_mask, hidden_states.device)  # (T,)
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


