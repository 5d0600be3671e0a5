"""Eqs. 3-5 and 14: hand cases, an independent numpy reference, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hfedmoe.core.importance import compression_kl, ib_scores, score_experts


def np_scores(probs: np.ndarray, mask: np.ndarray, lam: float, beta: float = 0.0) -> np.ndarray:
    """Reference with explicit loops over experts and samples (no vectorised shortcut shared with the code)."""
    rows = [probs[i] for i in range(len(mask)) if mask[i]]
    num_experts = probs.shape[1]
    out = np.zeros(num_experts)
    if not rows:
        return out
    for e in range(num_experts):
        col = [float(r[e]) for r in rows]
        cum = sum(col) / len(col)
        spec = max(col)
        kl = 0.0
        for g in col:
            if g > 0:
                kl += g * math.log(g / cum)
        out[e] = lam * cum + (1 - lam) * spec - beta * max(kl / len(col), 0.0)
    return out


def T(x, dtype=torch.float64):  # noqa: N802
    return torch.tensor(x, dtype=dtype)


def M(x):  # noqa: N802
    return torch.tensor(x, dtype=torch.bool)


# ----------------------------------------------------------------------------- hand cases


def test_score_experts_hand_case():
    probs = T([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    # s_cum = (1.6/3, 1.4/3); s_spec = (0.9, 0.8); lam = 0.25
    expected = [0.25 * 1.6 / 3 + 0.75 * 0.9, 0.25 * 1.4 / 3 + 0.75 * 0.8]
    got = score_experts(probs, M([True, True, True]), 0.25)
    assert got.dtype == torch.float64 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_masked_tokens_count_nowhere_hand_case():
    # The padded token has the largest probability of expert 1: it must change neither sum nor max.
    probs = T([[0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
    got = score_experts(probs, M([True, False, True]), 0.5)
    expected = [0.5 * 1.1 / 2 + 0.5 * 0.9, 0.5 * 0.9 / 2 + 0.5 * 0.8]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_lam_extremes_select_cumulative_and_specific():
    probs = T([[0.7, 0.3], [0.1, 0.9]])
    mask = M([True, True])
    np.testing.assert_allclose(score_experts(probs, mask, 1.0).numpy(), [0.4, 0.6])
    np.testing.assert_allclose(score_experts(probs, mask, 0.0).numpy(), [0.7, 0.9])


def test_ib_kl_hand_case():
    # Expert 0: column (1, 0): p = 1/2, KL = (1/2)(1 * log 2 + 0) = log(2)/2.
    # Expert 1: column (0.5, 0.5): p = 1/2, KL = 0.
    probs = T([[1.0, 0.5], [0.0, 0.5]])
    mask = M([True, True])
    kl = compression_kl(probs, mask)
    np.testing.assert_allclose(kl.numpy(), [math.log(2) / 2, 0.0], atol=1e-12)
    lam, beta = 0.5, 2.0
    s = [0.5 * 0.5 + 0.5 * 1.0, 0.5]
    expected = [s[0] - beta * math.log(2) / 2, s[1]]
    np.testing.assert_allclose(ib_scores(probs, mask, lam, beta).numpy(), expected, rtol=1e-12)


def test_ib_all_zero_column_gives_zero_not_nan():
    probs = T([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    got = ib_scores(probs, M([True, True, False]), 0.3, 5.0)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), [0.0, 1.0], atol=1e-12)


def test_beta_zero_is_the_no_ib_ablation():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(13, 7, generator=gen, dtype=torch.float64), dim=1)
    mask = torch.rand(13, generator=gen) > 0.3
    assert torch.equal(ib_scores(probs, mask, 0.4, 0.0), score_experts(probs, mask, 0.4))


def test_no_real_token_gives_zeros():
    probs = T([[0.2, 0.8], [0.6, 0.4]])
    for fn in (lambda: score_experts(probs, M([False, False]), 0.5), lambda: ib_scores(probs, M([False, False]), 0.5, 1.0)):
        got = fn()
        assert torch.equal(got, torch.zeros(2, dtype=torch.float64))
    empty = torch.zeros(0, 3)
    assert torch.equal(score_experts(empty, torch.zeros(0, dtype=torch.bool), 0.5), torch.zeros(3))


def test_matches_numpy_reference_on_random_batch():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(13, 7)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[:, 5] = 0.0  # an expert the router never gives mass to
    mask = rng.random(13) > 0.3
    got = ib_scores(torch.from_numpy(probs), torch.from_numpy(mask), 0.6, 0.8)
    np.testing.assert_allclose(got.numpy(), np_scores(probs, mask, 0.6, 0.8), rtol=1e-10, atol=1e-12)


def test_inputs_are_not_mutated():
    probs = torch.softmax(torch.randn(5, 3), dim=1)
    mask = M([True, False, True, True, False])
    before = (probs.clone(), mask.clone())
    ib_scores(probs, mask, 0.5, 1.0)
    assert torch.equal(probs, before[0]) and torch.equal(mask, before[1])


# ----------------------------------------------------------------------------- sequence pooling


def test_sequence_pooling_hand_case():
    # seq 7: tokens 0, 1 (token 2 is padding of seq 7); seq 3: token 3; seq 9: only padding -> dropped.
    probs = T([[0.8, 0.2], [0.4, 0.6], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]])
    mask = M([True, True, False, True, False])
    seq_ids = torch.tensor([7, 7, 7, 3, 9])
    # sequence means: seq 3 -> (0.1, 0.9); seq 7 -> (0.6, 0.4)
    means = np.array([[0.1, 0.9], [0.6, 0.4]])
    got = ib_scores(probs, mask, 0.3, 0.7, pooling="sequence", seq_ids=seq_ids)
    np.testing.assert_allclose(got.numpy(), np_scores(means, np.array([True, True]), 0.3, 0.7), rtol=1e-12)
    # differs from token pooling here (so the option really does something)
    assert not torch.allclose(got, ib_scores(probs, mask, 0.3, 0.7))


def test_sequence_pooling_argument_errors():
    probs, mask = T([[0.5, 0.5]]), M([True])
    with pytest.raises(ValueError, match=r"seq_ids: expected None with pooling='token'"):
        score_experts(probs, mask, 0.5, seq_ids=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"seq_ids: expected a \(T,\) integer tensor with pooling='sequence', got None"):
        score_experts(probs, mask, 0.5, pooling="sequence")
    with pytest.raises(ValueError, match=r"seq_ids: expected shape \(T,\) with T=1 matching gate_probs, got \(2,\)"):
        score_experts(probs, mask, 0.5, pooling="sequence", seq_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"seq_ids: expected an integer tensor, got dtype torch.float32"):
        score_experts(probs, mask, 0.5, pooling="sequence", seq_ids=torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"pooling: expected one of 'token', 'sequence', got 'batch'"):
        score_experts(probs, mask, 0.5, pooling="batch")


# ----------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": 1.5}, r"^lam: expected a float in \[0, 1\], got 1\.5$"),
        ({"lam": -0.1}, r"^lam: expected a float in \[0, 1\], got -0\.1$"),
        ({"lam": float("nan")}, r"^lam: expected a finite number in \[0, 1\], got nan$"),
        ({"lam": True}, r"^lam: expected a finite number in \[0, 1\], got True$"),
        ({"beta": -1.0}, r"^beta: expected a float >= 0, got -1\.0$"),
        ({"beta": "1"}, r"^beta: expected a finite number >= 0, got '1'$"),
    ],
)
def test_out_of_range_scalars_raise(kwargs, message):
    args = {"lam": 0.5, "beta": 1.0} | kwargs
    with pytest.raises(ValueError, match=message):
        ib_scores(T([[0.5, 0.5]]), M([True]), args["lam"], args["beta"])


def test_shape_and_dtype_errors_name_argument_expected_and_actual():
    with pytest.raises(ValueError, match=r"^gate_probs: expected shape \(T, E\), got \(2, 3, 4\)$"):
        score_experts(torch.zeros(2, 3, 4), M([True, True]), 0.5)
    with pytest.raises(ValueError, match=r"^token_mask: expected shape \(T,\) with T=3 matching gate_probs, got \(4,\)$"):
        score_experts(torch.zeros(3, 2), M([True] * 4), 0.5)
    with pytest.raises(ValueError, match=r"^token_mask: expected a bool tensor, got dtype torch.int64$"):
        score_experts(torch.zeros(3, 2), torch.ones(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"^gate_probs: expected a floating-point tensor, got dtype torch.int64$"):
        score_experts(torch.zeros(3, 2, dtype=torch.long), M([True] * 3), 0.5)
    with pytest.raises(ValueError, match=r"^gate_probs: expected values in \[0, 1\].*got 1\.5 at index \(1, 0\)$"):
        score_experts(T([[0.5, 0.5], [1.5, 0.0]]), M([True, True]), 0.5)
    with pytest.raises(ValueError, match=r"^gate_probs: expected values in \[0, 1\].*got nan"):
        ib_scores(T([[float("nan"), 0.5]]), M([True]), 0.5, 1.0)


# ----------------------------------------------------------------------------- properties


@st.composite
def batches(draw, dtype=np.float64):
    num_tokens = draw(st.integers(1, 12))
    num_experts = draw(st.integers(1, 6))
    probs = draw(
        hnp.arrays(
            dtype,
            (num_tokens, num_experts),
            elements=st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, width=32)),
        )
    )
    mask = draw(hnp.arrays(np.bool_, (num_tokens,)))
    return probs, mask


@settings(max_examples=50, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 10.0))
def test_property_finite_and_matches_reference(batch, lam, beta):
    probs, mask = batch
    got = ib_scores(torch.from_numpy(probs), torch.from_numpy(mask), lam, beta)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), np_scores(probs, mask, lam, beta), rtol=1e-9, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 10.0), st.integers(0, 5), st.integers(0, 2**31 - 1))
def test_property_padding_changes_nothing(batch, lam, beta, num_pad, seed):
    """Insert padding tokens with arbitrary probabilities at random positions: identical scores."""
    probs, mask = batch
    rng = np.random.default_rng(seed)
    pad = rng.random((num_pad, probs.shape[1]))
    positions = rng.integers(0, len(mask) + 1, size=num_pad)
    padded_probs = np.insert(probs, positions, pad, axis=0)
    padded_mask = np.insert(mask, positions, False)
    base = ib_scores(torch.from_numpy(probs), torch.from_numpy(mask), lam, beta)
    padded = ib_scores(torch.from_numpy(padded_probs), torch.from_numpy(padded_mask), lam, beta)
    assert torch.equal(base, padded)


@settings(max_examples=50, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 10.0))
def test_property_float32_and_float64_agree(batch, lam, beta):
    probs, mask = batch
    p64 = torch.from_numpy(probs)
    m = torch.from_numpy(mask)
    s64 = ib_scores(p64, m, lam, beta)
    s32 = ib_scores(p64.to(torch.float32), m, lam, beta)
    assert s32.dtype == torch.float32 and torch.isfinite(s32).all()
    np.testing.assert_allclose(s32.double().numpy(), s64.numpy(), rtol=1e-5, atol=1e-5 * (1 + beta))



def test_kl_is_never_negative_where_round_off_would_dip_below_zero():
    """A constant column has KL = 0 exactly in real arithmetic; in floating point its mean differs
    from the value in the last bit and the raw sum is often slightly negative. It must come out >= 0."""
    gen = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.float64):
        values = torch.rand(60, generator=gen, dtype=torch.float64)
        for num_tokens in (3, 7, 10, 13, 29):
            probs = values.to(dtype).expand(num_tokens, -1).contiguous()  # (T, 60): column e constant
            kl = compression_kl(probs, torch.ones(num_tokens, dtype=torch.bool))
            assert (kl >= 0).all() and (kl <= 1e-6).all()
