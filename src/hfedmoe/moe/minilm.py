"""The MoEfied BERT feed-forward block (used for all-MiniLM-L6-v2 and tiny BERTs).

A dense BERT FFN ``LayerNorm(x + W2 act(W1 x + b1) + b2)`` is split by neurons into ``E`` experts of
``I/E`` neurons each: expert e owns rows of ``W1``/``b1`` and the matching columns of ``W2``. The
output bias ``b2`` is shared (added once, it belongs to the dense part of the model).

Combination weights are straight-through: ``w_e = 1 + p_e - p_e.detach()`` for the top-k experts,
i.e. value exactly 1 (so with ``top_k == E`` the block equals the dense FFN) while the router
receives the gradient it would get if the expert outputs were weighted by their softmax
probabilities. This keeps the pretrained function intact at step 0 and still trains the router.

``TopKRouter.combine = "topk-prob"`` switches to Eq. 2 of HFedMoE: the top-k experts are combined
with the router's renormalised top-k probabilities (times the constant ``k``, so equal
probabilities give weight 1 as above); the output then depends on the router's values, not only
on its ranking. :func:`set_combine` sets it on every router of a model.

Module layout (what :func:`hfedmoe.moe.wrap` addresses)::

    BertLayer.intermediate = MoEFeedForward
        .gate     TopKRouter        weight (E, H), no bias
        .experts  MoEFiedExperts    up_proj (E, I/E, H), up_proj_bias (E, I/E), down_proj (E, H, I/E)
        .output_bias                (H,)
    BertLayer.output.dense = nn.Identity()   (BertOutput keeps dropout + LayerNorm(residual))
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from hfedmoe.moe.expert_compute import eager_experts_forward
from hfedmoe.moe.layouts import route_straight_through


class TopKRouter(nn.Module):
    """Linear router ``H -> E`` (no bias) with top-k selection and straight-through weights.

    ``forward(hidden_states (..., H)) -> (router_logits (T, E), top_k_weights (T, k), top_k_index (T, k))``
    """

    def __init__(self, hidden_size: int, num_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.hidden_dim = hidden_size
        self.num_experts = num_experts
        self.top_k = top_k
        self.combine = "straight-through"  # or "topk-prob" (Eq. 2)
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden_size))  # (E, H)

    def forward(self, hidden_states: torch.Tensor):
        return route_straight_through(self, hidden_states, None).router_output


class MoEFiedExperts(nn.Module):
    """Fused non-gated experts with biases: ``down_e(act(up_e x + b_e))`` (``bias=False``: no
    ``up_proj_bias``, as the MoE adapters of :mod:`hfedmoe.moe.sparse_adapter`)."""

    has_gate = False
    is_transposed = False

    def __init__(self, num_experts: int, hidden_size: int, expert_size: int, hidden_act: str, *, bias: bool = True):
        super().__init__()
        self.num_experts = num_experts
        self.hidden_dim = hidden_size
        self.intermediate_dim = expert_size
        self.has_bias = bias
        self.up_proj = nn.Parameter(torch.zeros(num_experts, expert_size, hidden_size))  # (E, I/E, H)
        if bias:
            self.up_proj_bias = nn.Parameter(torch.zeros(num_experts, expert_size))  # (E, I/E)
        self.down_proj = nn.Parameter(torch.zeros(num_experts, hidden_size, expert_size))  # (E, H, I/E)
        self.act_fn = ACT2FN[hidden_act] if isinstance(hidden_act, str) else hidden_act

    def forward(self, hidden_states, top_k_index, top_k_weights):
        """``hidden_states (T, H)``, ``top_k_index (T, k)``, ``top_k_weights (T, k)`` -> ``(T, H)``."""
        return eager_experts_forward(self, hidden_states, top_k_index, top_k_weights)


class MoEFeedForward(nn.Module):
    """Replacement for ``BertLayer.intermediate``: routed experts plus the shared output bias.

    ``forward(hidden_states (B, S, H)) -> (B, S, H)``; ``BertOutput`` (with ``dense = Identity``)
    then applies dropout and ``LayerNorm(. + residual)``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 hidden_act: str = "gelu"):
        super().__init__()
        if intermediate_size % num_experts:
            raise ValueError(
                f"intermediate_size={intermediate_size} is not divisible by num_experts={num_experts}"
            )
        self.gate = TopKRouter(hidden_size, num_experts, top_k)
        self.experts = MoEFiedExperts(num_experts, hidden_size, intermediate_size // num_experts, hidden_act)
        self.output_bias = nn.Parameter(torch.zeros(hidden_size))  # (H,)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])  # (T, H)
        _, top_k_weights, top_k_index = self.gate(flat)
        out = self.experts(flat, top_k_index, top_k_weights) + self.output_bias  # (T, H)
        return out.reshape(shape)


COMBINES = ("straight-through", "topk-prob")


def set_combine(model: nn.Module, combine: str) -> int:
    """Set how every :class:`TopKRouter` of ``model`` weights its experts; returns how many."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    n = 0
    for module in model.modules():
        if isinstance(module, TopKRouter):
            module.combine = combine
            n += 1
    return n
