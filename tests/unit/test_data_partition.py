"""Partition invariants: disjoint cover, reproducibility, skew, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from hfedmoe.data.partition import SCHEMES, partition
from hfedmoe.data.stats import label_entropy, label_histogram
from hfedmoe.errors import HFedMoEError

RNG = np.random.default_rng(1234)
LABELS = RNG.integers(0, 5, size=997)  # odd size on purpose
GROUPS = np.array(["nyt", "movies", "tweets"])[RNG.integers(0, 3, size=997)]

CASES = [
    ("iid", 7, {}),
    ("dirichlet", 7, {"alpha": 0.3}),
    ("shards", 7, {"shards_per_client": 3}),
    ("natural", None, {"groups": GROUPS}),
    ("natural-dirichlet", None, {"groups": GROUPS, "clients_per_group": 3}),
]


def _assert_disjoint_cover(parts, num_examples):
    joined = np.concatenate(parts)
    assert len(joined) == num_examples
    np.testing.assert_array_equal(np.sort(joined), np.arange(num_examples))
    for part in parts:
        assert part.dtype == np.int64 and len(part) > 0
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates


@pytest.mark.parametrize(("scheme", "num_clients", "options"), CASES)
def test_disjoint_cover_and_reproducible(scheme, num_clients, options):
    parts = partition(LABELS, num_clients, scheme, seed=0, **options)
    _assert_disjoint_cover(parts, len(LABELS))
    again = partition(LABELS, num_clients, scheme, seed=0, **options)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize(("scheme", "num_clients", "options"), [c for c in CASES if c[0] != "natural"])
def test_other_seed_gives_other_partition(scheme, num_clients, options):
    a = partition(LABELS, num_clients, scheme, seed=0, **options)
    b = partition(LABELS, num_clients, scheme, seed=1, **options)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_schemes_listed():
    assert set(SCHEMES) == {"iid", "dirichlet", "shards", "natural", "natural-dirichlet"}


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition(LABELS, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 997


def test_small_alpha_is_more_skewed_than_large_alpha():
    def mean_entropy(alpha: float) -> float:
        values = []
        for seed in range(5):
            parts = partition(LABELS, 10, "dirichlet", seed=seed, alpha=alpha)
            values.append(label_entropy(label_histogram(LABELS, parts, 5)).mean())
        return float(np.mean(values))

    low, high = mean_entropy(0.1), mean_entropy(100.0)
    assert low < high - 0.3
    assert high > np.log(5) - 0.05  # near uniform


def test_dirichlet_respects_min_size():
    parts = partition(LABELS, 20, "dirichlet", seed=0, alpha=0.3, min_size=10)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_gives_up_with_clear_error():
    labels = np.zeros(20, dtype=np.int64)
    with pytest.raises(HFedMoEError, match="alpha: .*min_size 4"):
        partition(labels, 5, "dirichlet", seed=0, alpha=0.001, min_size=4)


def test_shards_limit_labels_per_client():
    labels = np.repeat(np.arange(10), 60)  # 600 examples, shards of 30: one label per shard
    parts = partition(labels, 10, "shards", seed=0, shards_per_client=2)
    hist = label_histogram(labels, parts, 10)
    assert np.all((hist > 0).sum(axis=1) <= 2)
    assert all(len(p) == 60 for p in parts)


def test_natural_one_client_per_sorted_group():
    parts = partition(LABELS, None, "natural", seed=0, groups=GROUPS)
    assert len(parts) == 3
    for part, name in zip(parts, ["movies", "nyt", "tweets"]):
        np.testing.assert_array_equal(part, np.flatnonzero(GROUPS == name))
    same = partition(LABELS, 3, "natural", seed=0, groups=GROUPS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))


def test_natural_dirichlet_splits_within_groups():
    parts = partition(LABELS, 6, "natural-dirichlet", seed=0, groups=GROUPS, clients_per_group=2)
    assert len(parts) == 6
    for client, part in enumerate(parts):
        expected_group = ["movies", "nyt", "tweets"][client // 2]
        assert set(GROUPS[part].tolist()) == {expected_group}


def test_label_histogram_counts_by_hand():
    labels = np.array([0, 2, 2, 1, 0, 2])
    hist = label_histogram(labels, [np.array([0, 1, 2]), np.array([3, 4, 5])], 4)
    assert hist.tolist() == [[1, 0, 2, 0], [1, 1, 1, 0]]
    entropy = label_entropy(hist)
    assert entropy[1] == pytest.approx(np.log(3))
    assert entropy[0] == pytest.approx(-(1 / 3) * np.log(1 / 3) - (2 / 3) * np.log(2 / 3))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_clients": 3, "scheme": "powerlaw"}, r"^scheme: expected one of iid, dirichlet"),
        ({"num_clients": 3, "scheme": "dirichlet", "alpha": 0.0}, r"^alpha: .*> 0, got 0.0"),
        ({"num_clients": 3, "scheme": "dirichlet", "alpha": -1.0}, r"^alpha:"),
        ({"num_clients": 12, "scheme": "iid"}, r"^num_clients: .*at most .* 10, got 12"),
        ({"num_clients": 6, "scheme": "dirichlet", "min_size": 2}, r"^num_clients: .*needs at least 12"),
        ({"num_clients": 0, "scheme": "iid"}, r"^num_clients: expected an integer >= 1, got 0"),
        ({"num_clients": None, "scheme": "shards"}, r"^num_clients:"),
        ({"num_clients": 3, "scheme": "shards", "shards_per_client": 4}, r"^shards_per_client: .*12 shards"),
        ({"num_clients": None, "scheme": "natural"}, r"^groups: .*got None"),
        (
            {"num_clients": 4, "scheme": "natural", "groups": np.array(list("aabbbaabba"))},
            r"^num_clients: .*2 groups x 1 clients_per_group = 2 clients, got 4",
        ),
        (
            {"num_clients": None, "scheme": "natural-dirichlet", "clients_per_group": 5,
             "groups": np.array(list("aaaaaaabbb"))},
            r"^num_clients: group 'b': 5 clients",
        ),
    ],
)
def test_errors_name_the_field(kwargs, pattern):
    labels = np.array([0, 1, 0, 1, 2, 2, 0, 1, 0, 1])
    kwargs = dict(kwargs)
    num_clients = kwargs.pop("num_clients")
    scheme = kwargs.pop("scheme")
    with pytest.raises(HFedMoEError, match=pattern):
        partition(labels, num_clients, scheme, seed=0, **kwargs)


def test_labels_must_be_integers():
    with pytest.raises(HFedMoEError, match="^labels:"):
        partition(np.array([0.0, 1.0]), 2, "iid", seed=0)
