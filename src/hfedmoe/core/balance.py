"""Routing balance over a client's active experts (the auxiliary loss of the ``fft-moe`` peer).

FFT-MoE (Hu et al., arXiv 2508.18663) adds "a heterogeneity-aware auxiliary loss that dynamically
regularizes the routing distribution to ensure expert diversity and balanced utilization"; its
formula is not public (docs/fft-moe.md). This project's reading, per MoE layer and batch::

    L_bal = |A| * sum_{e in A} f_e * P_e

over the client's active (held) experts ``A``: ``f_e`` the fraction of the real tokens' top-k
slots routed to ``e`` (no gradient), ``P_e`` the mean router probability of ``e`` over the real
tokens (with gradient). It is the Switch Transformer load-balancing loss restricted to ``A``:
1 when routing is uniform over ``A``, up to ``|A|`` when every token goes to one expert. The
heterogeneity enters through ``A``: each client is balanced over the subset its budget allows.
"""

from __future__ import annotations

import torch

from hfedmoe.core import _checks


def balance_loss(
    gate_probs: torch.Tensor,
    topk_idx: torch.Tensor,
    token_mask: torch.Tensor,
    active_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``|A| * sum_{e in A} f_e P_e`` for one layer and batch (see the module docstring).

    Parameters
    ----------
    gate_probs : Tensor (T, E), floating
        Router probabilities; gradient flows through them.
    topk_idx : Tensor (T, k), integer
        The experts each token was routed to.
    token_mask : Tensor (T,), bool
        True for real tokens (padding counts nowhere).
    active_mask : Tensor (E,), bool, optional
        The client's active experts ``A`` (None: all).

    Returns
    -------
    Tensor, scalar
        0 (still in the graph) when the batch has no real token.
    """
    num_tokens, num_experts = gate_probs.shape
    if topk_idx.dim() != 2 or topk_idx.shape[0] != num_tokens:
        raise ValueError(f"topk_idx: expected shape ({num_tokens}, k), got {_checks.shape_str(topk_idx.shape)}")
    mask = _checks.bool_tensor("token_mask", token_mask, 1, "(T,)")
    _checks.check_dim("token_mask", mask, 0, num_tokens, "(T,)", "one flag per token")
    active = torch.ones(num_experts, dtype=torch.bool) if active_mask is None else active_mask.bool().cpu()
    _checks.check_dim("active_mask", active, 0, num_experts, "(E,)", "one flag per expert")
    mask = mask.to(gate_probs.device)
    real = int(mask.sum())
    if real == 0:
        return gate_probs.sum() * 0.0
    k = topk_idx.shape[1]
    hits = topk_idx[mask].reshape(-1)  # (T_real * k,)
    frac = torch.bincount(hits, minlength=num_experts).to(gate_probs.dtype) / float(real * k)  # (E,) f_e
    mean_probs = gate_probs[mask].mean(dim=0)  # (E,) P_e
    active = active.to(gate_probs.device)
    return float(active.sum()) * (frac * mean_probs)[active].sum()
