"""Held-out test split and per-client validation split."""

from __future__ import annotations

import numpy as np
import pytest

from hfedmoe.data.splits import client_val_split, train_test_split
from hfedmoe.errors import HFedMoEError


def test_split_covers_disjointly_with_rounded_test_size():
    train_idx, test_idx = train_test_split(103, 0.2, seed=0)
    assert len(test_idx) == 21  # round(20.6)
    assert np.intersect1d(train_idx, test_idx).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(103))
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(test_idx) > 0)


def test_split_is_reproducible_and_seed_dependent():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    a = train_test_split(labels, 0.25, seed=7)
    b = train_test_split(labels, 0.25, seed=7)
    c = train_test_split(labels, 0.25, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_stratified_split_keeps_label_shares():
    labels = np.repeat([0, 1, 2], [50, 30, 20])  # 100 examples, test 25
    _, test_idx = train_test_split(labels, 0.25, seed=1)
    # Exact shares 12.5 / 7.5 / 5.0 -> floors 12 / 7 / 5, one left over; tie between 0 and 1
    # broken by label order.
    assert np.bincount(labels[test_idx]).tolist() == [13, 7, 5]


def test_unstratified_split_ignores_labels():
    labels = np.repeat([0, 1], [90, 10])
    _, test_idx = train_test_split(labels, 0.5, seed=3, stratify=False)
    assert len(test_idx) == 50


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(HFedMoEError, match="test_fraction"):
        train_test_split(10, fraction, seed=0)


def test_split_rejects_empty_test_set():
    with pytest.raises(HFedMoEError, match="test_fraction: 0.01 of 10 examples gives 0"):
        train_test_split(10, 0.01, seed=0)


def test_split_rejects_float_labels():
    with pytest.raises(HFedMoEError, match="n_or_labels"):
        train_test_split(np.array([0.5, 1.0]), 0.5, seed=0)


def test_client_val_split_is_a_subset_partition():
    indices = np.array([40, 3, 17, 99, 5, 61, 8, 23, 77, 12])
    train_idx, val_idx = client_val_split(indices, 0.3, seed=0)
    assert len(val_idx) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.sort(indices))
    again = client_val_split(indices, 0.3, seed=0)
    np.testing.assert_array_equal(again[1], val_idx)


def test_client_val_split_keeps_one_training_example():
    train_idx, val_idx = client_val_split(np.array([4, 9]), 0.9, seed=0)
    assert len(train_idx) == 1 and len(val_idx) == 1


def test_client_val_split_small_fraction_still_gives_one_val_example():
    _, val_idx = client_val_split(np.arange(3), 0.1, seed=0)
    assert len(val_idx) == 1


def test_client_val_split_zero_fraction():
    train_idx, val_idx = client_val_split(np.array([5, 2]), 0.0, seed=0)
    assert train_idx.tolist() == [2, 5] and val_idx.size == 0 and val_idx.dtype == np.int64


@pytest.mark.parametrize(
    ("indices", "fraction", "field"),
    [([], 0.2, "indices"), ([7], 0.2, "indices"), ([1, 2], 1.0, "val_fraction")],
)
def test_client_val_split_errors(indices, fraction, field):
    with pytest.raises(HFedMoEError, match=f"^{field}:"):
        client_val_split(np.array(indices, dtype=np.int64), fraction, seed=0)
