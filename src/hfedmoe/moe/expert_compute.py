"""How one expert computes, outside the family's own forward: the adapter's training paths use
these when they must compute an expert with other tensors than its stored ones (LoRA experts'
``W_e + s B_e A_e``, the MoEfied BERT's experts, detached Switch experts).

``fused_expert_apply`` is one fused-layout expert (gated or not, transposed or not, with biases);
``fused_experts_loop`` is transformers' eager experts loop with a pluggable per-expert computation
(``eager_experts_forward``: with the module's own tensors), one device->host read per call or none;
``switch_expert_apply`` is one Switch expert with optionally detached weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool):
    if transposed:  # weight (in, out)
        out = x @ weight
        return out + bias if bias is not None else out
    return F.linear(x, weight, bias)  # weight (out, in)


def fused_expert_apply(experts: nn.Module, x: torch.Tensor, tensors: Mapping[str, torch.Tensor],
                       linear: Callable = _linear) -> torch.Tensor:
    """One fused-layout expert on its tokens: ``x (N, H) -> (N, H)``.

    ``tensors`` maps local names (``gate_up_proj``, ``down_proj``, ``*_bias``...) to this expert's
    slices. Handles gated (``act(gate) * up`` through the module's ``_apply_gate``) and non-gated
    (``act(up)``) experts, transposed weights and biases. ``linear(x, weight, bias, transposed)``:
    one projection (the static dispatch passes grouped projections of several experts' stacks).
    """
    transposed = bool(getattr(experts, "is_transposed", False))
    if "gate_up_proj" in tensors:
        h = linear(x, tensors["gate_up_proj"], tensors.get("gate_up_proj_bias"), transposed)  # (N, 2I)
        if hasattr(experts, "_apply_gate"):
            h = experts._apply_gate(h)  # (N, I)
        else:
            gate, up = h.chunk(2, dim=-1)
            h = experts.act_fn(gate) * up
    else:
        h = experts.act_fn(linear(x, tensors["up_proj"], tensors.get("up_proj_bias"), transposed))  # (N, I)
    return linear(h, tensors["down_proj"], tensors.get("down_proj_bias"), transposed)  # (N, H)


#: Set on an experts stand-in (``moe/hooks.py``) whose (token, slot) pairs already come grouped by
#: expert in increasing order: the host list of group sizes, one per expert of the stand-in.
GROUP_SIZES_ATTR = "_hfedmoe_group_sizes"


def fused_experts_loop(
    experts: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    run_expert: Callable[[int, torch.Tensor], torch.Tensor],
    *,
    also_read: torch.Tensor | None = None,
    on_read: Callable[[list[int]], None] | None = None,
) -> torch.Tensor:
    """transformers' eager experts loop with a pluggable per-expert computation, dispatched by a
    sort: the (token, slot) pairs are grouped by expert with one stable argsort, and the group sizes
    reach the host in one read (the eager loop's ``nonzero`` + one ``where`` per expert took 1 + E).

    No read at all when ``experts`` carries :data:`GROUP_SIZES_ATTR` (a stand-in of the adapter's
    dispatch, which read the sizes already): the pairs are then taken as grouped, in that order.

    Parameters
    ----------
    hidden_states : Tensor ``(T, H)``
    top_k_index : Tensor ``(T, k)`` long
    top_k_weights : Tensor ``(T, k)``
    run_expert : ``(expert_idx, x (N, H)) -> (N, H)``
    also_read : Tensor ``(n,)`` long, optional
        Read in the same device->host transfer as the group sizes; ``on_read`` gets its values
        before any expert runs (the LoRA loop's per-batch selection rides along this way).
    """
    num_experts = experts.num_experts
    k = top_k_index.shape[1]
    final = torch.zeros_like(hidden_states)  # (T, H)
    known = getattr(experts, GROUP_SIZES_ATTR, None)
    if known is not None and also_read is None:
        token_idx = torch.arange(top_k_index.shape[0], device=top_k_index.device).repeat_interleave(k)  # (T*k,)
        top_k_pos = torch.arange(k, device=top_k_index.device).repeat(top_k_index.shape[0])  # (T*k,)
        sizes = list(known)
    else:
        with torch.no_grad():
            flat = top_k_index.reshape(-1).clamp(0, num_experts)  # (T*k,) index E = "no expert"
            order = torch.argsort(flat, stable=True)  # (T*k,) pairs grouped by expert, tokens in order
            counts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device).index_add_(
                0, flat, torch.ones_like(flat))  # (E+1,)
            token_idx, top_k_pos = order // k, order % k  # (T*k,)
            if also_read is not None:
                counts = torch.cat([counts, also_read.to(counts)])
        values = counts.tolist()  # the one device->host read
        sizes = values[:num_experts]
        if on_read is not None:
            on_read(values[num_experts + 1:])
    start = 0
    for expert_idx, n in enumerate(sizes):
        if n:
            tok, pos = token_idx[start:start + n], top_k_pos[start:start + n]  # (N,)
            out = run_expert(expert_idx, hidden_states[tok])  # (N, H)
            out = out * top_k_weights[tok, pos, None]
            final.index_add_(0, tok, out.to(final.dtype))
        start += n
    return final


def eager_experts_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' eager experts forward of a fused-layout module (gated or not, transposed or
    not, biases), through :func:`fused_experts_loop`: ``(T, H) -> (T, H)``."""
    names = [n for n in ("gate_up_proj", "gate_up_proj_bias", "up_proj", "up_proj_bias", "down_proj",
                         "down_proj_bias") if getattr(experts, n, None) is not None]

    def run(idx: int, x: torch.Tensor) -> torch.Tensor:
        return fused_expert_apply(experts, x, {n: getattr(experts, n)[idx] for n in names})

    return fused_experts_loop(experts, hidden_states, top_k_index, top_k_weights, run)


def switch_expert_apply(expert: nn.Module, x: torch.Tensor, detach: bool) -> torch.Tensor:
    """One Switch expert (``SwitchTransformersDenseActDense``), optionally with detached weights."""
    if not detach:
        return expert(x)
    h = expert.act(F.linear(x, expert.wi.weight.detach()))
    h = expert.dropout(h)
    if h.dtype != expert.wo.weight.dtype and expert.wo.weight.dtype != torch.int8:
        h = h.to(expert.wo.weight.dtype)
    return F.linear(h, expert.wo.weight.detach())
