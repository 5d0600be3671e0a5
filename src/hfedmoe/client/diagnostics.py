"""Client-side mechanism diagnostics, cheap enough to run in every batch of every method.

For every (batch, layer) decision the client computes what three selectors would pick from the
same routing, with the same per-layer budget: HFedMoE (Eq. 15 on the IB score, ``beta``), its
no-IB ablation (``beta = 0``, i.e. ranking by ``s_b`` alone) and frequency (top activation
counts, flux-freq). It counts decisions where the chosen *sets* differ, and the scale of the IB
term against the importance term (``std_e(beta * KL_e) / std_e(s_b(e))``): when that ratio is
tiny the IB term cannot change a ranking (issue 8: ~0.0006 vs ~0.09 at beta = 0.1).

Everything is summed per client (``counts()``) so the server can add clients up (streamable).
"""

from __future__ import annotations

import torch

from hfedmoe.core.importance import masked_token_kl, masked_token_scores
from hfedmoe.core.selection import routed_pair_counts, selection_mask

COUNT_KEYS = ("decisions", "differ_hfedmoe_freq", "differ_hfedmoe_noib", "differ_noib_freq")
_SUM_KEYS = (*COUNT_KEYS, "ib_scale_sum")


class SelectionDiagnostics:
    """Accumulates selection disagreement over (batch, layer) decisions of one client.

    The sums stay on the routing's device (masks, no data-dependent shapes): :meth:`update` never
    reads the device; :meth:`counts` reads it once."""

    def __init__(self, *, lam: float, beta: float, budget: int, num_experts: int) -> None:
        self.lam, self.beta, self.budget, self.num_experts = lam, beta, int(budget), num_experts
        self._sums: torch.Tensor | None = None  # (5,) float64 in _SUM_KEYS order, on the device

    def update(self, gate_probs: torch.Tensor, topk_idx: torch.Tensor, token_mask: torch.Tensor) -> None:
        """One decision: ``gate_probs (T, E)``, ``topk_idx (T, k)``, ``token_mask (T,)``; a batch
        with no real token counts nowhere."""
        if self.budget < 1:
            return
        E = self.num_experts
        hits = routed_pair_counts(topk_idx, token_mask, E).to(torch.float32)  # (E,)
        routed = hits > 0  # (E,)
        s_b = masked_token_scores(gate_probs, token_mask, self.lam)  # (E,)
        kl = masked_token_kl(gate_probs, token_mask)  # (E,)
        hfed = selection_mask(s_b - self.beta * kl, routed, self.budget)  # (E,) bool
        noib = selection_mask(s_b, routed, self.budget)
        freq = selection_mask(hits, routed, self.budget)
        real = token_mask.any().to(torch.float64)  # () 1 for a decision, 0 for an all-padding batch
        if E > 1:
            spread = s_b.std()
            ratio = torch.where(spread > 0, (self.beta * kl).std() / spread.clamp_min(1e-30), 0.0)
        else:
            ratio = torch.zeros((), device=s_b.device)
        row = torch.stack([torch.ones((), dtype=torch.float64, device=s_b.device),
                           (hfed != freq).any().double(), (hfed != noib).any().double(),
                           (noib != freq).any().double(), ratio.double()]) * real  # (5,)
        self._sums = row if self._sums is None else self._sums + row

    @property
    def sums(self) -> dict[str, float]:
        values = [0.0] * len(_SUM_KEYS) if self._sums is None else self._sums.tolist()  # one read
        return dict(zip(_SUM_KEYS, values))

    def counts(self) -> dict[str, float]:
        """Sums over this client's decisions (add them over clients, then call :func:`rates`)."""
        return {f"diag_{k}": v for k, v in self.sums.items()}


def rates(counts: list[dict[str, float]]) -> dict[str, float]:
    """Fractions over all clients' decisions: ``sel_disagree_*`` and the mean ``ib_scale_ratio``."""
    total = {k: sum(c.get(k, 0.0) for c in counts) for k in (f"diag_{x}" for x in (*COUNT_KEYS, "ib_scale_sum"))}
    n = total["diag_decisions"]
    if n <= 0:
        return {}
    return {
        "sel_decisions": n,
        "sel_disagree_hfedmoe_freq": total["diag_differ_hfedmoe_freq"] / n,
        "sel_disagree_hfedmoe_noib": total["diag_differ_hfedmoe_noib"] / n,
        "sel_disagree_noib_freq": total["diag_differ_noib_freq"] / n,
        "ib_scale_ratio": total["diag_ib_scale_sum"] / n,
    }
