"""Expert importance from router probabilities (HFedMoE Eqs. 3-5 and the IB score of Eq. 14).

All functions take the router's softmax probabilities of ONE MoE layer for one batch,
``gate_probs  # (T, E)``, and a ``token_mask  # (T,)`` that is ``True`` for real tokens and
``False`` for padding. Padding counts nowhere: not in a sum, not in a max, not in a count.

Decision (method.md section 1, revised): a "sample" ``x_i`` of the paper is a sequence of the
batch (``pooling="sequence"``, the run default): the probabilities of a sequence's real tokens are
averaged first (``seq_ids`` says which sequence each token belongs to), and Eqs. 3-5 and 14 run
over those per-sequence means. ``pooling="token"`` (these functions' default, and the "token"
ablation of a run) reads a sample as a token.

Scale of the IB term (:func:`ib_combine`): ``ib_scale="raw"`` is Eq. 14 as written,
``I_b = s_b - beta * KL``; ``"normalised"`` rescales KL to the spread of ``s_b`` over the batch's
candidate experts first, ``I_b = s_b - beta * (std_C(s_b) / std_C(KL)) * KL``, so that ``beta``
means the same at any router entropy (beta = 1: the IB term moves scores as much as importance).

A batch with no real token (or no sequence with a real token) has no samples; every score is then
0 (nothing to rank, and nothing that would put NaN into a later average).
"""

from __future__ import annotations

import torch

from hfedmoe.core import _checks

POOLINGS = ("token", "sequence")
IB_SCALES = ("raw", "normalised")


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
    ib_scale: str = "raw",
    candidates: torch.Tensor | None = None,
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
    ib_scale, candidates : keyword-only
        As in :func:`ib_combine` (default: Eq. 14 as written).

    Returns
    -------
    Tensor, shape (E,), dtype of ``gate_probs``
        ``I_b``; all zeros when the batch has no real token.
    """
    lam = _checks.real_number("lam", lam, 0.0, 1.0)
    samples = _samples(gate_probs, token_mask, pooling, seq_ids)  # (B, E)
    return ib_combine(_combined(samples, lam), _kl(samples), beta, ib_scale=ib_scale, candidates=candidates)


def ib_combine(
    s_b: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    *,
    ib_scale: str = "raw",
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """``I_b = s_b - beta * c * KL`` (Eq. 14) from ``s_b (E,)`` and ``KL (E,)``.

    ``ib_scale="raw"``: ``c = 1``. ``"normalised"``: ``c = std_C(s_b) / std_C(KL)``, population
    standard deviations over the candidate experts ``C`` (``candidates (E,)`` bool: the experts
    Eq. 15 may pick, i.e. those the batch was routed to; None = all experts). ``c = 0`` when
    ``C`` has fewer than two experts or KL is constant over ``C`` (then no ``c`` could change
    the ranking within ``C``). ``beta = 0`` gives ``s_b`` (a copy) in both scales.
    """
    beta = _checks.real_number("beta", beta, 0.0)
    ib_scale = _checks.one_of("ib_scale", ib_scale, IB_SCALES)
    if s_b.shape != kl.shape or s_b.dim() != 1:
        raise ValueError(f"s_b, kl: expected two (E,) tensors, got {tuple(s_b.shape)} and {tuple(kl.shape)}")
    if beta == 0:
        return s_b.clone()
    if ib_scale == "raw":
        return s_b - beta * kl
    if candidates is None:
        candidates = torch.ones_like(s_b, dtype=torch.bool)
    candidates = _checks.bool_tensor("candidates", candidates, 1, "(E,)").to(s_b.device)
    _checks.check_dim("candidates", candidates, 0, s_b.shape[0], "(E,)", f"E={s_b.shape[0]} matching s_b")
    return s_b - (beta * masked_ib_factor(s_b, kl, candidates)).to(kl.dtype) * kl  # no host read


def ib_factor(s_b: torch.Tensor, kl: torch.Tensor, candidates: torch.Tensor) -> float:
    """``std_C(s_b) / std_C(KL)`` of :func:`ib_combine` (population std; 0 when undefined)."""
    return float(masked_ib_factor(s_b, kl, candidates))


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


def masked_token_scores(
    gate_probs: torch.Tensor, token_mask: torch.Tensor, lam: float, seq_len: int | None = None
) -> torch.Tensor:
    """``s_b`` (Eq. 5) of one layer's routing, ``(E,)``, computed with masks instead of selecting
    the real rows: no data-dependent shape, no device->host read.

    ``seq_len=None``: token pooling, equal (to round-off) to ``score_experts(gate_probs,
    token_mask, lam)``. ``seq_len=S``: sequence pooling over the ``T / S`` sequences of ``S``
    consecutive tokens (``seq_ids = arange(T) // S``), equal to ``score_experts(..., pooling=
    "sequence", seq_ids=arange(T) // S)``. No input checks: for routing the adapter captured
    (softmax outputs, a bool mask of the same length, ``S`` dividing ``T``)."""
    real, n = _masked(gate_probs, token_mask, seq_len)  # (B, E), ()
    s_cum = real.sum(dim=0) / n  # (E,) Eq. 3
    s_spec = real.amax(dim=0)  # (E,) Eq. 4 (probabilities >= 0: padding's 0 never wins)
    return lam * s_cum + (1.0 - lam) * s_spec  # (E,) Eq. 5


def masked_token_kl(gate_probs: torch.Tensor, token_mask: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
    """``KL_e`` (Eq. 14), ``(E,)``, like :func:`masked_token_scores` (token or sequence pooling):
    equal (to round-off) to :func:`compression_kl`, no host read, no input checks."""
    real, n = _masked(gate_probs, token_mask, seq_len)  # (B, E), ()
    tiny = torch.finfo(gate_probs.dtype).tiny
    p = real.sum(dim=0) / n  # (E,) p(z_e)
    log_ratio = torch.log(real.clamp_min(tiny)) - torch.log(p.clamp_min(tiny))  # (B, E)
    terms = torch.where(real > 0, real * log_ratio, torch.zeros_like(real))  # (B, E) 0 at padding
    return (terms.sum(dim=0) / n).clamp_min(0.0)  # (E,)


def masked_ib_factor(s_b: torch.Tensor, kl: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``std_C(s_b) / std_C(KL)`` of :func:`ib_combine` as a 0-dim float64 tensor on ``s_b``'s
    device (population std over the ``candidates (E,)`` bool; 0 when ``C`` has fewer than two
    experts or KL is constant over ``C``): no device->host read."""
    c = candidates.to(device=s_b.device, dtype=torch.float64)  # (E,)
    n = c.sum()  # ()
    def std(x: torch.Tensor) -> torch.Tensor:  # () population std over C
        x = x.double()
        mean = (x * c).sum() / n.clamp_min(1.0)
        return (((x - mean) ** 2) * c).sum().div(n.clamp_min(1.0)).sqrt()
    kl_std, s_std = std(kl), std(s_b)
    ok = (n >= 2) & (kl_std > 0)
    return torch.where(ok, s_std / torch.where(ok, kl_std, torch.ones_like(kl_std)), torch.zeros_like(kl_std))


def _masked(
    gate_probs: torch.Tensor, token_mask: torch.Tensor, seq_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of Eqs. 3-5 and 14 with non-real rows zeroed ``(B, E)`` and their count ``()``
    (>= 1): the real tokens (B = T), or (``seq_len=S``) the mean of each sequence's real tokens
    (B = T / S; a sequence without a real token is no sample)."""
    m = token_mask.to(device=gate_probs.device, dtype=gate_probs.dtype).unsqueeze(1)  # (T, 1)
    if seq_len is None:
        return gate_probs * m, m.sum().clamp_min(1.0)
    num_tokens, num_experts = gate_probs.shape
    sums = (gate_probs * m).reshape(num_tokens // seq_len, seq_len, num_experts).sum(dim=1)  # (B, E)
    counts = m.reshape(num_tokens // seq_len, seq_len).sum(dim=1, keepdim=True)  # (B, 1)
    return sums / counts.clamp_min(1.0), (counts > 0).sum().to(gate_probs.dtype).clamp_min(1.0)
