"""How one expert computes, outside the family's own forward: the adapter's training paths use
these when they must compute an expert with other tensors than its stored ones (LoRA experts'
``W_e + s B_e A_e``, the MoEfied BERT's experts, detached Switch experts).

``fused_expert_apply`` is one fused-layout expert (gated or not, transposed or not, with biases);
``fused_experts_loop`` is transformers' eager experts loop with a pluggable per-expert computation;
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


def fused_expert_apply(experts: nn.Module, x: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One fused-layout expert on its tokens: ``x (N, H) -> (N, H)``.

    ``tensors`` maps local names (``gate_up_proj``, ``down_proj``, ``*_bias``...) to this expert's
    slices. Handles gated (``act(gate) * up`` through the module's ``_apply_gate``) and non-gated
    (``act(up)``) experts, transposed weights and biases.
    """
    transposed = bool(getattr(experts, "is_transposed", False))
    if "gate_up_proj" in tensors:
        h = _linear(x, tensors["gate_up_proj"], tensors.get("gate_up_proj_bias"), transposed)  # (N, 2I)
        if hasattr(experts, "_apply_gate"):
            h = experts._apply_gate(h)  # (N, I)
        else:
            gate, up = h.chunk(2, dim=-1)
            h = experts.act_fn(gate) * up
    else:
        h = experts.act_fn(_linear(x, tensors["up_proj"], tensors.get("up_proj_bias"), transposed))  # (N, I)
    return _linear(h, tensors["down_proj"], tensors.get("down_proj_bias"), transposed)  # (N, H)


def fused_experts_loop(
    experts: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    run_expert: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """transformers' eager experts loop with a pluggable per-expert computation, dispatched by a
    sort: the (token, slot) pairs are grouped by expert with one stable argsort, and the group sizes
    reach the host in one read (the eager loop's ``nonzero`` + one ``where`` per expert took 1 + E).

    Parameters
    ----------
    hidden_states : Tensor ``(T, H)``
    top_k_index : Tensor ``(T, k)`` long
    top_k_weights : Tensor ``(T, k)``
    run_expert : ``(expert_idx, x (N, H)) -> (N, H)``
    """
    num_experts = experts.num_experts
    k = top_k_index.shape[1]
    final = torch.zeros_like(hidden_states)  # (T, H)
    with torch.no_grad():
        flat = top_k_index.reshape(-1).clamp(0, num_experts)  # (T*k,) index E = "no expert"
        order = torch.argsort(flat, stable=True)  # (T*k,) pairs grouped by expert, tokens in order
        sizes = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device).index_add_(
            0, flat, torch.ones_like(flat))  # (E+1,)
        token_idx, top_k_pos = order // k, order % k  # (T*k,)
    start = 0
    for expert_idx, n in enumerate(sizes.tolist()[:num_experts]):  # the one device->host read
        if n:
            tok, pos = token_idx[start:start + n], top_k_pos[start:start + n]  # (N,)
            out = run_expert(expert_idx, hidden_states[tok])  # (N, H)
            out = out * top_k_weights[tok, pos, None]
            final.index_add_(0, tok, out.to(final.dtype))
        start += n
    return final


def switch_expert_apply(expert: nn.Module, x: torch.Tensor, detach: bool) -> torch.Tensor:
    """One Switch expert (``SwitchTransformersDenseActDense``), optionally with detached weights."""
    if not detach:
        return expert(x)
    h = expert.act(F.linear(x, expert.wi.weight.detach()))
    h = expert.dropout(h)
    if h.dtype != expert.wo.weight.dtype and expert.wo.weight.dtype != torch.int8:
        h = h.to(expert.wo.weight.dtype)
    return F.linear(h, expert.wo.weight.detach())
