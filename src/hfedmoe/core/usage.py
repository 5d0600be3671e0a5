"""Expert usage (HFedMoE Eq. 16).

``u_c(e) = (1/|D_c|) sum_{x in D_c} G_e(x)``: the mean router probability of expert ``e`` over
the real tokens of client ``c``'s data (padding counts nowhere). One batch gives
:func:`expert_usage`; a client's usage over all its batches is the token-weighted mean of its
batch usages (:func:`combine_usage`), or accumulate it on the fly with :class:`UsageAccumulator`.
All three give the same number (up to round-off) as Eq. 16 over the pooled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hfedmoe.core import _checks


def expert_usage(gate_probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 16 for one batch.

    Parameters
    ----------
    gate_probs : Tensor, shape (T, E), floating
        Router softmax probabilities of one MoE layer, values in [0, 1].
    token_mask : Tensor, shape (T,), bool
        ``True`` for real tokens.

    Returns
    -------
    Tensor, shape (E,), dtype of ``gate_probs``
        Mean probability per expert over the real tokens; all zeros when there is none
        (its token count, 0, then gives it no weight in :func:`combine_usage`).
    """
    gate_probs, token_mask = _validated(gate_probs, token_mask)
    real_probs = gate_probs[token_mask]  # (B, E)
    if real_probs.shape[0] == 0:
        return gate_probs.new_zeros(gate_probs.shape[1])
    return real_probs.mean(dim=0)  # (E,)


def combine_usage(usages: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Token-weighted mean of per-batch usages: a client's Eq. 16 over all its batches.

    Parameters
    ----------
    usages : Tensor, shape (N, E), floating
        :func:`expert_usage` of N batches.
    token_counts : Tensor or sequence, shape (N,)
        Real tokens in each batch (``token_mask.sum()``), >= 0.

    Returns
    -------
    Tensor, shape (E,), dtype of ``usages``; all zeros when the counts sum to 0.
    """
    usages = _checks.float_tensor("usages", usages, 2, "(N, E)")
    _checks.check_finite_nonnegative("usages", usages)
    token_counts = _checks.as_tensor("token_counts", token_counts)
    if token_counts.dim() != 1:
        raise ValueError(f"token_counts: expected shape (N,), got {_checks.shape_str(token_counts.shape)}")
    _checks.check_dim(
        "token_counts", token_counts, 0, usages.shape[0], "(N,)", f"N={usages.shape[0]} matching usages"
    )
    counts = token_counts.to(device=usages.device, dtype=torch.float64)  # (N,)
    _checks.check_finite_nonnegative("token_counts", counts)
    total = counts.sum()
    if float(total) == 0.0:
        return usages.new_zeros(usages.shape[1])
    weights = (counts / total).to(usages.dtype)  # (N,)
    return weights @ usages  # (E,)


@dataclass
class UsageAccumulator:
    """Running Eq. 16 for one client and one MoE layer (sum of probabilities and token count).

    A per-client object, created by the caller; the core keeps no state of its own.

    >>> acc = UsageAccumulator(num_experts=8)
    >>> acc.update(gate_probs, token_mask)   # once per batch
    >>> acc.usage()                          # (E,)
    """

    num_experts: int
    dtype: torch.dtype = torch.float64
    prob_sums: torch.Tensor = field(init=False)  # (E,)
    num_tokens: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.num_experts = _checks.positive_int("num_experts", self.num_experts)
        self.prob_sums = torch.zeros(self.num_experts, dtype=self.dtype)

    def update(self, gate_probs: torch.Tensor, token_mask: torch.Tensor) -> None:
        """Add one batch's real tokens."""
        gate_probs, token_mask = _validated(gate_probs, token_mask)
        _checks.check_dim(
            "gate_probs", gate_probs, 1, self.num_experts, "(T, E)", f"E={self.num_experts} matching the accumulator"
        )
        batch_sum = gate_probs[token_mask].sum(dim=0).to(device="cpu", dtype=self.dtype)  # (E,)
        self.prob_sums = self.prob_sums + batch_sum
        self.num_tokens += int(token_mask.sum())

    def usage(self) -> torch.Tensor:
        """``u_c`` (E,) so far; all zeros before any real token."""
        if self.num_tokens == 0:
            return torch.zeros_like(self.prob_sums)
        return self.prob_sums / self.num_tokens


def _validated(gate_probs: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate_probs = _checks.float_tensor("gate_probs", gate_probs, 2, "(T, E)")
    token_mask = _checks.bool_tensor("token_mask", token_mask, 1, "(T,)")
    num_tokens = gate_probs.shape[0]
    _checks.check_dim("token_mask", token_mask, 0, num_tokens, "(T,)", f"T={num_tokens} matching gate_probs")
    _checks.check_probs("gate_probs", gate_probs)
    return gate_probs, token_mask.to(gate_probs.device)
