"""The training path's read-free kernels (core/importance.py) against numpy: token and sequence
pooling with padding and an all-padding sequence, and the normalised IB factor."""

import numpy as np
import pytest
import torch

from hfedmoe.core.importance import (
    ib_combine,
    masked_ib_factor,
    masked_token_kl,
    masked_token_scores,
)

LAM = 0.3


def _numpy_eqs(samples: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Eqs. 3-5 and 14's KL over samples (B, E), written out independently."""
    s_b = lam * samples.mean(0) + (1 - lam) * samples.max(0)
    p = samples.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(samples > 0, samples * np.log(samples / p), 0.0)
    return s_b, np.maximum(terms.mean(0), 0.0)


def _routing(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, S, E = 4, 5, 6
    probs = torch.softmax(torch.randn(B * S, E, generator=g, dtype=torch.float64), -1)  # (T, E)
    mask = torch.rand(B, S, generator=g) > 0.3  # (B, S)
    mask[2] = False  # a sequence without a real token is no sample
    mask[0, 0] = True
    return probs, mask, S


@pytest.mark.parametrize("pooling", ["token", "sequence"])
def test_masked_scores_and_kl_match_numpy(pooling):
    probs, mask, S = _routing()
    p, m = probs.numpy(), mask.reshape(-1).numpy()
    if pooling == "token":
        samples, seq_len = p[m], None
    else:
        rows = [p[i * S:(i + 1) * S][mask[i].numpy()] for i in range(mask.shape[0])]
        samples, seq_len = np.stack([r.mean(0) for r in rows if len(r)]), S
        assert samples.shape[0] == 3  # the all-padding sequence is left out
    want_s, want_kl = _numpy_eqs(samples, LAM)
    np.testing.assert_allclose(masked_token_scores(probs, mask.reshape(-1), LAM, seq_len).numpy(), want_s, rtol=1e-12)
    np.testing.assert_allclose(masked_token_kl(probs, mask.reshape(-1), seq_len).numpy(), want_kl, rtol=1e-10,
                               atol=1e-15)


def test_masked_kernels_of_an_all_padding_batch_are_zero():
    probs, _, S = _routing()
    none = torch.zeros(probs.shape[0], dtype=torch.bool)
    for seq_len in (None, S):
        assert torch.equal(masked_token_scores(probs, none, LAM, seq_len), torch.zeros(probs.shape[1], dtype=probs.dtype))
        assert torch.equal(masked_token_kl(probs, none, seq_len), torch.zeros(probs.shape[1], dtype=probs.dtype))


def test_normalised_ib_factor_is_the_std_ratio_over_the_candidates():
    s_b = torch.tensor([0.5, 0.1, 0.3, 0.9])
    kl = torch.tensor([0.02, 0.04, 0.01, 7.0])
    cand = torch.tensor([True, True, True, False])  # the last expert is not routed: not in C
    want = np.std([0.5, 0.1, 0.3]) / np.std([0.02, 0.04, 0.01])  # population std
    assert float(masked_ib_factor(s_b, kl, cand)) == pytest.approx(want, rel=1e-6)
    got = ib_combine(s_b, kl, 0.5, ib_scale="normalised", candidates=cand)
    np.testing.assert_allclose(got.numpy(), (s_b - 0.5 * want * kl).numpy(), rtol=1e-6)
    # fewer than two candidates, or KL constant over C: no scale could change a ranking in C
    assert float(masked_ib_factor(s_b, kl, torch.tensor([True, False, False, False]))) == 0.0
    assert float(masked_ib_factor(s_b, torch.tensor([0.2, 0.2, 0.2, 1.0]), cand)) == 0.0
