"""Label-skew losses and the FedProx gradient against hand / numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfedmoe.client.objective import add_prox_grad, balanced_weights, label_counts, local_loss, logit_offsets


def np_ce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -logp[np.arange(len(labels)), labels]
    w = np.ones(len(labels)) if weights is None else weights[labels]
    return float((w * nll).sum() / w.sum())


def test_label_counts_keep_absent_classes():
    assert label_counts(np.array([2, 2, 0]), 4).tolist() == [1.0, 0.0, 2.0, 0.0]


def test_logit_adjusted_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 0, 1])
    counts = label_counts(np.array([0] * 8 + [1] * 2), 3)  # class 2 absent on this client
    prior = (np.array([8, 2, 0]) + 1) / (10 + 3)
    expected = np_ce(logits + np.log(prior), labels)
    got = local_loss("logit-adjusted", torch.from_numpy(logits), torch.from_numpy(labels), counts)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert logit_offsets(counts)[2].item() == pytest.approx(np.log(1 / 13), rel=1e-6)


def test_logit_adjustment_stops_pushing_absent_classes_down():
    logits = torch.zeros(4, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0])
    counts = label_counts(np.zeros(100, dtype=np.int64), 3)  # a one-class client
    local_loss("logit-adjusted", logits, labels, counts).backward()
    adjusted = logits.grad[:, 2].abs().sum().item()
    logits.grad = None
    torch.nn.functional.cross_entropy(logits, labels).backward()
    plain = logits.grad[:, 2].abs().sum().item()
    assert adjusted < plain / 20  # prior of the absent class 1/103 vs 1/3


def test_balanced_loss_matches_numpy_weights():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 0, 1, 0])
    counts = label_counts(np.array([0] * 9 + [1] * 3), 3)
    w = np.array([12 / (3 * 9), 12 / (3 * 3), 0.0])
    np.testing.assert_allclose(balanced_weights(counts).numpy(), w, rtol=1e-6)
    got = local_loss("balanced", torch.from_numpy(logits), torch.from_numpy(labels), counts)
    assert got.item() == pytest.approx(np_ce(logits, labels, w), rel=1e-5)


def test_prox_gradient_is_the_gradient_of_the_proximal_term():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    frozen = torch.randn(2, requires_grad=True)  # no gradient this step: must stay without one
    anchor_w, anchor_f = torch.randn(4, 3), torch.randn(2)
    (w**2).sum().backward()
    add_prox_grad([w, frozen], [anchor_w, anchor_f], mu=0.3)
    # autograd of loss + mu/2 ||w - anchor||^2
    w2 = w.detach().clone().requires_grad_(True)
    ((w2**2).sum() + 0.3 / 2 * ((w2 - anchor_w) ** 2).sum()).backward()
    torch.testing.assert_close(w.grad, w2.grad)
    assert frozen.grad is None
