"""Expert importance from router probabilities (HFedMoE Eqs. 3-5 and the IB score of Eq. 14).

All functions take the router's softmax probabilities of ONE MoE layer for one batch,
``gate_probs  # (T, E)``, and a ``token_mask  # (T,)`` that is ``True`` for real tokens and
``False`` for padding. Padding counts nowhere: not in a sum, not in a max, not in a count.

Decision (method.md section 1): a "sample" ``x_i`` of the paper is a token. With
``pooling="sequence"`` a sample is a sequence instead: the probabilities of a sequence's real
tokens are averaged first (``seq_ids`` says which sequence each token belongs to), and Eqs. 3-5
and 14 run over those per-sequence means.

A batch with no real token (or no sequence with a real token) has no samples; every score is then
0 (nothing to rank, and nothing that would put NaN into a later average).
"""

from __future__ import annotations

import torch

from hfedmoe.core import _checks

POOLINGS = ("token", "sequence")


def score_experts(
    gate_probs: torch.Tensor,
    token_mask: torch.Tensor,
    lam: float,
    *,
    pooling: str = "token",
    seq_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combined expert importance of one batch (Eqs. 3-5).

    ``s_cum(e) = (1/B) sum_i G_e(x_i)`` (Eq. 3), ``s_spec(e) = max_i G_e(x_i)`` (Eq. 4),
    ``s_b(e) = lam * s_cum(e) + (1 - lam) * s_spec(e)`` (Eq. 5).

    Parameters
    ----------
    gate_probs : Tensor, shape (T, E), floating
        Router softmax probabilities, values in [0, 1].
    token_mask : Tensor, shape (T,), bool
        ``True`` for real tokens; padding (``False``) counts nowhere.
    lam : float in [0, 1]
        Weight of the cumulative score against the specific score.
    pooling : {"token", "sequence"}, keyword-only
        What a sample is (Decision: "token"; "sequence" averages each sequence's tokens first).
    seq_ids : Tensor, shape (T,), integer, keyword-only
        Sequence id of each token; required with ``pooling="sequence"``, refused otherwise.

    Returns
    -------
    Tensor, shape (E,), dtype of ``gate_probs``
        ``s_b``; all zeros when the batch has no real token.

    Raises
    ------
    ValueError
        On a wrong shape, dtype or value, naming the argument, the expected and the actual value.
    """
    lam = _checks.real_number("lam", lam, 0.0, 1.0)
    samples = _samples(gate_probs, token_mask, pooling, seq_ids)  # (B, E)
    return _combined(samples, lam)


def ib_scores(
    gate_probs: torch.Tensor,
    token_mask: torch.Tensor,
    lam: float,
    beta: float,
    *,
    pooling: str = "token",
    seq_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Information-bottleneck expert score of one batch (Eq. 14).

    ``p(z_e) = (1/B) sum_j G_e(x_j)``,
    ``KL_e = (1/B) sum_i G_e(x_i) * log(G_e(x_i) / p(z_e))`` with ``0 * log 0 = 0``,
    ``I_b(e) = s_b(e) - beta * KL_e`` where ``s_b`` is :func:`score_experts` (Eq. 5).

    ``KL_e`` is non-negative (Jensen); round-off below zero is clipped to 0. An expert whose
    column is all zero has ``p = 0`` and ``KL = 0``; no input in the valid range gives NaN or inf.
    ``beta = 0`` ranks by ``s_b`` alone (the "no-IB" ablation).

    Parameters
    ----------
    gate_probs, token_mask, lam, pooling, seq_ids
        As in :func:`score_experts`.
    beta : float >= 0
        Weight of the compression term.

    Returns
    -------
    Tensor, shape (E,), dtype of ``gate_probs``
        ``I_b``; all zeros when the batch has no real token.
    """
    lam = _checks.real_number("lam", lam, 0.0, 1.0)
    beta = _checks.real_number("beta", beta, 0.0)
    samples = _samples(gate_probs, token_mask, pooling, seq_ids)  # (B, E)
    return _combined(samples, lam) - beta * _kl(samples)


def compression_kl(
    gate_probs: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    pooling: str = "token",
    seq_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL_e`` of Eq. 14 alone, shape (E,) (for metrics and for choosing beta)."""
    return _kl(_samples(gate_probs, token_mask, pooling, seq_ids))


# --------------------------------------------------------------------------- internals


def _samples(
    gate_probs: torch.Tensor, token_mask: torch.Tensor, pooling: str, seq_ids: torch.Tensor | None
) -> torch.Tensor:
    """Validate the inputs and return the samples the equations run over, shape (B, E)."""
    gate_probs = _checks.float_tensor("gate_probs", gate_probs, 2, "(T, E)")
    num_tokens = gate_probs.shape[0]
    token_mask = _checks.bool_tensor("token_mask", token_mask, 1, "(T,)")
    _checks.check_dim("token_mask", token_mask, 0, num_tokens, "(T,)", f"T={num_tokens} matching gate_probs")
    _checks.check_probs("gate_probs", gate_probs)
    pooling = _checks.one_of("pooling", pooling, POOLINGS)
    token_mask = token_mask.to(gate_probs.device)

    if pooling == "token":
        if seq_ids is not None:
            raise ValueError("seq_ids: expected None with pooling='token', got a tensor")
        return gate_probs[token_mask]  # (B, E), B = number of real tokens

    if seq_ids is None:
        raise ValueError("seq_ids: expected a (T,) integer tensor with pooling='sequence', got None")
    seq_ids = _checks.as_tensor("seq_ids", seq_ids)
    if seq_ids.is_floating_point() or seq_ids.dtype == torch.bool or seq_ids.is_complex():
        raise ValueError(f"seq_ids: expected an integer tensor, got dtype {seq_ids.dtype}")
    if seq_ids.dim() != 1:
        raise ValueError(f"seq_ids: expected shape (T,), got {_checks.shape_str(seq_ids.shape)}")
    _checks.check_dim("seq_ids", seq_ids, 0, num_tokens, "(T,)", f"T={num_tokens} matching gate_probs")
    real_ids = seq_ids.to(gate_probs.device)[token_mask]  # (B_tok,)
    _, seq_idx = torch.unique(real_ids, return_inverse=True)  # (B_tok,) in [0, S)
    num_seqs = int(seq_idx.max().item()) + 1 if seq_idx.numel() else 0
    real_probs = gate_probs[token_mask]  # (B_tok, E)
    sums = real_probs.new_zeros(num_seqs, gate_probs.shape[1]).index_add_(0, seq_idx, real_probs)  # (S, E)
    counts = torch.bincount(seq_idx, minlength=num_seqs).to(gate_probs.dtype)  # (S,)
    return sums / counts.unsqueeze(1)  # (S, E)


def _combined(samples: torch.Tensor, lam: float) -> torch.Tensor:
    """Eqs. 3-5 over samples (B, E) -> (E,)."""
    if samples.shape[0] == 0:
        return samples.new_zeros(samples.shape[1])
    s_cum = samples.mean(dim=0)  # (E,)  Eq. 3
    s_spec = samples.amax(dim=0)  # (E,)  Eq. 4
    return lam * s_cum + (1.0 - lam) * s_spec  # (E,)  Eq. 5


def _kl(samples: torch.Tensor) -> torch.Tensor:
    """KL_e of Eq. 14 over samples (B, E) -> (E,), with 0 * log 0 = 0."""
    if samples.shape[0] == 0:
        return samples.new_zeros(samples.shape[1])
    tiny = torch.finfo(samples.dtype).tiny
    p = samples.mean(dim=0)  # (E,)  p(z_e)
    log_ratio = torch.log(samples.clamp_min(tiny)) - torch.log(p.clamp_min(tiny))  # (B, E)
    terms = torch.where(samples > 0, samples * log_ratio, torch.zeros_like(samples))  # (B, E)
    return terms.mean(dim=0).clamp_min(0.0)  # (E,)


# ------------------------------------------------------------------- hot path (no host reads)


def masked_token_scores(gate_probs: torch.Tensor, token_mask: torch.Tensor, lam: float) -> torch.Tensor:
    """``s_b`` (Eq. 5, token pooling) of one layer's routing, ``(E,)``, computed with masks instead
    of selecting the real rows: no data-dependent shape, no device->host read.

    Equal (to round-off) to ``score_experts(gate_probs, token_mask, lam)``; no input checks: for
    routing the adapter captured (softmax outputs, a bool mask of the same length)."""
    real, n = _masked(gate_probs, token_mask)  # (T, E), ()
    s_cum = real.sum(dim=0) / n  # (E,) Eq. 3
    s_spec = real.amax(dim=0)  # (E,) Eq. 4 (probabilities >= 0: padding's 0 never wins)
    return lam * s_cum + (1.0 - lam) * s_spec  # (E,) Eq. 5


def masked_token_kl(gate_probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """``KL_e`` (Eq. 14, token pooling), ``(E,)``, like :func:`masked_token_scores`: equal (to
    round-off) to ``compression_kl(gate_probs, token_mask)``, no host read, no input checks."""
    real, n = _masked(gate_probs, token_mask)  # (T, E), ()
    tiny = torch.finfo(gate_probs.dtype).tiny
    p = real.sum(dim=0) / n  # (E,) p(z_e)
    log_ratio = torch.log(real.clamp_min(tiny)) - torch.log(p.clamp_min(tiny))  # (T, E)
    terms = torch.where(real > 0, real * log_ratio, torch.zeros_like(real))  # (T, E) 0 at padding
    return (terms.sum(dim=0) / n).clamp_min(0.0)  # (E,)


def _masked(gate_probs: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gate_probs`` with padding rows zeroed ``(T, E)`` and the real-token count ``()`` (>= 1)."""
    m = token_mask.to(device=gate_probs.device, dtype=gate_probs.dtype).unsqueeze(1)  # (T, 1)
    return gate_probs * m, m.sum().clamp_min(1.0)
