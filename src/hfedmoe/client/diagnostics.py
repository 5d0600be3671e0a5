"""Client-side mechanism diagnostics, cheap enough to run in every batch of every method.

For every (batch, layer) decision the client computes what three selectors would pick from the
same routing, with the same per-layer budget: HFedMoE (Eq. 15 on the IB score, ``beta``), its
no-IB ablation (``beta = 0``, i.e. ranking by ``s_b`` alone) and frequency (top activation
counts, flux-freq). It counts decisions where the chosen *sets* differ, and the scale of the IB
term against the importance term (``std_e(s_b - I_b) / std_e(s_b)``, i.e. ``std(beta * KL) /
std(s_b)`` in the raw scale): when that ratio is tiny the IB term cannot change a ranking
(~0.0006 vs ~0.09 at beta = 0.1 on MoEfied MiniLM). Scores are pooled and scaled as the run's
HFedMoE does (``pooling``, ``ib_scale``), reusing the selector's memoised ``s_b`` and ``KL``.

Everything is summed per client (``counts()``) so the server can add clients up (streamable).
"""

from __future__ import annotations

import torch

from hfedmoe.core.selection import routed_pair_counts, selection_mask
from hfedmoe.moe.contexts import LayerRouting, routing_ib_scores, routing_scores

COUNT_KEYS = ("decisions", "differ_hfedmoe_freq", "differ_hfedmoe_noib", "differ_noib_freq")
_SUM_KEYS = (*COUNT_KEYS, "ib_scale_sum")


class SelectionDiagnostics:
    """Accumulates selection disagreement over (batch, layer) decisions of one client.

    The sums stay on the routing's device (masks, no data-dependent shapes): :meth:`update` never
    reads the device; :meth:`counts` reads it once."""

    def __init__(self, *, lam: float, beta: float, budget: int, num_experts: int, pooling: str = "token",
                 ib_scale: str = "raw") -> None:
        self.lam, self.beta, self.budget, self.num_experts = lam, beta, int(budget), num_experts
        self.pooling, self.ib_scale = pooling, ib_scale
        self._sums: torch.Tensor | None = None  # (5,) float64 in _SUM_KEYS order, on the device

    def update(self, routing: LayerRouting) -> None:
        """One decision from one layer's routing (``gate_probs (T, E)``, ``topk_idx (T, k)``,
        ``token_mask (T,)``); a batch with no real token counts nowhere. Scores come from the
        routing's memo (shared with the selector) with the run's pooling and ``ib_scale``."""
        if self.budget < 1:
            return
        _, topk_idx, token_mask = routing
        E = self.num_experts
        hits = routed_pair_counts(topk_idx, token_mask, E).to(torch.float32)  # (E,)
        routed = hits > 0  # (E,)
        s_b = routing_scores(routing, self.lam, self.pooling)  # (E,)
        i_b = routing_ib_scores(routing, self.lam, self.beta, self.pooling, self.ib_scale)  # (E,)
        hfed = selection_mask(i_b, routed, self.budget)  # (E,) bool
        noib = selection_mask(s_b, routed, self.budget)
        freq = selection_mask(hits, routed, self.budget)
        real = token_mask.to(s_b.device).any().to(torch.float64)  # () 1 for a decision, 0 for all padding
        if E > 1:
            spread = s_b.std()
            ratio = torch.where(spread > 0, (s_b - i_b).std() / spread.clamp_min(1e-30), 0.0)
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
