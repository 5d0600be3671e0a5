"""Forwards that ``wrap`` installs on routers and expert modules, and the attention-mask grabber.

With no adapter context active they call the class's own forward (outputs unchanged). Inside
``train_only`` padding tokens skip the experts (``adapter.skip_padding``, default True): their
expert output is 0 instead of computed. Real tokens never attend to padding, so their outputs
are unchanged, and the expert FLOPs follow the real tokens only."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hfedmoe.moe import layouts
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
    adapter, layer = self._hfedmoe
    train = adapter._innermost("train")
    if train is None:
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    info = adapter._layers[layer]
    selected = train._selected_sets.get(layer)
    leaves = adapter._leaves[layer]
    names = info.param_names
    pad = _padding(adapter, info, train, hidden_states)
    if pad is not None:  # index num_experts = "no expert": the loop skips it
        top_k_index = top_k_index.masked_fill(pad.unsqueeze(1), self.num_experts)

    def run(expert_idx: int, x: torch.Tensor) -> torch.Tensor:
        if selected is None or expert_idx in selected:
            return layouts.fused_expert_apply(self, x, dict(zip(names, leaves[expert_idx])))
        frozen = {n: getattr(self, n).detach()[expert_idx] for n in names}
        if train.mode == "no_grad":
            with torch.no_grad():
                return layouts.fused_expert_apply(self, x, frozen)
        return layouts.fused_expert_apply(self, x, frozen)

    return layouts.fused_experts_loop(self, hidden_states, top_k_index, top_k_weights, run)


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
                out = layouts.switch_expert_apply(expert, x, detach=True)
        else:
            out = layouts.switch_expert_apply(expert, x, detach=True)
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


