"""Server-side mechanism diagnostics, computed from per-update quantities (usage, trained,
num_examples) plus the router weights alpha, so a streaming aggregation can accumulate them.

* ``tau_excluded_frac``: of the (client, layer, expert) triples a client trained, the fraction
  Eq. 17 leaves out because the client's usage of that expert is below tau. 0 means the tau gate
  never fires and sparse aggregation equals FedAvg over trainers (issue 8).
* alpha vs data shares: ``alpha`` (C,) (Eqs. 18-21, mean over layers, normalised to sum 1) against
  the clients' data shares ``n_c / sum n``: ``alpha_std``, ``alpha_uniform_dev`` = max |alpha - 1/C|
  and ``alpha_share_l1`` = sum |alpha - share|. alpha near uniform while shares are skewed means
  the router weighting does nothing that FedAvg-by-count would not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hfedmoe.methods.aggregation import Part

# A mechanism is reported "inactive" below these (documented in the run report).
INACTIVE_SELECTION = 0.01  # IB changes < 1% of (batch, layer) decisions
INACTIVE_TAU = 0.01  # tau excludes < 1% of trained (client, expert) pairs
INACTIVE_ALPHA = 0.01  # max |alpha - 1/C| < 0.01: alpha is uniform


class TauExclusion:
    """Streaming count of trained (client, layer, expert) triples and those below tau."""

    def __init__(self, tau: float) -> None:
        self.tau = float(tau)
        self.trained = 0
        self.excluded = 0

    def add(self, usage: torch.Tensor, trained: torch.Tensor) -> None:
        """One client's ``usage (L, E)`` and ``trained (L, E)`` bool."""
        self.trained += int(trained.sum())
        self.excluded += int((trained & (usage < self.tau)).sum())

    def metrics(self) -> dict[str, float]:
        frac = self.excluded / self.trained if self.trained else 0.0
        return {"tau_excluded_frac": frac, "tau_trained_pairs": float(self.trained)}


class TauExclusionPart(Part):
    """:class:`TauExclusion` as a streaming aggregation part (it changes no weights)."""

    def __init__(self, tau: float) -> None:
        self.acc = TauExclusion(tau)

    def add(self, update) -> None:
        self.acc.add(update.usage, update.trained)

    def finish(self, mm) -> dict[str, float]:
        del mm
        return self.acc.metrics()


def tau_exclusion(updates: Sequence, tau: float) -> dict[str, float]:
    acc = TauExclusion(tau)
    for u in updates:
        acc.add(u.usage, u.trained)
    return acc.metrics()


def alpha_vs_shares(alpha: torch.Tensor, num_examples: torch.Tensor, client_ids: Sequence[int]) -> dict:
    """``alpha (C,)`` (any scale, normalised here) against data shares from ``num_examples (C,)``."""
    alpha = alpha.double()
    n = num_examples.double()
    C = alpha.numel()
    if C == 0 or float(alpha.sum()) <= 0:
        return {"alpha_active_clients": 0.0}
    a = alpha / alpha.sum()
    share = n / n.sum() if float(n.sum()) > 0 else torch.full_like(n, 1.0 / C)
    return {
        "alpha": {str(c): round(float(x), 5) for c, x in zip(client_ids, a)},
        "data_share": {str(c): round(float(x), 5) for c, x in zip(client_ids, share)},
        "alpha_std": float(a.std()) if C > 1 else 0.0,
        "alpha_uniform_dev": float((a - 1.0 / C).abs().max()),
        "alpha_share_l1": float((a - share).abs().sum()),
        "data_share_std": float(share.std()) if C > 1 else 0.0,
        "alpha_active_clients": float((alpha > 0).sum()),
    }
