"""The local objective beyond the model's own loss: label-skew aware classification losses
(``train.loss``) and the FedProx proximal term (``train.prox_mu``).

- ``logit-adjusted`` (Menon et al. 2021, "Long-tail learning via logit adjustment"; the client's
  prior as in FedLC / FedRS-style calibration): cross-entropy of ``logits + log(prior)`` with
  ``prior_c = (n_c + 1) / (n + C)`` from the client's own label counts ``n_c``. A class the client
  rarely or never sees gets a large negative offset, so its logit is not pushed down locally; the
  global model is evaluated on the raw logits.
- ``balanced``: cross-entropy weighted by ``n / (C * n_c)`` (scikit-learn's "balanced"), mean over
  the batch's weights; absent classes weigh nothing (they have no examples).
- FedProx (Li et al. 2020): ``mu/2 * ||w - w_global||^2`` over the trained parameters, added as its
  gradient ``mu * (w - w_global)`` to every parameter that has a gradient this step (a parameter
  without one, e.g. an unselected expert, is not stepped at all).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def label_counts(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """(C,) float64 counts of each class in ``labels`` (N,)."""
    return torch.as_tensor(np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels), dtype=torch.float64)


def logit_offsets(counts: torch.Tensor) -> torch.Tensor:
    """(C,) log of the Laplace-smoothed prior ``(n_c + 1) / (n + C)``."""
    return torch.log((counts + 1.0) / (counts.sum() + counts.numel())).float()


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """(C,) ``n / (C * n_c)`` for present classes, 0 for absent ones."""
    n, c = counts.sum(), counts.numel()
    w = torch.where(counts > 0, n / (c * counts.clamp(min=1.0)), torch.zeros_like(counts))
    return w.float()


def local_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    """The client's classification loss of one batch: ``logits`` (B, C), ``labels`` (B,)."""
    if kind == "logit-adjusted":
        return F.cross_entropy(logits + logit_offsets(counts).to(logits.device, logits.dtype), labels)
    if kind == "balanced":
        return F.cross_entropy(logits, labels, weight=balanced_weights(counts).to(logits.device, logits.dtype))
    raise ValueError(f"train.loss: expected logit-adjusted | balanced here, got {kind!r}")


@torch.no_grad()
def add_prox_grad(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor], mu: float) -> None:
    """``p.grad += mu * (p - anchor)`` for every ``p`` that has a gradient (FedProx)."""
    for p, a in zip(params, anchors):
        if p.grad is not None:
            p.grad.add_(p.detach() - a, alpha=mu)
