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

from hfedmoe.core.importance import ib_combine
from hfedmoe.core.selection import routed_experts, select_experts
from hfedmoe.moe.contexts import LayerRouting, routing_kl, routing_scores

COUNT_KEYS = ("decisions", "differ_hfedmoe_freq", "differ_hfedmoe_noib", "differ_noib_freq")


class SelectionDiagnostics:
    """Accumulates selection disagreement over (batch, layer) decisions of one client."""

    def __init__(self, *, lam: float, beta: float, budget: int, num_experts: int, pooling: str = "token",
                 ib_scale: str = "raw") -> None:
        self.lam, self.beta, self.budget, self.num_experts = lam, beta, int(budget), num_experts
        self.pooling, self.ib_scale = pooling, ib_scale
        self.sums = dict.fromkeys(COUNT_KEYS, 0.0)
        self.sums["ib_scale_sum"] = 0.0

    def update(self, routing: LayerRouting) -> None:
        """One decision from one layer's routing (``gate_probs (T, E)``, ``topk_idx (T, k)``,
        ``token_mask (T,)``)."""
        gate_probs, topk_idx, token_mask = routing
        if not bool(token_mask.any()) or self.budget < 1:
            return
        E = self.num_experts
        routed = routed_experts(topk_idx, token_mask, E)  # (E,)
        s_b = routing_scores(routing, self.lam, self.pooling)  # (E,)
        kl = routing_kl(routing, self.pooling)  # (E,)
        hits = torch.bincount(topk_idx[token_mask].reshape(-1), minlength=E).to(torch.float32)  # (E,)
        i_b = ib_combine(s_b, kl, self.beta, ib_scale=self.ib_scale, candidates=routed)  # (E,)
        hfed = set(select_experts(i_b, routed, self.budget).tolist())
        noib = set(select_experts(s_b, routed, self.budget).tolist())
        freq = set(select_experts(hits, hits > 0, self.budget).tolist())
        self.sums["decisions"] += 1
        self.sums["differ_hfedmoe_freq"] += float(hfed != freq)
        self.sums["differ_hfedmoe_noib"] += float(hfed != noib)
        self.sums["differ_noib_freq"] += float(noib != freq)
        spread = float(s_b.std()) if E > 1 else 0.0
        self.sums["ib_scale_sum"] += float((s_b - i_b).std()) / spread if spread > 0 else 0.0

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
