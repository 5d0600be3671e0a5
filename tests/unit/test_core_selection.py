"""Eq. 15: budgeted top-k over routed experts, ties to the lower index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hfedmoe.core.selection import routed_experts, select_experts


def np_select(scores: np.ndarray, routed: np.ndarray, budget: int) -> list[int]:
    """Reference: rank routed experts by (score descending, index ascending) with Python's sort."""
    candidates = [e for e in range(len(scores)) if routed[e]]
    ranked = sorted(candidates, key=lambda e: (-float(scores[e]), e))
    return sorted(ranked[:budget])


def M(x):  # noqa: N802
    return torch.tensor(x, dtype=torch.bool)


def test_hand_case_with_tie_to_lower_index():
    scores = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.3])
    got = select_experts(scores, M([True] * 5), 2)
    assert got.dtype == torch.long
    assert got.tolist() == [1, 3]  # 0.9 (3), then the 0.5 tie goes to index 1, not 2


def test_unrouted_experts_are_never_selected():
    scores = torch.tensor([0.1, 0.5, 0.4, 0.9, 0.3])
    assert select_experts(scores, M([True, False, True, False, True]), 2).tolist() == [2, 4]


def test_result_is_sorted_even_when_ranking_is_not():
    scores = torch.tensor([0.2, 0.1, 0.9, 0.8])
    assert select_experts(scores, M([True] * 4), 3).tolist() == [0, 2, 3]


def test_budget_zero_and_nothing_routed_give_empty_long():
    scores = torch.tensor([0.3, 0.7])
    for routed, budget in ((M([True, True]), 0), (M([False, False]), 2)):
        got = select_experts(scores, routed, budget)
        assert got.dtype == torch.long and got.shape == (0,)


def test_non_finite_scores_of_unrouted_experts_are_ignored_but_routed_ones_raise():
    scores = torch.tensor([float("nan"), 0.2, float("-inf")])
    assert select_experts(scores, M([False, True, False]), 3).tolist() == [1]
    with pytest.raises(ValueError, match=r"^scores: expected finite values for routed experts, got nan at index 0$"):
        select_experts(scores, M([True, True, False]), 1)


def test_negative_scores_rank_normally():
    # IB scores can be negative (s_b - beta * KL).
    scores = torch.tensor([-0.5, -0.1, -2.0])
    assert select_experts(scores, M([True] * 3), 1).tolist() == [1]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (-1, r"^budget: expected an integer >= 0, got -1$"),
        (1.5, r"^budget: expected an integer >= 0, got 1\.5$"),
        (True, r"^budget: expected an integer >= 0, got True$"),
    ],
)
def test_bad_budget_raises(budget, message):
    with pytest.raises(ValueError, match=message):
        select_experts(torch.tensor([0.1, 0.2]), M([True, True]), budget)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"^routed_mask: expected shape \(E,\) with E=2 matching scores, got \(3,\)$"):
        select_experts(torch.tensor([0.1, 0.2]), M([True] * 3), 1)
    with pytest.raises(ValueError, match=r"^routed_mask: expected a bool tensor, got dtype torch.int64$"):
        select_experts(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]), 1)
    with pytest.raises(ValueError, match=r"^scores: expected shape \(E,\), got \(1, 2\)$"):
        select_experts(torch.tensor([[0.1, 0.2]]), M([True, True]), 1)


def test_routed_experts_hand_case_ignores_padding():
    topk_idx = torch.tensor([[0, 3], [3, 1], [4, 2]])  # token 2 is padding
    got = routed_experts(topk_idx, M([True, True, False]), 6)
    assert got.tolist() == [True, True, False, True, False, False]


def test_routed_experts_errors():
    with pytest.raises(ValueError, match=r"^topk_idx: expected indices in \[0, 3\], got values in \[0, 4\]$"):
        routed_experts(torch.tensor([[0, 4]]), M([True]), 4)
    with pytest.raises(ValueError, match=r"^token_mask: expected shape \(T,\) with T=1 matching topk_idx, got \(2,\)$"):
        routed_experts(torch.tensor([[0, 1]]), M([True, True]), 4)
    with pytest.raises(ValueError, match=r"^num_experts: expected an integer >= 1, got 0$"):
        routed_experts(torch.tensor([[0, 1]]), M([True]), 0)


# ----------------------------------------------------------------------------- properties

score_vectors = st.integers(1, 10).flatmap(
    lambda e: st.tuples(
        # few distinct values so ties are common
        hnp.arrays(np.float64, (e,), elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 0.5, 1.0, 3.0])),
        hnp.arrays(np.bool_, (e,)),
    )
)


@settings(max_examples=50, deadline=None)
@given(score_vectors, st.integers(0, 12))
def test_property_matches_reference(case, budget):
    scores, routed = case
    got = select_experts(torch.from_numpy(scores), torch.from_numpy(routed), budget)
    assert got.tolist() == np_select(scores, routed, budget)


@settings(max_examples=50, deadline=None)
@given(score_vectors, st.integers(0, 5))
def test_property_budget_at_least_routed_selects_all_routed(case, extra):
    scores, routed = case
    budget = int(routed.sum()) + extra
    got = select_experts(torch.from_numpy(scores), torch.from_numpy(routed), budget)
    assert got.tolist() == np.flatnonzero(routed).tolist()


@settings(max_examples=50, deadline=None)
@given(score_vectors, st.integers(0, 12))
def test_property_selected_scores_dominate_unselected(case, budget):
    scores, routed = case
    got = select_experts(torch.from_numpy(scores), torch.from_numpy(routed), budget).tolist()
    assert len(got) == min(budget, int(routed.sum()))
    rest = [e for e in np.flatnonzero(routed) if e not in got]
    for chosen in got:
        for other in rest:
            assert scores[chosen] > scores[other] or (scores[chosen] == scores[other] and chosen < other)
