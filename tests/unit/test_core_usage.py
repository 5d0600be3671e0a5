"""Eq. 16: usage per batch, and a client's token-weighted usage over its batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hfedmoe.core.usage import UsageAccumulator, combine_usage, expert_usage


def M(x):  # noqa: N802
    return torch.tensor(x, dtype=torch.bool)


def test_expert_usage_hand_case_ignores_padding():
    probs = torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.3, 0.7]], dtype=torch.float64)
    got = expert_usage(probs, M([True, False, True]))
    np.testing.assert_allclose(got.numpy(), [0.6, 0.4], rtol=1e-12)


def test_no_real_token_gives_zeros():
    got = expert_usage(torch.tensor([[0.5, 0.5]]), M([False]))
    assert torch.equal(got, torch.zeros(2))


def test_combine_usage_hand_case():
    usages = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    # 1 token vs 3 tokens: (0.2 + 3 * 0.6) / 4 = 0.5, (0.8 + 3 * 0.4) / 4 = 0.5
    np.testing.assert_allclose(combine_usage(usages, [1, 3]).numpy(), [0.5, 0.5], rtol=1e-12)
    assert torch.equal(combine_usage(usages, [0, 0]), torch.zeros(2, dtype=torch.float64))


def test_accumulator_hand_case():
    acc = UsageAccumulator(num_experts=2)
    assert torch.equal(acc.usage(), torch.zeros(2, dtype=torch.float64))
    acc.update(torch.tensor([[0.2, 0.8]]), M([True]))
    acc.update(torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [1.0, 0.0]]), M([True, True, True, False]))
    assert acc.num_tokens == 4
    np.testing.assert_allclose(acc.usage().numpy(), [0.5, 0.5], rtol=1e-6)


def test_errors_name_argument_expected_and_actual():
    with pytest.raises(ValueError, match=r"^token_mask: expected shape \(T,\) with T=2 matching gate_probs, got \(3,\)$"):
        expert_usage(torch.zeros(2, 4), M([True] * 3))
    with pytest.raises(ValueError, match=r"^token_counts: expected shape \(N,\) with N=2 matching usages, got \(3,\)$"):
        combine_usage(torch.zeros(2, 4), [1, 2, 3])
    with pytest.raises(ValueError, match=r"^token_counts: expected values >= 0, got -1\.0 at index 1$"):
        combine_usage(torch.zeros(2, 4), [1, -1])
    with pytest.raises(ValueError, match=r"^gate_probs: expected shape \(T, E\) with E=3 matching the accumulator, got \(1, 4\)$"):
        UsageAccumulator(3).update(torch.zeros(1, 4), M([True]))
    with pytest.raises(ValueError, match=r"^gate_probs: expected values in \[0, 1\]"):
        expert_usage(torch.tensor([[-0.1, 1.1]]), M([True]))


@st.composite
def client_data(draw):
    num_experts = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(0, 9), min_size=1, max_size=5))
    seed = draw(st.integers(0, 2**31 - 1))
    return num_experts, sizes, seed


@settings(max_examples=50, deadline=None)
@given(client_data())
def test_property_batches_combine_to_usage_over_all_tokens(data):
    """Splitting a client's tokens into padded batches changes nothing (Eq. 16 over D_c)."""
    num_experts, sizes, seed = data
    rng = np.random.default_rng(seed)
    probs_list, mask_list = [], []
    for size in sizes:
        logits = rng.normal(size=(size + 2, num_experts))
        probs_list.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
        mask = np.zeros(size + 2, dtype=bool)
        mask[rng.permutation(size + 2)[:size]] = True  # 2 padding tokens per batch, anywhere
        mask_list.append(mask)
    all_real = np.concatenate([p[m] for p, m in zip(probs_list, mask_list)])
    expected = all_real.mean(axis=0) if len(all_real) else np.zeros(num_experts)

    per_batch = torch.stack([expert_usage(torch.from_numpy(p), torch.from_numpy(m)) for p, m in zip(probs_list, mask_list)])
    combined = combine_usage(per_batch, [int(m.sum()) for m in mask_list])
    np.testing.assert_allclose(combined.numpy(), expected, rtol=1e-12, atol=1e-15)

    acc = UsageAccumulator(num_experts)
    for p, m in zip(probs_list, mask_list):
        acc.update(torch.from_numpy(p), torch.from_numpy(m))
    np.testing.assert_allclose(acc.usage().numpy(), expected, rtol=1e-12, atol=1e-15)
