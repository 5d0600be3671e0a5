"""Budgeted expert selection (HFedMoE Eq. 15).

Among the experts that at least one real token of the batch was routed to (``E_union``), the
client trains the ``budget`` experts with the highest score. Maximising ``sum I_b(e)`` subject to
``|E_active| <= budget`` is exactly a top-``budget`` pick, so no solver is needed.

Decision (method.md section 2): ties go to the lower expert index; the result is sorted.
"""

from __future__ import annotations

import torch

from hfedmoe.core import _checks


def routed_experts(topk_idx: torch.Tensor, token_mask: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Which experts at least one real token was routed to (``E_union`` of Eq. 15).

    Parameters
    ----------
    topk_idx : Tensor, shape (T, k), integer
        Expert indices each token was routed to (Eq. 1).
    token_mask : Tensor, shape (T,), bool
        ``True`` for real tokens; padding routes nowhere.
    num_experts : int >= 1
        E, the number of experts of the layer.

    Returns
    -------
    Tensor, shape (E,), bool
    """
    num_experts = _checks.positive_int("num_experts", num_experts)
    topk_idx = _checks.as_tensor("topk_idx", topk_idx)
    if topk_idx.is_floating_point() or topk_idx.dtype == torch.bool or topk_idx.is_complex():
        raise ValueError(f"topk_idx: expected an integer tensor, got dtype {topk_idx.dtype}")
    if topk_idx.dim() != 2:
        raise ValueError(f"topk_idx: expected shape (T, k), got {_checks.shape_str(topk_idx.shape)}")
    token_mask = _checks.bool_tensor("token_mask", token_mask, 1, "(T,)")
    num_tokens = topk_idx.shape[0]
    _checks.check_dim("token_mask", token_mask, 0, num_tokens, "(T,)", f"T={num_tokens} matching topk_idx")
    if topk_idx.numel() and (int(topk_idx.min()) < 0 or int(topk_idx.max()) >= num_experts):
        raise ValueError(
            f"topk_idx: expected indices in [0, {num_experts - 1}], "
            f"got values in [{int(topk_idx.min())}, {int(topk_idx.max())}]"
        )
    hit = topk_idx[token_mask.to(topk_idx.device)].reshape(-1)  # (B*k,)
    routed_mask = torch.zeros(num_experts, dtype=torch.bool, device=topk_idx.device)  # (E,)
    routed_mask[hit] = True
    return routed_mask


def select_experts(scores: torch.Tensor, routed_mask: torch.Tensor, budget: int) -> torch.Tensor:
    """The experts a client trains on this batch (Eq. 15).

    Parameters
    ----------
    scores : Tensor, shape (E,), floating
        Per-expert score, e.g. ``I_b`` of :func:`hfedmoe.core.importance.ib_scores` (or ``s_b``
        for the no-IB ablation, or activation frequency for a baseline). Must be finite where
        ``routed_mask`` is ``True``; other entries are ignored.
    routed_mask : Tensor, shape (E,), bool
        ``E_union``: experts at least one real token was routed to (:func:`routed_experts`).
    budget : int >= 0
        ``C_budget(c)``, the most experts to train; 0 selects none.

    Returns
    -------
    Tensor, shape (k,), long, k = min(budget, routed_mask.sum())
        Selected expert indices in increasing order. Highest score first; equal scores go to the
        lower index.
    """
    scores = _checks.float_tensor("scores", scores, 1, "(E,)")
    num_experts = scores.shape[0]
    routed_mask = _checks.bool_tensor("routed_mask", routed_mask, 1, "(E,)")
    _checks.check_dim("routed_mask", routed_mask, 0, num_experts, "(E,)", f"E={num_experts} matching scores")
    budget = _checks.non_negative_int("budget", budget)

    scores = scores.to(routed_mask.device)  # select where the routing lives (a host->device copy at most)
    candidate_idx = routed_mask.nonzero().squeeze(1)  # (U,) increasing
    candidate_scores = scores[candidate_idx]  # (U,)
    if candidate_scores.numel() and not bool(torch.isfinite(candidate_scores).all()):
        bad = candidate_idx[~torch.isfinite(candidate_scores)][0]
        raise ValueError(
            f"scores: expected finite values for routed experts, got {scores[bad].item()} at index {int(bad)}"
        )
    # A stable ascending sort of -score keeps the lower index first among equal scores.
    order = torch.sort(-candidate_scores, stable=True).indices  # (U,)
    chosen_idx = candidate_idx[order[:budget]]  # (k,)
    return torch.sort(chosen_idx).values.to(torch.long)  # (k,)


# ------------------------------------------------------------------- hot path (no host reads)


def routed_pair_counts(topk_idx: torch.Tensor, token_mask: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``(E,)`` long: real (token, slot) pairs routed to each expert; ``> 0`` is :func:`routed_experts`.
    Static shapes only (no device->host read); no input checks (captured routing)."""
    k = topk_idx.shape[1]
    real = token_mask.to(topk_idx.device).unsqueeze(1).expand(-1, k).reshape(-1).long()  # (T*k,)
    idx = topk_idx.reshape(-1).clamp(0, num_experts - 1)  # (T*k,)
    return torch.zeros(num_experts, dtype=torch.long, device=topk_idx.device).index_add_(0, idx, real)


def selection_mask(scores: torch.Tensor, routed_mask: torch.Tensor, budget: int) -> torch.Tensor:
    """``(E,)`` bool: :func:`select_experts` as a mask (same choice, same tie-break: the lower
    index first among equal scores), with static shapes (no device->host read); no input checks."""
    routed_mask = routed_mask.to(scores.device)
    num = scores.shape[0]
    if budget <= 0 or num == 0:
        return torch.zeros(num, dtype=torch.bool, device=scores.device)
    key = torch.where(routed_mask, -scores.float(), torch.full_like(scores.float(), float("inf")))  # (E,)
    order = torch.sort(key, stable=True).indices[:budget]  # (min(budget, E),) best first
    chosen = torch.zeros(num, dtype=torch.bool, device=scores.device)
    chosen[order] = True
    return chosen & routed_mask
